"""The resource-server verifier over real HTTP: every rule refuses, and a correct request still works.

A protected Starlette app (``TetherMiddleware`` + ``Verifier``) runs under uvicorn on
loopback and trusts the test STS. Each negative test ends with a positive control on
the same fixture (same service, same token where possible), so a refusal cannot pass
because the token or the service silently died (OIDF conformance-suite practice).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey
from rskit import OWN_KID, Env, X, Y, actor_exchange, call, claims_of, header_of, hop_token, serve, session_token
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from helpers import AGENT, SVC_B, SVC_C, free_port
from tether.agent.proof import DPoPKey
from tether.resource import ResourceSettings, Verifier
from tether.resource.replay import MemoryReplayCache
from tether.rules.dpop import DEFAULT_DPOP_ALGS, compute_ath
from tether.rules.jws import sign_compact
from tether.web.server import ServerThread

ALGS = " ".join(DEFAULT_DPOP_ALGS)


# -- helpers ---------------------------------------------------------------------------------
def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(value: object) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def challenge(response: Any) -> str:
    return str(response.headers.get("www-authenticate", ""))


def assert_refused(response: Any, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == error, response.text
    header = challenge(response)
    assert header.startswith("DPoP "), header
    assert f'error="{error}"' in header, header
    assert f'algs="{ALGS}"' in header, header


def ok(env: Env, url: str, token: str, key: DPoPKey, method: str = "GET") -> dict[str, Any]:
    response = call(env.http, method, url, token, key)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def fresh_hop(
    env: Env, audience: str | None = None, *, scope: str | None = None, **task_fields: Any
) -> tuple[str, DPoPKey, dict[str, Any]]:
    task = env.task(**task_fields)
    token, key = hop_token(env.sts, task["id"], audience or env.a.url, scope=scope)
    return token, key, task


def own_token(env: Env, jkt: str, *, header: dict[str, Any] | None = None, drop: tuple[str, ...] = (), **claims: Any) -> str:
    """An access token signed by the key the ``o`` service trusts, with exactly these claims."""
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": env.sts.url,
        "sub": AGENT,
        "aud": env.o.url,
        "exp": now + 120,
        "iat": now,
        "nbf": now,
        "jti": secrets.token_urlsafe(16),
        "client_id": AGENT,
        "scope": "wiki:read",
        "cnf": {"jkt": jkt},
        "agt": AGENT,
        "txn": "tsk_" + secrets.token_urlsafe(8),
    }
    body.update(claims)
    for name in drop:
        body.pop(name, None)
    hdr = {"typ": "at+jwt", "alg": "ES256", "kid": OWN_KID, **(header or {})}
    hdr = {k: v for k, v in hdr.items() if v is not None}
    return sign_compact(hdr, body, env.own_key, "ES256")


# -- RFC 6750 §3.1 / DPOP-15 / MCP-05: the authorization header ------------------------------------
def test_RFC6750_no_credentials_gets_bare_dpop_challenge(env: Env) -> None:
    token, key, _ = fresh_hop(env)
    response = env.http.get(env.a.url + "/whoami")
    assert response.status_code == 401
    header = challenge(response)
    assert header.startswith("DPoP "), header
    assert "error=" not in header, "RFC 6750 §3.1: no error code when the request carried no credentials"
    assert f'algs="{ALGS}"' in header
    # RFC 9449 §7.2: a resource that also takes certificate-bound tokens as Bearer names both schemes
    assert header == f'DPoP algs="{ALGS}", Bearer', header
    ok(env, env.a.url + "/whoami", token, key)


def test_MCP_05_token_in_query_string_is_not_accepted(env: Env) -> None:
    token, key, _ = fresh_hop(env)
    url = env.a.url + "/whoami"
    response = env.http.get(url, params={"access_token": token}, headers={"DPoP": key.proof("GET", url, access_token=token)})
    assert response.status_code == 401
    assert "error=" not in challenge(response)
    ok(env, url, token, key)


def assert_bearer_refused(response: Any) -> None:
    """RFC 6750 §3: a Bearer-scheme request is refused with the Bearer challenge (this resource
    takes certificate-bound tokens as Bearer, RFC 8705 §3), the DPoP one named after it (RFC 9449 §7.2)."""
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_token", response.text
    header = challenge(response)
    assert header.startswith('Bearer error="invalid_token"'), header
    assert header.endswith(f', DPoP algs="{ALGS}"'), header


def test_DPOP_15_bound_token_presented_as_bearer_refused(env: Env) -> None:
    token, key, _ = fresh_hop(env)
    url = env.a.url + "/whoami"
    assert_bearer_refused(call(env.http, "GET", url, token, None, scheme="Bearer"))
    assert_bearer_refused(call(env.http, "GET", url, token, key, scheme="Bearer"))
    ok(env, url, token, key)
    # The scheme name is case-insensitive (RFC 9110 §11.1; FAPI "RSDpopAuthSchemeCaseInsensitivity").
    assert call(env.http, "GET", url, token, key, scheme="dpop").status_code == 200


def test_public_path_needs_no_token(env: Env) -> None:
    response = env.http.get(env.a.url + "/public")
    assert response.status_code == 200
    assert response.json() == {"public": True, "principal": False}
    assert env.http.get(env.a.url + "/whoami").status_code == 401


# -- BCP-07 / MCP-02: audience ---------------------------------------------------------------------
def test_BCP_07_MCP_02_token_for_other_audience_refused(env: Env) -> None:
    task = env.task()
    session, client = session_token(env.sts, task["id"])
    key = client.key
    for_b = client.hop(session, env.b.url).json()["access_token"]
    for_a = client.hop(session, env.a.url).json()["access_token"]
    assert_refused(call(env.http, "GET", env.a.url + "/whoami", for_b, key), 401, "invalid_token")
    # The session token's audience is the STS itself: no service accepts it either.
    assert_refused(call(env.http, "GET", env.a.url + "/whoami", session, key), 401, "invalid_token")
    assert_refused(call(env.http, "GET", env.b.url + "/whoami", for_a, key), 401, "invalid_token")
    assert ok(env, env.a.url + "/whoami", for_a, key)["audience"] == env.a.url
    assert ok(env, env.b.url + "/whoami", for_b, key)["audience"] == env.b.url


# -- AUX-01 / A-01 / A-02: signature, key, algorithm, type ----------------------------------------------
def test_AUX_01_token_signed_by_foreign_key_under_sts_kid_refused(env: Env) -> None:
    token, key, _ = fresh_hop(env)
    forged = sign_compact(header_of(token), claims_of(token), env.own_key, "ES256")
    assert header_of(forged)["kid"] == header_of(token)["kid"]
    assert_refused(call(env.http, "GET", env.a.url + "/whoami", forged, key), 401, "invalid_token")
    ok(env, env.a.url + "/whoami", token, key)


def test_AUX_01_token_with_unknown_kid_refused(env: Env) -> None:
    token, key, _ = fresh_hop(env)
    forged = sign_compact({**header_of(token), "kid": "no-such-kid"}, claims_of(token), env.own_key, "ES256")
    assert_refused(call(env.http, "GET", env.a.url + "/whoami", forged, key), 401, "invalid_token")
    no_kid = sign_compact({"typ": "at+jwt", "alg": "ES256"}, claims_of(token), env.own_key, "ES256")
    assert_refused(call(env.http, "GET", env.a.url + "/whoami", no_kid, key), 401, "invalid_token")
    ok(env, env.a.url + "/whoami", token, key)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_A_01_alg_none_refused(env: Env, alg: str) -> None:
    token, key, _ = fresh_hop(env)
    _, payload, signature = token.split(".")
    head = b64json({**header_of(token), "alg": alg})
    for forged in (f"{head}.{payload}.", f"{head}.{payload}.{signature}"):
        assert_refused(call(env.http, "GET", env.a.url + "/whoami", forged, key), 401, "invalid_token")
    ok(env, env.a.url + "/whoami", token, key)


def test_A_02_hs256_keyed_with_the_issuer_public_key_refused(env: Env) -> None:
    token, key, _ = fresh_hop(env)
    jwks = env.http.get(env.sts.url + "/jwks").json()
    public = next(k for k in jwks["keys"] if k["kid"] == header_of(token)["kid"])
    head = b64json({**header_of(token), "alg": "HS256"})
    payload = token.split(".")[1]
    for secret in (json.dumps(public).encode(), json.dumps(public, separators=(",", ":")).encode()):
        mac = hmac.new(secret, f"{head}.{payload}".encode(), hashlib.sha256).digest()
        forged = f"{head}.{payload}.{b64(mac)}"
        assert_refused(call(env.http, "GET", env.a.url + "/whoami", forged, key), 401, "invalid_token")
    ok(env, env.a.url + "/whoami", token, key)


def test_AUX_01_tampered_payload_refused(env: Env) -> None:
    token, key, _ = fresh_hop(env, scope="wiki:read")
    head, _, signature = token.split(".")
    claims = claims_of(token)
    assert claims["scope"] == "wiki:read"
    widened = b64json({**claims, "scope": "wiki:read wiki:admin"})
    forged = f"{head}.{widened}.{signature}"
    assert_refused(call(env.http, "GET", env.a.url + "/whoami", forged, key), 401, "invalid_token")
    assert ok(env, env.a.url + "/whoami", token, key)["scopes"] == ["wiki:read"]


@pytest.mark.parametrize("typ", ["JWT", "jwt", "dpop+jwt", "application/jwt", None])
def test_AUX_01_typ_other_than_at_jwt_refused(env: Env, typ: str | None) -> None:
    key = DPoPKey()
    wrong = own_token(env, key.jkt, header={"typ": typ})
    assert_refused(call(env.http, "GET", env.o.url + "/whoami", wrong, key), 401, "invalid_token")
    ok(env, env.o.url + "/whoami", own_token(env, key.jkt), key)
    ok(env, env.o.url + "/whoami", own_token(env, key.jkt, header={"typ": "application/at+jwt"}), key)


@pytest.mark.parametrize("variant", ["slash", "suffix", "prefix", "truncated", "upper", "list"])
def test_AUX_01_issuer_must_match_exactly(env: Env, variant: str) -> None:
    """Exact ``iss`` equality, never containment (PyJWT CVE-2024-53861)."""
    key = DPoPKey()
    iss = env.sts.url
    wrong_iss: Any = {
        "slash": iss + "/",
        "suffix": iss + "0",
        "prefix": "x" + iss,
        "truncated": iss[:-1],
        "upper": iss.upper(),
        "list": [iss],
    }[variant]
    wrong = own_token(env, key.jkt, iss=wrong_iss)
    assert_refused(call(env.http, "GET", env.o.url + "/whoami", wrong, key), 401, "invalid_token")
    ok(env, env.o.url + "/whoami", own_token(env, key.jkt), key)


def test_ASVS_9_1_3_keys_come_only_from_the_configured_source(env: Env) -> None:
    """With ``keys=`` the ``o`` service trusts the test key only: not the STS's, not a lookalike."""
    key = DPoPKey()
    sts_token, sts_key, _ = fresh_hop(env, audience=env.o.url)
    assert claims_of(sts_token)["aud"] == env.o.url
    assert_refused(call(env.http, "GET", env.o.url + "/whoami", sts_token, sts_key), 401, "invalid_token")
    impostor = ECKey.generate_key("P-256", parameters={"kid": OWN_KID}, private=True)
    claims = claims_of(own_token(env, key.jkt))
    lookalike = sign_compact({"typ": "at+jwt", "alg": "ES256", "kid": OWN_KID}, claims, impostor, "ES256")
    assert_refused(call(env.http, "GET", env.o.url + "/whoami", lookalike, key), 401, "invalid_token")
    ok(env, env.o.url + "/whoami", own_token(env, key.jkt), key)


