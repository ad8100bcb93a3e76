"""RFC 9449 §4.3 proof checks (``tether.rules.dpop``): SECURITY.md DPOP-02..14, D-02, D-03, C-02, K-03.

Table-driven like node-oidc-provider's ``test/dpop/dpop.test.js``: each row changes one thing in
an otherwise valid proof. Proofs are assembled by hand (base64url of exact JSON, ES256/RS256
signatures from pyca/cryptography) and every negative test first checks that the unchanged proof
on the same key is accepted, so a refusal cannot come from a broken fixture.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc.jwk import ECKey, OKPKey, RSAKey

from tether.agent.proof import DPoPKey, htu_of
from tether.errors import InvalidDPoPProof
from tether.model import DPoPProof
from tether.rules.dpop import (
    DEFAULT_DPOP_ALGS,
    MAX_PROOF_LENGTH,
    check_proof,
    compute_ath,
    is_type,
    normalize_htu,
    numeric_date,
    parse_public_jwk,
    replay_key,
)

NOW = 1_700_000_000
URL = "https://sts.example/token"
MISSING = object()
# RFC 9449 §7.1 example access token and its ``ath``.
RFC_ACCESS_TOKEN = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
RFC_ATH = "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def js(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _sign(private: Any, alg: str, signing_input: bytes) -> bytes:
    if isinstance(private, bytes):
        return hmac.new(private, signing_input, hashlib.sha256).digest()
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return private.sign(signing_input)
    if isinstance(private, rsa.RSAPrivateKey):
        if alg.startswith("PS"):
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            return private.sign(signing_input, pss, hashes.SHA256())
        return private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    r, s = decode_dss_signature(private.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for name, value in changes.items():
        if value is MISSING:
            out.pop(name, None)
        else:
            out[name] = value
    return out


@dataclass(frozen=True)
class Signer:
    """A proof-of-possession key and a builder of proofs signed by it."""

    private: Any
    jwk: dict[str, Any]
    alg: str

    @property
    def jkt(self) -> str:
        return parse_public_jwk(self.jwk).thumbprint()

    def header(self, **changes: Any) -> dict[str, Any]:
        return _merge({"typ": "dpop+jwt", "alg": self.alg, "jwk": self.jwk}, changes)

    def claims(self, **changes: Any) -> dict[str, Any]:
        return _merge({"jti": "e1j3V_bKic8-LAEB", "htm": "POST", "htu": URL, "iat": NOW}, changes)

    def proof(
        self,
        header: Mapping[str, Any] | None = None,
        claims: Mapping[str, Any] | None = None,
        *,
        key: Any = None,
        signature: str | None = None,
        sign_alg: str | None = None,
    ) -> str:
        h = b64u(js(self.header() if header is None else header))
        p = b64u(js(self.claims() if claims is None else claims))
        signing_input = f"{h}.{p}".encode()
        sig = signature if signature is not None else b64u(_sign(key or self.private, sign_alg or self.alg, signing_input))
        return f"{h}.{p}.{sig}"


def check(proof: str, **kwargs: Any) -> DPoPProof:
    kwargs.setdefault("method", "POST")
    kwargs.setdefault("url", URL)
    kwargs.setdefault("now", NOW)
    return check_proof(proof, **kwargs)


def refused(proof: str, **kwargs: Any) -> InvalidDPoPProof:
    with pytest.raises(InvalidDPoPProof) as info:
        check(proof, **kwargs)
    assert type(info.value) is InvalidDPoPProof
    assert info.value.error == "invalid_dpop_proof"
    return info.value


@pytest.fixture(scope="module")
def es() -> Signer:
    private = ec.generate_private_key(ec.SECP256R1())
    return Signer(private, dict(ECKey.import_key(private.public_key()).as_dict(private=False)), "ES256")


@pytest.fixture(scope="module")
def rs() -> Signer:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Signer(private, dict(RSAKey.import_key(private.public_key()).as_dict(private=False)), "RS256")


@pytest.fixture(scope="module")
def ed() -> Signer:
    private = ed25519.Ed25519PrivateKey.generate()
    return Signer(private, dict(OKPKey.import_key(private.public_key()).as_dict(private=False)), "EdDSA")


def accepted(signer: Signer, **kwargs: Any) -> DPoPProof:
    """Positive control: the unchanged proof on this key passes every check."""
    result = check(signer.proof(), **kwargs)
    assert result.jkt == signer.jkt
    return result


# ---------------------------------------------------------------------------------------------
# positive path
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["es", "rs", "ed"])
def test_valid_proof_accepted_and_described(request: pytest.FixtureRequest, family: str) -> None:
    signer: Signer = request.getfixturevalue(family)
    result = check(signer.proof())
    assert result == DPoPProof(
        jkt=signer.jkt, jti="e1j3V_bKic8-LAEB", htm="POST", htu=URL, iat=NOW, alg=signer.alg, nonce=None, ath=None
    )


def test_DPOP_14_jkt_is_rfc7638_thumbprint(es: Signer) -> None:
    members = {k: es.jwk[k] for k in ("crv", "kty", "x", "y")}
    expected = b64u(hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest())
    assert check(es.proof()).jkt == expected
    # optional members of the JWK do not change the thumbprint
    header = es.header(jwk={**es.jwk, "kid": "anything", "use": "sig", "alg": "ES256"})
    assert check(es.proof(header)).jkt == expected


def test_DPOP_14_rfc7638_thumbprint_vector() -> None:
    jwk = {
        "kty": "RSA",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
        "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn"
        "1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    }
    assert parse_public_jwk(jwk).thumbprint() == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_extra_unknown_claims_accepted(es: Signer) -> None:
    accepted(es)
    result = check(es.proof(claims=es.claims(foo="bar", nested={"a": [1, 2]}, client_id="x", exp=NOW + 60, nbf=NOW)))
    assert result.jti == "e1j3V_bKic8-LAEB"


def test_float_iat_accepted(es: Signer) -> None:
    assert check(es.proof(claims=es.claims(iat=NOW + 0.5))).iat == NOW


# ---------------------------------------------------------------------------------------------
# DPOP-02 a single well-formed compact JWT
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda p: "", id="empty"),
        pytest.param(lambda p: "not-a-jwt", id="garbage"),
        pytest.param(lambda p: p.rsplit(".", 1)[0], id="two-segments"),
        pytest.param(lambda p: p + ".AAAA", id="four-segments"),
        pytest.param(lambda p: p + ".AAAA.BBBB", id="jwe-shaped"),
        pytest.param(lambda p: p + "," + p, id="two-proofs-comma"),
        pytest.param(lambda p: p + " " + p, id="two-proofs-space"),
        pytest.param(lambda p: " " + p, id="leading-space"),
        pytest.param(lambda p: p + "\r\n", id="trailing-crlf"),
        pytest.param(lambda p: p + "=", id="padding"),
        pytest.param(
            lambda p: json.dumps(dict(zip(("protected", "payload", "signature"), p.split("."), strict=True))),
            id="json-serialization",
        ),
        pytest.param(lambda p: p.rsplit(".", 1)[0] + ".", id="empty-signature"),
    ],
)
def test_DPOP_02_not_a_single_compact_jwt_refused(es: Signer, mutate: Callable[[str], str]) -> None:
    accepted(es)
    refused(mutate(es.proof()))


def test_DPOP_02_oversize_proof_refused(es: Signer) -> None:
    accepted(es)
    big = es.proof(claims=es.claims(pad="x" * MAX_PROOF_LENGTH))
    assert len(big) > MAX_PROOF_LENGTH
    refused(big)


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(b'{"typ":"dpop+jwt","typ":"dpop+jwt","alg":"ES256","jwk":JWK}', id="typ-twice"),
        pytest.param(b'{"typ":"dpop+jwt","alg":"ES256","jwk":JWK,"jwk":JWK}', id="jwk-twice"),
    ],
)
def test_AUX_07_duplicate_header_names_refused(es: Signer, header: bytes) -> None:
    accepted(es)
    h = b64u(header.replace(b"JWK", js(es.jwk)))
    p = b64u(js(es.claims()))
    refused(f"{h}.{p}.{b64u(_sign(es.private, 'ES256', f'{h}.{p}'.encode()))}")


def test_AUX_07_duplicate_claim_names_refused(es: Signer) -> None:
    accepted(es)
    h = b64u(js(es.header()))
    p = b64u(b'{"jti":"a","htm":"GET","htm":"POST","htu":"' + URL.encode() + b'","iat":' + str(NOW).encode() + b"}")
    refused(f"{h}.{p}.{b64u(_sign(es.private, 'ES256', f'{h}.{p}'.encode()))}")


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"crit": ["exp"]}, id="crit"),
        pytest.param({"jku": "https://attacker.example/jwks"}, id="jku"),
        pytest.param({"x5u": "https://attacker.example/c.pem"}, id="x5u"),
        pytest.param({"x5c": ["MIIB"]}, id="x5c"),
        pytest.param({"b64": False}, id="b64"),
        pytest.param({"zip": "DEF"}, id="zip"),
        pytest.param({"cty": "JWT"}, id="cty"),
        pytest.param({"enc": "A256GCM"}, id="enc"),
    ],
)
def test_JWT_10_header_outside_proof_allowlist_refused(es: Signer, extra: dict[str, Any]) -> None:
    accepted(es)
    refused(es.proof(es.header(**extra)))


# ---------------------------------------------------------------------------------------------
# DPOP-03 required claims
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("claim", ["jti", "htm", "htu", "iat"])
def test_DPOP_03_missing_required_claim_refused(es: Signer, claim: str) -> None:
    accepted(es)
    refused(es.proof(claims=es.claims(**{claim: MISSING})))


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("jti", ""),
        ("jti", 1),
        ("jti", True),
        ("jti", None),
        ("jti", ["a"]),
        ("jti", "x" * 257),
        ("htm", ""),
        ("htm", 1),
        ("htm", None),
        ("htm", ["POST"]),
        ("htu", ""),
        ("htu", 1),
        ("htu", None),
        ("htu", {"u": URL}),
        ("iat", str(NOW)),
        ("iat", "9999999999"),
        ("iat", True),
        ("iat", False),
        ("iat", None),
        ("iat", -1),
        ("iat", [NOW]),
        ("iat", {"t": NOW}),
    ],
    ids=lambda v: repr(v)[:20],
)
def test_DPOP_03_malformed_required_claim_refused(es: Signer, claim: str, value: object) -> None:
    accepted(es)
    refused(es.proof(claims=es.claims(**{claim: value})))


@pytest.mark.parametrize("claim", ["iat", "exp", "nbf"])
def test_DPOP_03_huge_integer_date_refused_not_crashing(es: Signer, claim: str) -> None:
    """A JSON integer too large for a float is a malformed NumericDate: ``invalid_dpop_proof``, never a 5xx."""
    accepted(es)
    refused(es.proof(claims=es.claims(**{claim: 10**400})))


# a self-signed proof is attacker-controlled end to end, so any JSON in any member must end in
# InvalidDPoPProof or a valid result, never in another exception (SECURITY.md: "never a 5xx")
_JSON_LEAF = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_JSON = st.recursive(
    _JSON_LEAF, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=6
)


@settings(max_examples=300, deadline=None)
@given(claim=st.sampled_from(["jti", "htm", "htu", "iat", "exp", "nbf", "nonce", "ath"]), value=_JSON)
def test_any_claim_value_is_refused_cleanly(es: Signer, claim: str, value: object) -> None:
    try:
        check(es.proof(claims=es.claims(**{claim: value})), access_token=RFC_ACCESS_TOKEN if claim == "ath" else None)
    except InvalidDPoPProof as exc:
        assert exc.error == "invalid_dpop_proof"


@settings(max_examples=200, deadline=None)
@given(member=st.sampled_from(["typ", "alg", "jwk", "kid"]), value=_JSON)
def test_any_header_value_is_refused_cleanly(es: Signer, member: str, value: object) -> None:
    try:
        check(es.proof(es.header(**{member: value})))
    except InvalidDPoPProof as exc:
        assert exc.error == "invalid_dpop_proof"


# ---------------------------------------------------------------------------------------------
# DPOP-04 typ
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typ",
    [
        "JWT",
        "jwt",
        "secevent+jwt",
        MISSING,
        "at+jwt",
        "application/jwt",
        "dpop",
        "dpop+jws",
        "dpop+jwt ",
        "x/dpop+jwt",
        1,
        True,
        None,
        ["dpop+jwt"],
    ],
    ids=lambda v: "missing" if v is MISSING else repr(v),
)
def test_DPOP_04_typ_not_dpop_jwt_refused(es: Signer, typ: object) -> None:
    accepted(es)
    refused(es.proof(es.header(typ=typ)))


@pytest.mark.parametrize("typ", ["dpop+jwt", "application/dpop+jwt", "DPoP+JWT", "APPLICATION/DPOP+JWT"])
def test_DPOP_04_typ_media_type_forms_accepted(es: Signer, typ: str) -> None:
    assert check(es.proof(es.header(typ=typ))).jkt == es.jkt


# ---------------------------------------------------------------------------------------------
# DPOP-05 asymmetric, allowlisted alg
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_DPOP_05_alg_none_refused(es: Signer, alg: str) -> None:
    accepted(es)
    h, p, sig = es.proof(es.header(alg=alg)).split(".")
    refused(f"{h}.{p}.")
    refused(f"{h}.{p}.{sig}", algorithms=(*DEFAULT_DPOP_ALGS, alg))


@pytest.mark.parametrize("secret", ["jwk-json", "fixed"])
def test_DPOP_05_hs256_refused(es: Signer, secret: str) -> None:
    accepted(es)
    key = js(es.jwk) if secret == "jwk-json" else b"s" * 32
    refused(es.proof(es.header(alg="HS256"), key=key), algorithms=(*DEFAULT_DPOP_ALGS, "HS256"))


@pytest.mark.parametrize("alg", [1, True, None, "unsupported", "ES256K", "es256", ["ES256"]], ids=repr)
def test_DPOP_05_malformed_or_unsupported_alg_refused(es: Signer, alg: object) -> None:
    accepted(es)
    refused(es.proof(es.header(alg=alg)))


def test_DPOP_05_alg_missing_refused(es: Signer) -> None:
    accepted(es)
    refused(es.proof(es.header(alg=MISSING)))


def test_DPOP_05_rs256_when_not_allowed_refused(rs: Signer) -> None:
    accepted(rs)  # RS256 is in DEFAULT_DPOP_ALGS
    refused(rs.proof(), algorithms=("ES256",))


def test_DPOP_05_alg_must_match_jwk_family(es: Signer, rs: Signer) -> None:
    accepted(es)
    accepted(rs)
    # RS256 header with an EC jwk (signature by the RSA key): refused before any verification is trusted
    refused(rs.proof(rs.header(jwk=es.jwk)))
    # ES256 header with an RSA jwk
    refused(es.proof(es.header(jwk=rs.jwk)))
    # PS256 on an RSA jwk that declares RS256
    refused(rs.proof(rs.header(alg="PS256", jwk={**rs.jwk, "alg": "RS256"}), sign_alg="PS256"))
    # P-256 jwk that declares ES384
    refused(es.proof(es.header(jwk={**es.jwk, "alg": "ES384"})))


# ---------------------------------------------------------------------------------------------
# DPOP-06 signature with the header jwk, DPOP-07 public key only
# ---------------------------------------------------------------------------------------------


def test_DPOP_06_signature_by_another_key_refused(es: Signer) -> None:
    accepted(es)
    refused(es.proof(key=ec.generate_private_key(ec.SECP256R1())))


def test_DPOP_06_header_jwk_swapped_refused(es: Signer) -> None:
    accepted(es)
    other = ECKey.import_key(ec.generate_private_key(ec.SECP256R1()).public_key()).as_dict(private=False)
    refused(es.proof(es.header(jwk=dict(other))))


def test_DPOP_06_claims_changed_after_signing_refused(es: Signer) -> None:
    accepted(es)
    h, _, sig = es.proof().split(".")
    refused(f"{h}.{b64u(js(es.claims(htu='https://other.example/token')))}.{sig}", url="https://other.example/token")


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(b64u(bytes(64)), id="K-01-zero"),
        pytest.param("MAYCAQACAQA", id="K-01-der-zero"),
        pytest.param(b64u(bytes(63)), id="K-02-63-bytes"),
        pytest.param(b64u(bytes(65)), id="K-02-65-bytes"),
    ],
)
def test_DPOP_06_psychic_and_malformed_signatures_refused(es: Signer, signature: str) -> None:
    accepted(es)
    refused(es.proof(signature=signature))


def test_K_03_high_s_variant_keys_replay_on_jti(es: Signer) -> None:
    """A malleated (high-S) signature may verify, but its replay key is the original's (keyed on jti, not token bytes)."""
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    original = es.proof()
    h, p, sig = original.split(".")
    raw = base64.urlsafe_b64decode(sig + "==")
    r, s = raw[:32], int.from_bytes(raw[32:], "big")
    variant = f"{h}.{p}.{b64u(r + (n - s).to_bytes(32, 'big'))}"
    assert variant != original
    first = check(original)
    try:
        second = check(variant)
    except InvalidDPoPProof:
        return
    assert replay_key(second.jkt, second.jti) == replay_key(first.jkt, first.jti)


