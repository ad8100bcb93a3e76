"""RFC 9449 at the token endpoint, walked the way the OIDF FAPI2 DPoP negative tests do.

Each malformed proof is hand-built (``tokenkit.RawKey``) and carries a valid server
nonce, so the one defect under test is the only reason to refuse. Each refusal is
checked on the wire, in the audit chain and for leaks, then the same client resends
the same request (same SVID, so the refusal did not spend it) with a good proof.
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

import pytest
from tokenkit import (
    RawKey,
    assert_no_leak,
    audit_mark,
    b64url,
    claims_of,
    high_s,
    nonce_for,
    ok,
    raw_post,
    refused,
    respelled,
    session_form,
    sign_jws,
)

from helpers import Client, RunningSts, ServerThread, create_task
from tether.sts.bootstrap import build_sts


class Case:
    """One task, one client holding a valid nonce, one unspent SVID, and a hand-made proof key."""

    def __init__(self, sts: RunningSts, key: RawKey | None = None) -> None:
        self.sts = sts
        self.task = create_task(sts)
        self.client = Client(sts)
        self.nonce = nonce_for(self.client)
        self.svid = sts.svid()
        self.form = session_form(self.task["id"], self.svid)
        self.key = key or RawKey("P-256")

    def proof(self, **kw: Any) -> str:
        kw.setdefault("nonce", self.nonce)
        kw.setdefault("iat", self.sts.clock.now())
        url = kw.pop("url", self.sts.token_url)
        return self.key.proof(url, **kw)

    def refuse(
        self,
        proof: str | None,
        *,
        reason: str | None = None,
        description: str | None = None,
        headers: Any = None,
        control: bool = True,
    ) -> None:
        since = audit_mark(self.sts)
        if headers is None:
            headers = {"DPoP": proof} if proof is not None else {}
        response = raw_post(self.client, self.form, headers=headers)
        secrets_ = [self.svid] + ([proof] if proof and len(proof) > 40 else [])
        refused(
            self.sts,
            response,
            since=since,
            status=400,
            error="invalid_dpop_proof",
            reason=reason,
            description=description,
            secrets=secrets_,
        )
        if control:
            self.control()

    def control(self) -> None:
        """Positive control: the same client and the same (unspent) SVID, with a good proof."""
        claims = claims_of(ok(self.client.post_token(self.form))["access_token"])
        assert claims["cnf"]["jkt"] == self.client.key.jkt

    def accept(self, proof: str) -> dict[str, Any]:
        form = session_form(self.task["id"], self.sts.svid())
        claims = claims_of(ok(raw_post(self.client, form, headers={"DPoP": proof}))["access_token"])
        assert claims["cnf"]["jkt"] == self.key.jkt
        return claims


# -- header presence and shape -------------------------------------------------------


def test_DPOP_16_missing_dpop_header_refused(shared_sts: RunningSts) -> None:
    Case(shared_sts).refuse(None, reason="a dpop proof is required")


def test_DPOP_01_two_dpop_headers_refused(shared_sts: RunningSts) -> None:
    case = Case(shared_sts)
    first, second = case.proof(), case.proof()
    case.refuse(first, headers=[("DPoP", first), ("DPoP", second)], control=False)
    case.refuse(first, headers={"DPoP": f"{first}, {second}"})


def test_DPOP_01_header_name_is_case_insensitive(shared_sts: RunningSts) -> None:
    case = Case(shared_sts)
    form = session_form(case.task["id"], shared_sts.svid())
    proof = case.proof()
    claims = claims_of(ok(raw_post(case.client, form, headers={"DPOP": proof}))["access_token"])
    assert claims["cnf"]["jkt"] == case.key.jkt


@pytest.mark.parametrize(
    "proof",
    [
        "abc",
        "a.b",
        "a.b.c.d",
        "eyJhbGciOiJFUzI1NiJ9..",
        '{"payload":"e30"}',
        "eyJ0eXAiOiJkcG9wK2p3dCJ9.e30.=",
        "not a jwt at all",
    ],
)
def test_DPOP_02_malformed_proof_refused(shared_sts: RunningSts, proof: str) -> None:
    Case(shared_sts).refuse(proof)


def test_DPOP_02_proof_with_duplicate_claim_refused(shared_sts: RunningSts) -> None:
    case = Case(shared_sts)
    now = int(shared_sts.clock.now())
    body = (
        f'{{"jti":"{secrets.token_urlsafe(16)}","htm":"POST","htu":"{shared_sts.token_url}",'
        f'"iat":{now},"nonce":"{case.nonce}","htu":"http://evil.example/token"}}'
    )
    case.refuse(sign_jws({"typ": "dpop+jwt", "alg": "ES256", "jwk": case.key.jwk}, body, case.key, "ES256"), reason="duplicate")


@pytest.mark.parametrize("claim", ["jti", "htm", "htu", "iat"])
def test_DPOP_03_missing_required_claim_refused(shared_sts: RunningSts, claim: str) -> None:
    case = Case(shared_sts)
    case.refuse(case.proof(drop=[claim]), reason="missing or malformed")


@pytest.mark.parametrize("value", ["1700000000", True, None, -5, [1], {"t": 1}])
def test_DPOP_03_iat_not_a_numeric_date_refused(shared_sts: RunningSts, value: object) -> None:
    case = Case(shared_sts)
    case.refuse(case.proof(claims={"iat": value}))


def test_DPOP_03_extra_unknown_claims_accepted(shared_sts: RunningSts) -> None:
    case = Case(shared_sts)
    case.accept(case.proof(claims={"x-custom": "value", "exp": int(shared_sts.clock.now()) + 30}))


# -- typ, alg, jwk, signature --------------------------------------------------------


@pytest.mark.parametrize("typ", ["JWT", "at+jwt", "jwt", "secevent+jwt", "dpop", "", 1, None])
def test_DPOP_04_wrong_typ_refused(shared_sts: RunningSts, typ: object) -> None:
    case = Case(shared_sts)
    proof = case.proof(drop=["typ"]) if typ is None else case.proof(header={"typ": typ})
    case.refuse(proof)


def test_DPOP_05_alg_none_refused(shared_sts: RunningSts) -> None:
    case = Case(shared_sts)
    claims = claims_of(case.proof())
    for alg in ("none", "None", "NONE", "nOnE"):
        case.refuse(sign_jws({"typ": "dpop+jwt", "alg": alg, "jwk": case.key.jwk}, claims, None, alg), control=False)
    case.control()


def test_DPOP_05_alg_hs256_refused(shared_sts: RunningSts) -> None:
    case = Case(shared_sts)
    secret = json.dumps(case.key.jwk).encode()
    hdr = {"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "oct", "k": b64url(secret)}}
    case.refuse(sign_jws(hdr, claims_of(case.proof()), secret, "HS256"), control=False)
    case.refuse(sign_jws({**hdr, "jwk": case.key.jwk}, claims_of(case.proof()), secret, "HS256"))


@pytest.mark.parametrize(
    ("kind", "header_alg", "sign_alg"),
    [
        ("P-256", "RS256", "ES256"),  # alg of another family than the key
        ("P-256", "ES384", "ES256"),  # alg of another curve than the key
        ("P-256", "es256", "ES256"),  # case-sensitive comparison (JWT-01)
        ("P-256", "EdDSA", "ES256"),
        ("P-521", "ES512", "ES512"),  # asymmetric but not in the DPoP allowlist
        ("RSA", "PS256", "RS256"),  # header says PSS, signature is PKCS#1 v1.5
    ],
)
def test_DPOP_05_alg_not_allowed_or_not_matching_key_refused(
    shared_sts: RunningSts, kind: str, header_alg: str, sign_alg: str
) -> None:
    case = Case(shared_sts, key=RawKey(kind))
    hdr = {"typ": "dpop+jwt", "alg": header_alg, "jwk": case.key.jwk}
    case.refuse(sign_jws(hdr, claims_of(case.proof(alg=sign_alg)), case.key, sign_alg))


@pytest.mark.parametrize(
    ("kind", "alg"), [("P-256", "ES256"), ("P-384", "ES384"), ("Ed25519", "EdDSA"), ("RSA", "PS256"), ("RSA", "RS256")]
)
def test_DPOP_05_advertised_asymmetric_algs_accepted(shared_sts: RunningSts, kind: str, alg: str) -> None:
    """Every alg in ``dpop_signing_alg_values_supported`` works with a plain public JWK (no ``alg`` member)."""
    sts = shared_sts
    case = Case(sts, key=RawKey(kind))
    http = case.client.http
    metadata = http.get(sts.url + "/.well-known/oauth-authorization-server").json()
    assert alg in metadata["dpop_signing_alg_values_supported"]
    assert "alg" not in case.key.jwk
    case.accept(case.proof(alg=alg))


def test_DPOP_05_rsa_jwk_declaring_its_alg_accepted(shared_sts: RunningSts) -> None:
    case = Case(shared_sts, key=RawKey("RSA"))
    case.accept(case.proof(alg="PS256", header={"jwk": {**case.key.jwk, "alg": "PS256"}}))


def test_DPOP_06_signature_by_another_key_refused(shared_sts: RunningSts) -> None:
    case = Case(shared_sts)
    case.refuse(case.proof(signer=RawKey("P-256")), reason="signature")


def test_DPOP_06_truncated_or_zero_signature_refused(shared_sts: RunningSts) -> None:
    case = Case(shared_sts)
    head, payload, _ = case.proof().split(".")
    for signature in ("A" * 86, b64url(b"\x00" * 64), "MAYCAQACAQA", b64url(b"\x01" * 63)):
        case.refuse(f"{head}.{payload}.{signature}", control=False)
    case.control()


@pytest.mark.parametrize(
    "variant",
    ["private_ec", "private_rsa", "oct", "missing", "string", "list", "null", "rsa_1024", "off_curve", "unknown_kty"],
)
def test_DPOP_07_unusable_or_private_jwk_refused(shared_sts: RunningSts, variant: str) -> None:
    key = RawKey("RSA", rsa_bits=1024) if variant == "rsa_1024" else RawKey("RSA") if variant == "private_rsa" else None
    case = Case(shared_sts, key=key)
    jwk: object
    if variant in ("private_ec", "private_rsa"):
        jwk = case.key.private_jwk
    elif variant == "oct":
        jwk = {"kty": "oct", "k": b64url(b"0123456789abcdef")}
    elif variant == "string":
        jwk = "foo"
    elif variant == "list":
        jwk = []
    elif variant == "null":
        jwk = None
    elif variant == "off_curve":
        jwk = {**case.key.jwk, "y": b64url(b"\x01" * 32)}
    elif variant == "unknown_kty":
        jwk = {**case.key.jwk, "kty": "XYZ"}
    else:
        jwk = case.key.jwk
    alg = "RS256" if case.key.kind == "RSA" else "ES256"
    proof = case.proof(alg=alg, drop=["jwk"]) if variant == "missing" else case.proof(alg=alg, header={"jwk": jwk})
    case.refuse(proof)


def test_DPOP_07_unexpected_header_parameters_refused(shared_sts: RunningSts) -> None:
    case = Case(shared_sts)
    for extra in ({"crit": ["exp"]}, {"jku": "http://127.0.0.1:1/jwks"}, {"x5u": "http://127.0.0.1:1/x5"}, {"b64": False}):
        case.refuse(case.proof(header=extra), reason="not allowed", control=False)
    case.control()


# -- htm and htu ---------------------------------------------------------------------


@pytest.mark.parametrize("htm", ["GET", "PUT", "post", "Post", "POST "])
def test_D_02_DPOP_08_wrong_htm_refused(shared_sts: RunningSts, htm: str) -> None:
    case = Case(shared_sts)
    case.refuse(case.proof(method=htm), reason="htm")


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", maxsplit=1)[0])


@pytest.mark.parametrize(
    "mutate",
    [
        lambda url: url + "s",  # different path
        lambda url: url + "/",  # trailing slash is another path
        lambda url: url.replace("/token", "/Token"),  # paths are case-sensitive
        lambda url: url.replace("/token", "/introspect"),
        lambda url: url.replace("127.0.0.1", "localhost"),  # different host
        lambda url: url.replace("http://", "https://"),  # different scheme
        lambda url: url.replace(f":{_port(url)}/", f":{_port(url) + 1}/"),  # different port
        lambda url: url.replace(f":{_port(url)}/", "/"),  # port dropped
        lambda url: url.replace("/token", "/%2Ftoken"),  # encoded slash is not a slash
        lambda url: "token",  # relative
    ],
)
def test_D_03_DPOP_08_wrong_htu_refused(shared_sts: RunningSts, mutate: Any) -> None:
    case = Case(shared_sts)
    htu = mutate(shared_sts.token_url)
    assert htu != shared_sts.token_url
    case.refuse(case.proof(url=htu), reason="htu")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda url: url.replace("http://", "HTTP://"),  # scheme case
        lambda url: url + "?foo=bar",  # query ignored
        lambda url: url + "#fragment",  # fragment ignored
        lambda url: url + "?a=1#b",
        lambda url: url.replace("/token", "/%74oken"),  # percent-encoded unreserved character
        lambda url: url.replace("/token", "/x/../token"),  # dot-segments
        lambda url: url.replace("/token", "/./token"),
    ],
)
def test_D_03_DPOP_09_htu_normalisations_accepted(shared_sts: RunningSts, mutate: Any) -> None:
    case = Case(shared_sts)
    case.accept(case.proof(url=mutate(shared_sts.token_url)))


# -- iat window ----------------------------------------------------------------------


def test_DPOP_11_stale_proof_refused_after_clock_moves(sts: RunningSts) -> None:
    case = Case(sts)
    proof = case.proof()
    sts.clock.advance(65)
    case.refuse(proof, reason="iat")


def test_DPOP_11_iat_outside_window_refused(sts: RunningSts) -> None:
    case = Case(sts)
    now = sts.clock.now()
    for iat in (now + 15, now + 3600, now - 65, now - 3600):
        case.refuse(case.proof(iat=iat), description="outside the acceptable window", control=False)
    case.control()


def test_DPOP_11_iat_inside_window_accepted(sts: RunningSts) -> None:
    case = Case(sts)
    now = sts.clock.now()
    case.accept(case.proof(iat=now - 45))
    case.accept(case.proof(iat=now + 5))


def test_DPOP_11_expired_exp_claim_refused(shared_sts: RunningSts) -> None:
    case = Case(shared_sts)
    case.refuse(case.proof(claims={"exp": int(shared_sts.clock.now()) - 60}), reason="exp")


# -- replay (D-01, DPOP-12) ------------------------------------------------------------


def test_D_01_DPOP_12_replayed_proof_refused(shared_sts: RunningSts) -> None:
    case = Case(shared_sts)
    proof = case.proof()
    case.accept(proof)
    case.refuse(proof, reason="replayed")


def test_DPOP_12_reused_jti_in_a_new_proof_refused(shared_sts: RunningSts) -> None:
    case = Case(shared_sts)
    jti = secrets.token_urlsafe(16)
    case.accept(case.proof(claims={"jti": jti}))
    case.refuse(case.proof(claims={"jti": jti}, iat=shared_sts.clock.now() - 1), reason="replayed")


def test_D_01_replayed_proof_refused_after_restart(sts: RunningSts) -> None:
    case = Case(sts)
    proof = case.proof()
    case.accept(proof)
    port = int(sts.url.rsplit(":", 1)[1])
    sts.thread.stop()
    restarted = build_sts(sts.config, clock=sts.clock)
    thread = ServerThread(restarted.app, port)
    thread.start()
    try:
        case.client = Client(sts, key=case.client.key)
        case.client.nonce = case.nonce
        case.refuse(proof, reason="replayed")
    finally:
        thread.stop()


# -- server nonces (DPOP-10) -----------------------------------------------------------


def test_DPOP_10_first_request_without_nonce_is_challenged(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts)
    client = Client(sts)
    svid = sts.svid()
    form = session_form(task["id"], svid)
    proof = client.key.proof("POST", sts.token_url, now=sts.clock.now())
    response = raw_post(client, form, headers={"DPoP": proof})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "use_dpop_nonce"
    assert response.headers.get("cache-control") == "no-store"
    assert len(response.headers.get_list("dpop-nonce")) == 1
    nonce = response.headers["dpop-nonce"]
    assert len(nonce) >= 22
    assert_no_leak(sts, [proof, svid], response.text)
    # The standard client's retry: the same request, a new proof carrying the nonce.
    retry = client.key.proof("POST", sts.token_url, nonce=nonce, now=sts.clock.now())
    ok(raw_post(client, form, headers={"DPoP": retry}))


def test_DPOP_10_proof_without_nonce_after_nonce_given_is_challenged(shared_sts: RunningSts) -> None:
    case = Case(shared_sts)
    response = raw_post(case.client, case.form, headers={"DPoP": case.proof(nonce=None)})
    assert response.status_code == 400 and response.json()["error"] == "use_dpop_nonce"
    assert response.headers["dpop-nonce"]
    case.control()


def _forged_nonces(real: str) -> list[str]:
    raw = base64.urlsafe_b64decode(real + "=" * (-len(real) % 4))
    flipped = raw[:-1] + bytes([raw[-1] ^ 1])
    future = (2**40).to_bytes(8, "big") + raw[8:]
    return [
        secrets.token_urlsafe(32),
        b64url(flipped),
        b64url(future),
        real[:-4],
        "x",
        "A" * 120,
    ]


def test_DPOP_10_forged_nonce_is_challenged(shared_sts: RunningSts) -> None:
    case = Case(shared_sts)
    for forged in _forged_nonces(case.nonce):
        response = raw_post(case.client, case.form, headers={"DPoP": case.proof(nonce=forged)})
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "use_dpop_nonce"
        assert response.headers["dpop-nonce"] != forged
    case.control()


def test_DPOP_10_expired_nonce_is_challenged(sts: RunningSts) -> None:
    case = Case(sts)
    sts.clock.advance(130)
    case.svid = sts.svid()
    case.form = session_form(case.task["id"], case.svid)
    response = raw_post(case.client, case.form, headers={"DPoP": case.proof()})
    assert response.status_code == 400 and response.json()["error"] == "use_dpop_nonce"
    fresh = response.headers["dpop-nonce"]
    assert fresh != case.nonce
    ok(raw_post(case.client, case.form, headers={"DPoP": case.proof(nonce=fresh)}))


def test_DPOP_10_successful_response_carries_current_nonce(sts: RunningSts) -> None:
    """One nonce is handed out per second of server time (RFC 9449 §8.2 lets a server reuse it);
    the next second's differs, and each is accepted until ``nonce_ttl`` runs out."""
    case = Case(sts)
    response = raw_post(case.client, case.form, headers={"DPoP": case.proof()})
    ok(response)
    assert len(response.headers.get_list("dpop-nonce")) == 1
    case.nonce = response.headers["dpop-nonce"]
    case.accept(case.proof())
    sts.clock.advance(1)
    case.svid = sts.svid()
    case.form = session_form(case.task["id"], case.svid)
    response = raw_post(case.client, case.form, headers={"DPoP": case.proof()})
    ok(response)
    fresh = response.headers["dpop-nonce"]
    assert fresh != case.nonce
    case.nonce = fresh
    case.accept(case.proof())


def test_DPOP_10_nonce_from_another_server_is_challenged(sts: RunningSts, shared_sts: RunningSts) -> None:
    foreign = nonce_for(Client(shared_sts))
    case = Case(sts)
    response = raw_post(case.client, case.form, headers={"DPoP": case.proof(nonce=foreign)})
    assert response.status_code == 400 and response.json()["error"] == "use_dpop_nonce"
    assert response.headers["dpop-nonce"] != foreign
    case.control()


def test_K_03_D_01_malleated_replay_of_accepted_proof_refused(shared_sts: RunningSts) -> None:
    """A high-S or re-spelled copy of an accepted proof is the same proof: its ``jti`` is spent."""
    case = Case(shared_sts)
    proof = case.proof()
    case.accept(proof)
    case.refuse(high_s(proof), reason="replayed", control=False)  # verifies, so only the jti stops it
    case.refuse(respelled(proof), control=False)
    case.control()