# -- C-01 / C-02 / C-03: time ---------------------------------------------------------------------
def test_C_01_expired_token_refused_by_moving_the_service_clock(env: Env) -> None:
    token, key, _ = fresh_hop(env)
    exp = claims_of(token)["exp"]
    shift = exp + 10 + 1 - time.time()
    env.clock.advance(shift)
    try:
        assert_refused(call(env.http, "GET", env.a.url + "/whoami", token, key), 401, "invalid_token")
    finally:
        env.clock.advance(-shift)
    ok(env, env.a.url + "/whoami", token, key)


def test_C_02_token_from_the_future_refused_by_moving_the_service_clock(env: Env) -> None:
    token, key, _ = fresh_hop(env)
    env.clock.advance(-61)
    try:
        assert_refused(call(env.http, "GET", env.a.url + "/whoami", token, key), 401, "invalid_token")
    finally:
        env.clock.advance(61)
    ok(env, env.a.url + "/whoami", token, key)


@pytest.mark.parametrize(
    "exp",
    [None, "missing", -1, True, "9999999999", -(10 + 1), -(10 + 30)],
    ids=["null", "missing", "negative", "bool", "string", "now-skew-1", "now-skew-30"],
)
def test_C_01_exp_missing_malformed_or_past_refused(env: Env, exp: Any) -> None:
    key = DPoPKey()
    now = int(time.time())
    if exp == "missing":
        wrong = own_token(env, key.jkt, drop=("exp",))
    elif isinstance(exp, int) and not isinstance(exp, bool) and exp < -1:
        wrong = own_token(env, key.jkt, exp=now + exp, iat=now - 60, nbf=now - 60)
    else:
        wrong = own_token(env, key.jkt, exp=exp)
    assert_refused(call(env.http, "GET", env.o.url + "/whoami", wrong, key), 401, "invalid_token")
    # Within the skew, and as a float NumericDate: accepted.
    ok(env, env.o.url + "/whoami", own_token(env, key.jkt, exp=now - 5, iat=now - 60, nbf=now - 60), key)
    ok(env, env.o.url + "/whoami", own_token(env, key.jkt, exp=now + 60.5), key)


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_C_02_nbf_or_iat_beyond_skew_refused(env: Env, claim: str) -> None:
    key = DPoPKey()
    now = int(time.time())
    for ahead in (11, 61):
        ahead_claims: dict[str, Any] = {claim: now + ahead, "exp": now + 300}
        wrong = own_token(env, key.jkt, **ahead_claims)
        assert_refused(call(env.http, "GET", env.o.url + "/whoami", wrong, key), 401, "invalid_token")
    within: dict[str, Any] = {claim: now + 5, "exp": now + 300}
    ok(env, env.o.url + "/whoami", own_token(env, key.jkt, **within), key)