@pytest.mark.parametrize(
    "jwk",
    [MISSING, "", 1, True, None, "foo", [], {}, {"kty": 1}, {"kty": "EC"}, {"kty": "EC", "crv": "P-256"}],
    ids=lambda v: "missing" if v is MISSING else repr(v),
)
def test_DPOP_07_jwk_missing_or_not_a_key_refused(es: Signer, jwk: object) -> None:
    accepted(es)
    refused(es.proof(es.header(jwk=jwk)))


def test_DPOP_07_private_key_in_jwk_refused(es: Signer) -> None:
    accepted(es)
    private_jwk = dict(ECKey.import_key(es.private).as_dict(private=True))
    assert "d" in private_jwk
    refused(es.proof(es.header(jwk=private_jwk)))


@pytest.mark.parametrize("member", ["d", "p", "q", "dp", "dq", "qi", "oth"])
def test_DPOP_07_private_rsa_members_in_jwk_refused(rs: Signer, member: str) -> None:
    accepted(rs)
    private_jwk = dict(RSAKey.import_key(rs.private).as_dict(private=True))
    value = private_jwk.get(member, [{"r": "AQAB", "d": "AQAB", "t": "AQAB"}])
    refused(rs.proof(rs.header(jwk={**rs.jwk, member: value})))


