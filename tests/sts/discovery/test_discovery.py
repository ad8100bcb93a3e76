"""RFC 8414 metadata, ``/jwks``, ``/healthz`` and signing-key rotation while the server runs."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jwt

from helpers import ADMIN, JWT_BEARER, TOKEN_EXCHANGE, Client, RunningSts, admin_token, create_task

TETHER = str(Path(sys.prefix) / "bin" / "tether")
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def _get(sts: RunningSts, path: str) -> httpx.Response:
    return Client(sts).http.get(sts.url + path)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 computed here, independently of tether."""
    members = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(canonical.encode()).digest())


def _header(token: str) -> dict[str, Any]:
    return dict(jwt.get_unverified_header(token))


def _verify(sts: RunningSts, token: str, jwks: dict[str, Any], audience: str) -> dict[str, Any]:
    keys = {k["kid"]: k for k in jwks["keys"]}
    header = _header(token)
    key = jwt.PyJWK(keys[header["kid"]])
    claims: dict[str, Any] = jwt.decode(
        token,
        key.key,
        algorithms=[keys[header["kid"]]["alg"]],
        audience=audience,
        issuer=sts.url,
        options={"require": ["exp", "iat", "jti", "sub", "iss", "aud"]},
        leeway=0,
    )
    return claims


def test_AUX_03_BCP_11_metadata_issuer_equals_the_issuer_used_to_build_its_url(shared_sts: RunningSts) -> None:
    sts = shared_sts
    issuer = sts.url
    response = Client(sts).http.get(issuer + "/.well-known/oauth-authorization-server")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    meta = response.json()
    assert meta["issuer"] == issuer
    for name, path in (
        ("token_endpoint", "/token"),
        ("jwks_uri", "/jwks"),
        ("introspection_endpoint", "/introspect"),
        ("revocation_endpoint", "/revoke"),
    ):
        assert meta[name] == issuer + path
    assert TOKEN_EXCHANGE in meta["grant_types_supported"]
    assert "password" not in meta["grant_types_supported"]  # BCP-09
    algs = meta["dpop_signing_alg_values_supported"]
    assert algs and "ES256" in algs
    assert not {a for a in algs if a == "none" or a.startswith("HS")}
    assert "private_key_jwt" in meta["introspection_endpoint_auth_methods_supported"]
    assert "private_key_jwt" in meta["revocation_endpoint_auth_methods_supported"]
    # the advertised endpoints are the real ones
    assert Client(sts).http.get(meta["jwks_uri"]).status_code == 200