def test_C_03_lifetime_above_the_cap_refused(env: Env) -> None:
    key = DPoPKey()
    now = int(time.time())
    wrong = own_token(env, key.jkt, iat=now, nbf=now, exp=now + 901)
    assert_refused(call(env.http, "GET", env.o.url + "/whoami", wrong, key), 401, "invalid_token")
    ok(env, env.o.url + "/whoami", own_token(env, key.jkt, iat=now, nbf=now, exp=now + 900), key)


def test_BCP_04_unbound_token_refused(env: Env) -> None:
    """tether services accept key-bound tokens only (BCP-04 **P**, ASVS 10.3.5)."""
    key = DPoPKey()
    wrong = own_token(env, key.jkt, drop=("cnf",))
    assert_refused(call(env.http, "GET", env.o.url + "/whoami", wrong, key), 401, "invalid_token")
    ok(env, env.o.url + "/whoami", own_token(env, key.jkt), key)


# -- DPOP-01..14: the proof ---------------------------------------------------------------------
def test_DPOP_01_missing_proof_refused(env: Env) -> None:
    token, key, _ = fresh_hop(env)
    response = env.http.get(env.a.url + "/whoami", headers={"Authorization": f"DPoP {token}"})
    assert_refused(response, 401, "invalid_dpop_proof")
    ok(env, env.a.url + "/whoami", token, key)