def test_DPOP_07_private_okp_jwk_refused(ed: Signer) -> None:
    accepted(ed)
    refused(ed.proof(ed.header(jwk=dict(OKPKey.import_key(ed.private).as_dict(private=True)))))


@pytest.mark.parametrize("alg", ["ES256", "HS256"])
def test_DPOP_07_oct_jwk_refused(es: Signer, alg: str) -> None:
    accepted(es)
    secret = b"s" * 32
    oct_jwk = {"kty": "oct", "k": b64u(secret)}
    key = secret if alg == "HS256" else None
    refused(es.proof(es.header(alg=alg, jwk=oct_jwk), key=key), algorithms=(*DEFAULT_DPOP_ALGS, "HS256"))


@pytest.mark.parametrize("bits", [1024, 1536])
def test_DPOP_05_rsa_jwk_under_2048_bits_refused(rs: Signer, bits: int) -> None:
    accepted(rs)
    small = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    jwk = {"kty": "RSA", "n": b64u(small.public_key().public_numbers().n.to_bytes(bits // 8, "big")), "e": "AQAB"}
    weak = Signer(small, jwk, "RS256")
    refused(weak.proof())
    with pytest.raises(InvalidDPoPProof):
        parse_public_jwk(jwk)


@pytest.mark.parametrize("n", [MISSING, 1, None, "", "!!!", "AQAB"], ids=lambda v: "missing" if v is MISSING else repr(v))
def test_DPOP_07_rsa_jwk_without_usable_modulus_refused(rs: Signer, n: object) -> None:
    accepted(rs)
    refused(rs.proof(rs.header(jwk=_merge(rs.jwk, {"n": n}))))


def test_DPOP_05_self_asserted_rsa_jwk_may_use_pss(rs: Signer) -> None:
    """The proof key is bound only by its thumbprint, so an RSA jwk without ``alg`` may sign PS256 (if allowed)."""
    proof = rs.proof(rs.header(alg="PS256"), sign_alg="PS256")
    assert check(proof).alg == "PS256"
    refused(proof, algorithms=("RS256", "ES256"))


def test_DPOP_05_ed25519_under_rfc9864_name_accepted(ed: Signer) -> None:
    assert check(ed.proof(ed.header(alg="Ed25519"))).alg == "Ed25519"
    refused(ed.proof(ed.header(alg="Ed25519")), algorithms=("ES256",))


def test_DPOP_07_ec_point_not_on_curve_refused(es: Signer) -> None:
    accepted(es)
    y = base64.urlsafe_b64decode(es.jwk["y"] + "==")
    bad_y = b64u(y[:-1] + bytes([y[-1] ^ 1]))
    refused(es.proof(es.header(jwk={**es.jwk, "y": bad_y})))


@pytest.mark.parametrize(
    "jwk",
    [
        "",
        1,
        None,
        [],
        {},
        {"kty": "oct", "k": "c2VjcmV0"},
        {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "d": "AA"},
        {"kty": "RSA", "n": "AQAB", "e": "AQAB", "p": "AQAB"},
        {"kty": "OKP", "crv": "Ed25519", "x": "AA", "d": "AA"},
        {"kty": "unknown"},
        {"kty": "EC", "crv": "P-256", "x": "!!", "y": "!!"},
    ],
    ids=repr,
)
def test_DPOP_07_parse_public_jwk_refuses(jwk: object) -> None:
    with pytest.raises(InvalidDPoPProof) as info:
        parse_public_jwk(jwk)
    assert info.value.error == "invalid_dpop_proof"


@pytest.mark.parametrize("family", ["es", "rs", "ed"])
def test_DPOP_07_parse_public_jwk_accepts_public_keys(request: pytest.FixtureRequest, family: str) -> None:
    signer: Signer = request.getfixturevalue(family)
    key = parse_public_jwk(signer.jwk)
    assert key.thumbprint() == signer.jkt
    assert not key.is_private


# ---------------------------------------------------------------------------------------------
# DPOP-08 / D-02 htm: exact, case-sensitive (RFC 9110 §9.1)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("htm", "method"),
    [("get", "GET"), ("Get", "GET"), ("PUT", "GET"), ("POST", "GET"), ("GET ", "GET"), ("post", "POST"), ("GET", "HEAD")],
)
def test_D_02_htm_mismatch_refused(es: Signer, htm: str, method: str) -> None:
    accepted(es, method="POST")
    assert check(es.proof(claims=es.claims(htm=method)), method=method).htm == method
    refused(es.proof(claims=es.claims(htm=htm)), method=method)


# ---------------------------------------------------------------------------------------------
# DPOP-08/09 / D-03 htu comparison after RFC 3986 normalisation
# ---------------------------------------------------------------------------------------------

HTU_REFUSED = [
    pytest.param("https://sts.example/other", URL, id="different-path"),
    pytest.param("https://sts.example/token/", URL, id="trailing-slash"),
    pytest.param("https://sts.example/token", "https://sts.example/token/", id="trailing-slash-in-request"),
    pytest.param("https://sts.example/Token", URL, id="path-case"),
    pytest.param("https://evil.example/token", URL, id="different-host"),
    pytest.param("https://sts.example.evil/token", URL, id="host-suffix"),
    pytest.param("https://sub.sts.example/token", URL, id="subdomain"),
    pytest.param("http://sts.example/token", URL, id="http-vs-https"),
    pytest.param("https://sts.example/token", "http://sts.example/token", id="https-vs-http"),
    pytest.param("https://sts.example:8443/token", URL, id="different-port"),
    pytest.param("https://sts.example:80/token", URL, id="http-default-port-on-https"),
    pytest.param("https://user@sts.example/token", URL, id="userinfo"),
    pytest.param("ftp://sts.example/token", URL, id="ftp-scheme"),
    pytest.param("/token", URL, id="relative"),
    pytest.param("//sts.example/token", URL, id="scheme-relative"),
    pytest.param("https:///token", URL, id="no-host"),
    pytest.param("https://sts.example/tok%65n%2F", URL, id="encoded-slash"),
    pytest.param("https://sts.example/a%2Fb", "https://sts.example/a/b", id="encoded-slash-vs-slash"),
    pytest.param("https://sts.example/token\u00e9", URL + "\u00e9", id="non-ascii"),
    pytest.param("https://sts.example:99999/token", URL, id="invalid-port"),
    pytest.param("https://sts.example/to ken", "https://sts.example/to ken", id="space"),
]

HTU_ACCEPTED = [
    pytest.param("https://sts.example:443/token", URL, id="explicit-default-port"),
    pytest.param("https://sts.example/token", "https://sts.example:443/token", id="default-port-in-request"),
    pytest.param("http://sts.example:80/token", "http://sts.example/token", id="http-default-port"),
    pytest.param("HTTPS://STS.EXAMPLE/token", URL, id="upper-case-scheme-host"),
    pytest.param("https://Sts.Example/token", "https://sts.EXAMPLE/token", id="mixed-case-host-both"),
    pytest.param("https://sts.example/token?x=1", URL, id="query-in-htu"),
    pytest.param("https://sts.example/token#frag", URL, id="fragment-in-htu"),
    pytest.param("https://sts.example/token?x=1#frag", URL, id="query-and-fragment-in-htu"),
    pytest.param("https://sts.example/token", "https://sts.example/token?a=b", id="query-only-in-request"),
    pytest.param("https://sts.example/token?a=1", "https://sts.example/token?a=2", id="different-queries"),
    pytest.param("https://sts.example/a%2fb", "https://sts.example/a%2Fb", id="percent-encoding-case"),
    pytest.param("https://sts.example/%74oken", URL, id="percent-encoded-unreserved"),
    pytest.param("https://sts.example/%7Euser", "https://sts.example/~user", id="percent-encoded-tilde"),
    pytest.param("https://sts.example/a/../token", URL, id="dot-dot-segment"),
    pytest.param("https://sts.example/./token", URL, id="dot-segment"),
    pytest.param("https://sts.example/a/b/../../token", URL, id="two-dot-dot-segments"),
    pytest.param("https://sts.example/../token", URL, id="dot-dot-above-root"),
    pytest.param("https://sts.example", "https://sts.example/", id="empty-path"),
    pytest.param("https://[::1]:443/token", "https://[::1]/token", id="ipv6-default-port"),
]


@pytest.mark.parametrize(("htu", "url"), HTU_REFUSED)
def test_D_03_htu_mismatch_refused(es: Signer, htu: str, url: str) -> None:
    accepted(es)
    refused(es.proof(claims=es.claims(htu=htu)), url=url)


@pytest.mark.parametrize(("htu", "url"), HTU_ACCEPTED)
def test_DPOP_09_htu_equivalent_after_normalisation_accepted(es: Signer, htu: str, url: str) -> None:
    result = check(es.proof(claims=es.claims(htu=htu)), url=url)
    assert result.htu == htu  # the proof's own value is reported, not the normalised one


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://sts.example/token", "https://sts.example/token"),
        ("HTTPS://STS.Example:443/token?q=1#f", "https://sts.example/token"),
        ("http://sts.example:80", "http://sts.example/"),
        ("http://sts.example:8080/x", "http://sts.example:8080/x"),
        ("https://sts.example/a/./b/../c", "https://sts.example/a/c"),
        ("https://sts.example/a/b/..", "https://sts.example/a/"),
        ("https://sts.example/a/b/.", "https://sts.example/a/b/"),
        ("https://sts.example/%7e%41%2f%2a", "https://sts.example/~A%2F%2A"),
        ("https://[::1]:8443/x", "https://[::1]:8443/x"),
    ],
)
def test_DPOP_09_normalize_htu(url: str, expected: str) -> None:
    assert normalize_htu(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "",
        "/token",
        "sts.example/token",
        "ftp://sts.example/",
        "https://",
        "https://u:p@sts.example/",
        "https://sts.example/é",
        "https://sts.example/ x",
        "https://sts.example/\t",
        "javascript:alert(1)",
    ],
)
def test_DPOP_09_normalize_htu_refuses_non_http_uris(url: str) -> None:
    with pytest.raises(ValueError):
        normalize_htu(url)