def test_metadata_dpop_algs_match_what_the_token_endpoint_enforces(shared_sts: RunningSts) -> None:
    sts = shared_sts
    meta = _get(sts, "/.well-known/oauth-authorization-server").json()
    client, token = admin_token(sts)
    # a DPoP challenge (here for a bearer downgrade) names the algorithms the server accepts
    response = client.http.get(sts.url + "/tasks", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    advertised = challenge.split('algs="', 1)[1].split('"', 1)[0].split()
    assert advertised == meta["dpop_signing_alg_values_supported"]


def test_jwks_keys_are_public_with_kid_alg_use(shared_sts: RunningSts) -> None:
    sts = shared_sts
    response = _get(sts, "/jwks")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/jwk-set+json")
    keys = response.json()["keys"]
    assert keys
    for key in keys:
        assert {"kid", "alg", "use", "kty"} <= set(key)
        assert key["use"] == "sig"
        assert key["alg"] in ("ES256", "EdDSA")
        assert not PRIVATE_MEMBERS & set(key), key
        assert key["kid"] == _thumbprint(key)
    assert len({k["kid"] for k in keys}) == len(keys)


def test_AUX_01_issued_tokens_verify_against_jwks_with_pyjwt(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts)
    agent = Client(sts)
    session = agent.session(task["id"]).json()["access_token"]
    hop = agent.hop(session, "http://127.0.0.1:9001", scope="wiki:read").json()["access_token"]
    jwks = _get(sts, "/jwks").json()
    for token, audience in ((session, sts.url), (hop, "http://127.0.0.1:9001")):
        header = _header(token)
        assert header["typ"] == "at+jwt"
        assert header["kid"] in {k["kid"] for k in jwks["keys"]}
        claims = _verify(sts, token, jwks, audience)
        assert claims["cnf"] == {"jkt": agent.key.jkt}
        assert claims["txn"] == task["id"]
    # negative: the hop token is not valid for another audience (BCP-07)
    try:
        _verify(sts, hop, jwks, "http://127.0.0.1:9002")
    except jwt.InvalidAudienceError:
        pass
    else:
        raise AssertionError("hop token verified for a foreign audience")


def test_healthz_shows_only_status(shared_sts: RunningSts) -> None:
    """For load balancers: whether the store answers, nothing about the deployment (no ``kid``)."""
    response = _get(shared_sts, "/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["cache-control"] == "no-store"


def _new_kid(sts: RunningSts, old_kid: str) -> str:
    """The key the server signs with once it has picked up a rotation (background reload every 5 s)."""
    kid: str = _poll(lambda: (kids := {k["kid"] for k in _get(sts, "/jwks").json()["keys"]} - {old_kid}) and kids.pop())
    return kid


def test_unknown_path_is_json_404(shared_sts: RunningSts) -> None:
    response = _get(shared_sts, "/.well-known/openid-configuration")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert _get(shared_sts, "/.well-known/oauth-authorization-server").status_code == 200


def _introspect(sts: RunningSts, token: str) -> dict[str, Any]:
    response = Client(sts).http.post(
        sts.url + "/introspect", data={"token": token, "client_assertion": sts.svid(ADMIN), "client_assertion_type": JWT_BEARER}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _poll(predicate: Any, *, timeout: float = 12.0) -> Any:
    """Wait for the server's background key reload (every 5 s) — a deadline, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(0.2)


def test_keys_rotate_while_serving(sts: RunningSts) -> None:
    old_jwks = _get(sts, "/jwks").json()
    (old_kid,) = [k["kid"] for k in old_jwks["keys"]]
    client, old_admin = admin_token(sts)
    task = create_task(sts)
    agent = Client(sts)
    old_session = agent.session(task["id"]).json()["access_token"]
    assert _header(old_session)["kid"] == old_kid

    result = subprocess.run(
        [TETHER, "keys", "rotate", "--config", str(sts.config.path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    new_kid = _new_kid(sts, old_kid)

    # new tokens are signed with the new key
    _, new_admin = admin_token(sts)
    assert _header(new_admin)["kid"] == new_kid
    new_hop = agent.hop(old_session, "http://127.0.0.1:9001").json()["access_token"]
    assert _header(new_hop)["kid"] == new_kid
    # JWKS serves old and new; tokens of both verify (PyJWT) and are live at /introspect
    jwks = _get(sts, "/jwks").json()
    assert {k["kid"] for k in jwks["keys"]} == {old_kid, new_kid}
    for token, audience in ((old_session, sts.url), (new_hop, "http://127.0.0.1:9001"), (old_admin, sts.url)):
        _verify(sts, token, jwks, audience)
        assert _introspect(sts, token)["active"] is True
    assert client.api("GET", "/tasks?limit=1", old_admin).status_code == 200  # old admin token still accepted
    listed = subprocess.run(
        [TETHER, "keys", "list", "--json", "--config", str(sts.config.path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    by_kid = {k["kid"]: k for k in json.loads(listed.stdout)}
    assert by_kid[new_kid]["retired_at"] is None
    not_after = by_kid[old_kid]["not_after"]
    assert isinstance(not_after, int)

    # after the old key's not_after, JWKS drops it and its tokens no longer verify
    sts.clock.advance(not_after - sts.clock.now() + 1)
    assert {k["kid"] for k in _get(sts, "/jwks").json()["keys"]} == {new_kid}
    assert _introspect(sts, old_session) == {"active": False}
    # positive control: the new key still signs and verifies
    _, fresh = admin_token(sts)
    assert _header(fresh)["kid"] == new_kid
    assert _introspect(sts, fresh)["active"] is True


def test_keys_rotate_to_eddsa_tokens_verify_at_the_sts_and_independently(sts: RunningSts) -> None:
    """An EdDSA issuer key (``tether keys rotate --alg EdDSA``) signs tokens that the STS itself
    accepts as subject tokens, that introspect as active, and that PyJWT verifies against the
    published JWKS (``"alg": "EdDSA"``, ``crv: Ed25519``)."""
    (old_kid,) = [k["kid"] for k in _get(sts, "/jwks").json()["keys"]]
    result = subprocess.run(
        [TETHER, "keys", "rotate", "--alg", "EdDSA", "--config", str(sts.config.path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    new_kid = _new_kid(sts, old_kid)
    task = create_task(sts)
    agent = Client(sts)
    session = agent.session(task["id"]).json()["access_token"]
    assert _header(session) == {"alg": "EdDSA", "kid": new_kid, "typ": "at+jwt"}
    hop = agent.hop(session, "http://127.0.0.1:9001")  # the STS verifies its own EdDSA session token
    assert hop.status_code == 200, hop.text
    jwks = _get(sts, "/jwks").json()
    [published] = [k for k in jwks["keys"] if k["kid"] == new_kid]
    assert (published["kty"], published["crv"], published["alg"]) == ("OKP", "Ed25519", "EdDSA")
    _verify(sts, hop.json()["access_token"], jwks, "http://127.0.0.1:9001")
    assert _introspect(sts, session)["active"] is True