def test_DPOP_01_two_proofs_refused(env: Env) -> None:
    token, key, _ = fresh_hop(env)
    url = env.a.url + "/whoami"
    first, second = key.proof("GET", url, access_token=token), key.proof("GET", url, access_token=token)
    response = call(env.http, "GET", url, token, None, extra_headers=[("DPoP", first), ("DPoP", second)])
    assert_refused(response, 401, "invalid_dpop_proof")
    response = call(env.http, "GET", url, token, None, extra_headers=[("DPoP", f"{first}, {second}")])
    assert_refused(response, 401, "invalid_dpop_proof")
    ok(env, url, token, key)


def test_DPOP_02_malformed_proof_refused(env: Env) -> None:
    token, key, _ = fresh_hop(env)
    url = env.a.url + "/whoami"
    for junk in ("not-a-jwt", "a.b", token):
        assert_refused(call(env.http, "GET", url, token, None, proof=junk), 401, "invalid_dpop_proof")
    ok(env, url, token, key)


def test_DPOP_08_proof_for_another_uri_or_method_refused(env: Env) -> None:
    token, key, _ = fresh_hop(env)
    url = env.a.url + "/whoami"
    for method, htu in (("GET", env.a.url + "/admin"), ("GET", env.b.url + "/whoami"), ("GET", url + "/"), ("POST", url)):
        proof = key.proof(method, htu, access_token=token)
        assert_refused(call(env.http, "GET", url, token, None, proof=proof), 401, "invalid_dpop_proof")
    # D-02: methods are compared exactly.
    lower = sign_compact(
        {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.public_jwk},
        {"jti": secrets.token_urlsafe(16), "htm": "get", "htu": url, "iat": int(time.time()), "ath": compute_ath(token)},
        key._key,
        "ES256",
    )
    assert_refused(call(env.http, "GET", url, token, None, proof=lower), 401, "invalid_dpop_proof")
    ok(env, url, token, key)
    # D-03: query and fragment in the request or the htu do not matter.
    assert call(env.http, "GET", url + "?q=1", token, key).status_code == 200
    proof = key.proof("GET", url, access_token=token)
    assert call(env.http, "GET", url + "?q=2", token, None, proof=proof).status_code == 200