# ---------------------------------------------------------------------------------------------
# DPOP-11 / C-02 iat window (default max_age 60, future_skew 10)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "kwargs"),
    [
        pytest.param(-61, {}, id="-61"),
        pytest.param(+61, {}, id="+61"),
        pytest.param(+11, {}, id="+11"),
        pytest.param(-3600, {}, id="-1h"),
        pytest.param(+3600, {}, id="+1h"),
        pytest.param(-301, {"max_age": 300}, id="-301@300"),
        pytest.param(+301, {"max_age": 300}, id="+301@300"),
        pytest.param(+1, {"future_skew": 0}, id="+1@skew0"),
        pytest.param(-6, {"max_age": 5}, id="-6@5"),
    ],
)
def test_DPOP_11_iat_outside_window_refused(es: Signer, offset: int, kwargs: dict[str, int]) -> None:
    accepted(es, **kwargs)
    refused(es.proof(claims=es.claims(iat=NOW + offset)), **kwargs)


@pytest.mark.parametrize(
    ("offset", "kwargs"),
    [
        pytest.param(-60, {}, id="-60"),
        pytest.param(-10, {}, id="-10"),
        pytest.param(0, {}, id="0"),
        pytest.param(+10, {}, id="+10"),
        pytest.param(+9, {}, id="+9"),
        pytest.param(-300, {"max_age": 300}, id="-300@300"),
        pytest.param(+60, {"future_skew": 60}, id="+60@skew60"),
    ],
)
def test_DPOP_11_iat_inside_window_accepted(es: Signer, offset: int, kwargs: dict[str, int]) -> None:
    assert check(es.proof(claims=es.claims(iat=NOW + offset)), **kwargs).iat == NOW + offset


def test_exp_in_the_past_refused(es: Signer) -> None:
    assert check(es.proof(claims=es.claims(exp=NOW + 60))).jti
    refused(es.proof(claims=es.claims(exp=NOW - 11)))
    refused(es.proof(claims=es.claims(exp=NOW - 3600)))


def test_nbf_in_the_future_refused(es: Signer) -> None:
    assert check(es.proof(claims=es.claims(nbf=NOW))).jti
    refused(es.proof(claims=es.claims(nbf=NOW + 11)))
    refused(es.proof(claims=es.claims(nbf=NOW + 3600)))


@pytest.mark.parametrize("claim", ["exp", "nbf"])
@pytest.mark.parametrize("value", ["9999999999", True, None, -1, [NOW]], ids=repr)
def test_exp_nbf_malformed_refused(es: Signer, claim: str, value: object) -> None:
    accepted(es)
    refused(es.proof(claims=es.claims(**{claim: value})))


# ---------------------------------------------------------------------------------------------
# DPOP-14 ath with an access token
# ---------------------------------------------------------------------------------------------


def test_DPOP_14_compute_ath_rfc9449_vector() -> None:
    assert compute_ath(RFC_ACCESS_TOKEN) == RFC_ATH


def test_DPOP_14_ath_matching_accepted(es: Signer) -> None:
    result = check(es.proof(claims=es.claims(ath=RFC_ATH)), access_token=RFC_ACCESS_TOKEN)
    assert result.ath == RFC_ATH