def test_DPOP_09_percent_encoded_path_is_matched_against_the_request_uri(env: Env) -> None:
    """The proof's ``htu`` is the request URI as sent; a percent-encoded path must still match it."""
    token, key, _ = fresh_hop(env)
    plain = call(env.http, "GET", env.a.url + "/docs/design", token, key)
    assert plain.status_code == 200, plain.text
    encoded = call(env.http, "GET", env.a.url + "/docs/q3%20design", token, key)
    assert encoded.status_code == 200, encoded.text
    assert encoded.json()["name"] == "q3 design"


def test_DPOP_14_proof_without_ath_refused(env: Env) -> None:
    token, key, _ = fresh_hop(env)
    url = env.a.url + "/whoami"
    proof = key.proof("GET", url)
    assert_refused(call(env.http, "GET", url, token, None, proof=proof), 401, "invalid_dpop_proof")
    ok(env, url, token, key)


def test_DPOP_14_proof_with_ath_of_another_token_refused(env: Env) -> None:
    task = env.task()
    session, client = session_token(env.sts, task["id"])
    key = client.key
    first = client.hop(session, env.a.url).json()["access_token"]
    second = client.hop(session, env.a.url).json()["access_token"]
    url = env.a.url + "/whoami"
    proof = key.proof("GET", url, access_token=second)
    assert_refused(call(env.http, "GET", url, first, None, proof=proof), 401, "invalid_dpop_proof")
    ok(env, url, first, key)
    ok(env, url, second, key)


def test_DPOP_14_proof_key_must_match_cnf_jkt(env: Env) -> None:
    token, key, _ = fresh_hop(env)
    thief = DPoPKey()
    assert claims_of(token)["cnf"]["jkt"] == key.jkt != thief.jkt
    assert_refused(call(env.http, "GET", env.a.url + "/whoami", token, thief), 401, "invalid_token")
    ok(env, env.a.url + "/whoami", token, key)


def test_DPOP_11_stale_proof_refused(env: Env) -> None:
    token, key, _ = fresh_hop(env)
    url = env.a.url + "/whoami"
    for now in (time.time() - 120, time.time() + 60):
        proof = key.proof("GET", url, access_token=token, now=now)
        assert_refused(call(env.http, "GET", url, token, None, proof=proof), 401, "invalid_dpop_proof")
    ok(env, url, token, key)


def test_DPOP_12_D_01_replayed_proof_refused(env: Env) -> None:
    token, key, _ = fresh_hop(env)
    url = env.a.url + "/whoami"
    proof = key.proof("GET", url, access_token=token)
    assert call(env.http, "GET", url, token, None, proof=proof).status_code == 200
    assert_refused(call(env.http, "GET", url, token, None, proof=proof), 401, "invalid_dpop_proof")
    ok(env, url, token, key)


# -- RFC 9449 §9 / DPOP-10: server nonces ----------------------------------------------------------
def test_DPOP_10_nonce_challenge_then_retry_succeeds(env: Env) -> None:
    token, key, _ = fresh_hop(env, audience=env.n.url)
    url = env.n.url + "/whoami"
    first = call(env.http, "GET", url, token, key)
    assert_refused(first, 401, "use_dpop_nonce")
    nonce = first.headers["dpop-nonce"]
    assert nonce and len(first.headers.get_list("dpop-nonce")) == 1
    retry = call(env.http, "GET", url, token, key, nonce=nonce)
    assert retry.status_code == 200, retry.text