@pytest.mark.parametrize(
    "ath",
    [
        pytest.param(MISSING, id="missing"),
        pytest.param(compute_ath("another.access.token"), id="other-token"),
        pytest.param(RFC_ATH + "=", id="padded"),
        pytest.param(RFC_ATH.upper(), id="upper"),
        pytest.param("", id="empty"),
        pytest.param(None, id="null"),
        pytest.param(1, id="int"),
        pytest.param([RFC_ATH], id="list"),
        pytest.param(b64u(hashlib.sha384(RFC_ACCESS_TOKEN.encode()).digest()), id="sha384"),
    ],
)
def test_DPOP_14_ath_missing_or_wrong_refused(es: Signer, ath: object) -> None:
    assert check(es.proof(claims=es.claims(ath=RFC_ATH)), access_token=RFC_ACCESS_TOKEN).ath == RFC_ATH
    refused(es.proof(claims=es.claims(ath=ath)), access_token=RFC_ACCESS_TOKEN)


def test_DPOP_03_null_ath_without_an_access_token_refused(es: Signer) -> None:
    """Issue 12 "no 500 on odd JSON types": a present member is read with its type, so ``"ath": null``
    at the token endpoint (no access token to bind) is malformed, not absent. Control: no ``ath``."""
    assert check(es.proof(claims=es.claims(ath=MISSING))).ath is None
    refused(es.proof(claims=es.claims(ath=None)))