def test_DPOP_10_wrong_nonce_refused_with_a_new_challenge(env: Env) -> None:
    token, key, _ = fresh_hop(env, audience=env.n.url)
    url = env.n.url + "/whoami"
    nonce = call(env.http, "GET", url, token, key).headers["dpop-nonce"]
    wrong = call(env.http, "GET", url, token, key, nonce=nonce[:-2] + ("AA" if not nonce.endswith("AA") else "BB"))
    assert_refused(wrong, 401, "use_dpop_nonce")
    assert wrong.headers["dpop-nonce"]
    assert call(env.http, "GET", url, token, key, nonce=nonce).status_code == 200


# -- scope -----------------------------------------------------------------------------------------
def test_BCP_08_insufficient_scope_gets_403(env: Env) -> None:
    task = env.task()
    session, client = session_token(env.sts, task["id"])
    reader = client.hop(session, env.a.url, scope="wiki:read").json()["access_token"]
    writer = client.hop(session, env.a.url, scope="wiki:read wiki:write").json()["access_token"]
    key = client.key
    response = call(env.http, "POST", env.a.url + "/write", reader, key)
    assert response.status_code == 403
    assert response.json()["error"] == "insufficient_scope"
    assert challenge(response).startswith('DPoP error="insufficient_scope"'), challenge(response)
    response = call(env.http, "GET", env.a.url + "/admin", writer, key)
    assert response.status_code == 403 and response.json()["error"] == "insufficient_scope"
    assert ok(env, env.a.url + "/write", writer, key, method="POST")["scopes"] == ["wiki:read", "wiki:write"]
    assert ok(env, env.a.url + "/whoami", reader, key)["scopes"] == ["wiki:read"]


# -- RFC 9728 metadata -----------------------------------------------------------------------------
def test_RFC9728_protected_resource_metadata_names_the_sts(env: Env) -> None:
    response = env.http.get(env.a.url + "/.well-known/oauth-protected-resource")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    doc = response.json()
    assert doc["resource"] == env.a.url
    assert doc["authorization_servers"] == [env.sts.url]
    assert doc["bearer_methods_supported"] == ["header"]
    # RFC 8705 §3 / RFC 9728 §2: certificate-bound tokens are accepted (mtls on by default), so
    # DPoP is not the only binding; no unbound token is accepted either way (test_mtls_*)
    assert doc["dpop_bound_access_tokens_required"] is False
    assert doc["tls_client_certificate_bound_access_tokens"] is True
    assert doc["dpop_signing_alg_values_supported"] == list(DEFAULT_DPOP_ALGS)
    assert env.http.get(env.n.url + "/.well-known/oauth-protected-resource").json()["resource"] == env.n.url


# -- Principal -------------------------------------------------------------------------------------
def test_principal_for_a_plain_task(env: Env) -> None:
    token, key, task = fresh_hop(env, purpose="summarise the q3 docs", scope="wiki:read wiki:write")
    seen = ok(env, env.a.url + "/whoami", token, key)
    assert seen == {
        "subject": AGENT,
        "agent": AGENT,
        "client_id": AGENT,
        "actor": None,
        "actors": [],
        "scopes": ["wiki:read", "wiki:write"],
        "task": task["id"],
        "purpose": "summarise the q3 docs",
        "audience": env.a.url,
        "jti": claims_of(token)["jti"],
        "jkt": key.jkt,
        "expires_at": claims_of(token)["exp"],
    }


def test_principal_on_behalf_of_a_user_through_a_service(env: Env) -> None:
    task = env.task(on_behalf_of="user:alice", purpose="answer alice")
    direct, key = hop_token(env.sts, task["id"], env.a.url)
    seen = ok(env, env.a.url + "/whoami", direct, key)
    assert (seen["subject"], seen["agent"], seen["actors"], seen["actor"]) == ("user:alice", AGENT, [AGENT], AGENT)
    assert (seen["task"], seen["purpose"]) == (task["id"], "answer alice")

    for_b, agent_key = hop_token(env.sts, task["id"], X)
    onward, b_key = actor_exchange(env.sts, for_b, SVC_B, env.a.url)
    seen = ok(env, env.a.url + "/whoami", onward, b_key)
    assert seen["subject"] == "user:alice"
    assert seen["actors"] == [SVC_B, AGENT]
    assert seen["actor"] == SVC_B
    assert seen["agent"] == AGENT == seen["actors"][-1], "the agent is the innermost actor"
    assert seen["client_id"] == SVC_B
    assert seen["jkt"] == b_key.jkt != agent_key.jkt
    # Bound to the service's key: the agent cannot use it.
    assert_refused(call(env.http, "GET", env.a.url + "/whoami", onward, agent_key), 401, "invalid_token")
    ok(env, env.a.url + "/whoami", onward, b_key)