# ---------------------------------------------------------------------------------------------
# DPOP-10 nonce claim shape (the nonce value itself is checked by tether.rules.nonce)
# ---------------------------------------------------------------------------------------------


def test_DPOP_10_nonce_returned(es: Signer) -> None:
    assert check(es.proof()).nonce is None
    assert check(es.proof(claims=es.claims(nonce="eyJ7S_zG.eyJH0-Z.HX4w-7v"))).nonce == "eyJ7S_zG.eyJH0-Z.HX4w-7v"


@pytest.mark.parametrize("nonce", [None, 1, True, "", [], {}, "n" * 513], ids=repr)
def test_DPOP_10_malformed_nonce_refused(es: Signer, nonce: object) -> None:
    accepted(es)
    refused(es.proof(claims=es.claims(nonce=nonce)))


# ---------------------------------------------------------------------------------------------
# replay_key (DPOP-12: hashed, bounded)
# ---------------------------------------------------------------------------------------------


def test_DPOP_12_replay_key_hashed_and_distinct() -> None:
    key = replay_key("jkt-a", "jti-1")
    assert key == replay_key("jkt-a", "jti-1")
    assert len(key) == 64 and int(key, 16) >= 0
    assert "jti-1" not in key
    assert len({key, replay_key("jkt-b", "jti-1"), replay_key("jkt-a", "jti-2"), replay_key("jkt-ajti-1", "")}) == 4
    assert len(replay_key("j", "x" * 10_000)) == 64