def test_TX_05_authorisation_on_current_actor_ignores_nested_actors(env: Env) -> None:
    """``/b-only`` admits only service B as *current* actor; B nested deeper in ``act`` has no effect."""
    task = env.task()
    for_x, _ = hop_token(env.sts, task["id"], X)
    via_b, b_key = actor_exchange(env.sts, for_x, SVC_B, env.a.url)
    for_y, _ = actor_exchange(env.sts, for_x, SVC_B, Y)
    via_c, c_key = actor_exchange(env.sts, for_y, SVC_C, env.a.url)
    assert claims_of(via_c)["act"] == {"sub": SVC_C, "act": {"sub": SVC_B}}

    nested = call(env.http, "GET", env.a.url + "/b-only", via_c, c_key)
    assert nested.status_code == 403, nested.text
    assert nested.json()["error"] == "access_denied"
    # The token itself is valid at the service; only the policy keyed on the current actor said no.
    seen = ok(env, env.a.url + "/whoami", via_c, c_key)
    assert seen["actor"] == SVC_C and SVC_B in seen["actors"]

    direct, agent_key = hop_token(env.sts, task["id"], env.a.url)
    assert call(env.http, "GET", env.a.url + "/b-only", direct, agent_key).status_code == 403
    assert ok(env, env.a.url + "/b-only", via_b, b_key)["actor"] == SVC_B


def test_D_01_replay_to_a_second_replica_refused_with_a_shared_cache(env: Env) -> None:
    """Two replicas of one service share a replay cache (``replay=``); a proof spent on one is dead on both."""
    p1, p2 = free_port(), free_port()
    resource = f"http://127.0.0.1:{p1}"
    shared = MemoryReplayCache()
    settings = ResourceSettings(issuer=env.sts.url, resource=resource)
    identity = env.sts.identity(SVC_B)
    with (
        serve(Verifier(settings, replay=shared, identity=identity), p1) as one,
        serve(Verifier(settings, replay=shared, identity=identity), p2) as two,
    ):
        task = env.task(audiences=[resource])
        token, key = hop_token(env.sts, task["id"], resource)
        proof = key.proof("GET", resource + "/whoami", access_token=token)
        assert call(env.http, "GET", one.url + "/whoami", token, None, proof=proof).status_code == 200
        assert_refused(call(env.http, "GET", two.url + "/whoami", token, None, proof=proof), 401, "invalid_dpop_proof")
        fresh = key.proof("GET", resource + "/whoami", access_token=token)
        assert call(env.http, "GET", two.url + "/whoami", token, None, proof=fresh).status_code == 200


def test_AUX_01_first_burst_at_a_fresh_service_waits_for_the_jwks(env: Env) -> None:
    """Concurrent first requests at a service that has not fetched its JWKS yet are all verified.

    The key set is served from its own ``jwks_uri`` (a relay that answers in 0.3 s, like a
    slow CDN), so the burst certainly arrives while the first fetch is in flight.
    """

    async def slow_jwks(request: Request) -> Response:
        await asyncio.sleep(0.3)
        async with httpx.AsyncClient(trust_env=False) as http:
            upstream = await http.get(env.sts.url + "/jwks")
        return JSONResponse(upstream.json())

    port, jwks_port = free_port(), free_port()
    resource = f"http://127.0.0.1:{port}"
    task = env.task(audiences=[resource])
    token, key = hop_token(env.sts, task["id"], resource)
    url = resource + "/whoami"
    settings = ResourceSettings(issuer=env.sts.url, resource=resource, jwks_uri=f"http://127.0.0.1:{jwks_port}/jwks")
    relay = ServerThread(Starlette(routes=[Route("/jwks", slow_jwks)]), jwks_port).start()
    try:
        with serve(Verifier(settings, identity=env.sts.identity(SVC_B)), port):
            proofs = [key.proof("GET", url, access_token=token) for _ in range(8)]

            async def burst() -> list[int]:
                async with httpx.AsyncClient(trust_env=False, timeout=10.0) as http:
                    responses = await asyncio.gather(
                        *(http.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": p}) for p in proofs)
                    )
                    return [r.status_code for r in responses]

            assert asyncio.run(burst()) == [200] * 8
            ok(env, url, token, key)
    finally:
        relay.stop()