# ---------------------------------------------------------------------------------------------
# helpers used by the checks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0.0),
        (NOW, float(NOW)),
        (1.5, 1.5),
        (True, None),
        (False, None),
        ("1", None),
        (-1, None),
        (float("inf"), None),
        (float("nan"), None),
        (None, None),
        ([1], None),
        (10**400, None),
        (-(10**400), None),
    ],
    ids=lambda v: repr(v)[:20],
)
def test_numeric_date(value: object, expected: float | None) -> None:
    assert numeric_date(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("dpop+jwt", True),
        ("application/dpop+jwt", True),
        ("DPOP+JWT", True),
        ("jwt", False),
        ("application/", False),
        ("dpop+jwt;x", False),
        (None, False),
        (1, False),
    ],
    ids=repr,
)
def test_is_type(value: object, expected: bool) -> None:
    assert is_type(value, "dpop+jwt") is expected


# ---------------------------------------------------------------------------------------------
# agent side: tether.agent.proof.DPoPKey (DPOP-13, secrets not printed)
# ---------------------------------------------------------------------------------------------


def _claims_of(proof: str) -> dict[str, Any]:
    payload = proof.split(".")[1]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return data


def test_agent_proof_passes_check_proof() -> None:
    key = DPoPKey()
    proof = key.proof("post", "https://sts.example/token?x=1#frag", now=NOW, nonce="n-1", access_token=RFC_ACCESS_TOKEN)
    result = check_proof(proof, method="POST", url="https://sts.example/token?x=1", now=NOW, access_token=RFC_ACCESS_TOKEN)
    assert result.jkt == key.jkt
    assert (result.htm, result.htu, result.iat, result.nonce, result.ath) == ("POST", URL, NOW, "n-1", RFC_ATH)


def test_DPOP_13_agent_jti_has_96_bits_and_is_unique() -> None:
    key = DPoPKey()
    jtis = [_claims_of(key.proof("GET", URL, now=NOW))["jti"] for _ in range(1000)]
    assert len(set(jtis)) == 1000
    for jti in jtis:
        raw = base64.urlsafe_b64decode(jti + "=" * (-len(jti) % 4))
        assert len(raw) * 8 >= 96
    assert len({_claims_of(DPoPKey().proof("GET", URL, now=NOW))["jti"] for _ in range(5)}) == 5


def test_agent_key_repr_hides_private_key() -> None:
    key = DPoPKey()
    d = key._key.as_dict(private=True)["d"]
    assert isinstance(d, str) and len(d) >= 40
    for text in (repr(key), str(key), repr(key.public_jwk), json.dumps(key.public_jwk)):
        assert d not in text
    assert "d" not in key.public_jwk
    assert key.jkt in repr(key)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://a.example/x?q=1#f", "https://a.example/x"),
        ("https://a.example", "https://a.example/"),
        ("https://a.example:8443/p/", "https://a.example:8443/p/"),
    ],
)
def test_agent_htu_of_strips_query_and_fragment(url: str, expected: str) -> None:
    assert htu_of(url) == expected


def test_DPOP_07_an_oversized_jwk_is_parsed_but_not_memoised() -> None:
    # the proof's jwk is parsed before its signature is checked: padding it with extra
    # members must not let a caller fill the memo with large entries
    from tether.rules.dpop import _parse_public_jwk

    _parse_public_jwk.cache_clear()
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = dict(ECKey.import_key(key.public_key()).as_dict(private=False))
    for i in range(10):
        padded = {**jwk, "x-pad": f"{i}" + "p" * 2000}
        assert parse_public_jwk(padded).thumbprint() == ECKey.import_key(jwk).thumbprint()
    assert _parse_public_jwk.cache_info().currsize == 0
    parse_public_jwk(jwk)  # positive control: a plain key is memoised
    assert _parse_public_jwk.cache_info().currsize == 1
