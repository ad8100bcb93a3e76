"""JWT-SVID validation (SPIFFE JWT-SVID §3–§4; SECURITY.md SVID-01..05, JWT-08, JWT-12).

Real keys, real bundles. Every refusal is paired with a positive control built from
the same fixture, so a test cannot pass because the token was broken for some other
reason than the one under test.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from identity_support import DROP, NOW, apply, b64, ec_key, jwks, okp_key, public_jwk, rsa_key, sign_jwt

from tether.identity.checks import MAX_WORKLOAD_JWT, IdentityError
from tether.identity.jwks_cache import FileKeySource, StaticKeySource, parse_jwks
from tether.identity.spiffe import SvidVerifier
from tether.model import IdentityKind, WorkloadIdentity

STS = "https://sts.example"
TD_A = "td-a.example"
TD_B = "td-b.example"
AGENT = f"spiffe://{TD_A}/agent/research"
SVC_B = f"spiffe://{TD_B}/svc/b"

KEY_A_EC = ec_key("a-ec")
KEY_A_RSA = rsa_key("a-rsa")
KEY_A_P384 = ec_key("a-p384", "P-384")
KEY_A_PS = rsa_key("a-ps", alg="PS256")
KEY_A_OKP = okp_key("a-okp")
KEY_B = ec_key("b-ec")
OUTSIDER = ec_key("a-ec")  # same kid as KEY_A_EC, never in any bundle

BUNDLE_A = jwks(KEY_A_EC, KEY_A_RSA, KEY_A_P384, KEY_A_PS, KEY_A_OKP, use="jwt-svid")
BUNDLE_B = jwks(KEY_B, use="jwt-svid")

HEADER = {"alg": "ES256", "kid": "a-ec", "typ": "JWT"}
CLAIMS = {"sub": AGENT, "aud": [STS], "exp": NOW + 300, "iat": NOW, "jti": "svid-1"}


def verifier(**overrides: Any) -> SvidVerifier:
    options: dict[str, Any] = {
        "audiences": [STS, STS + "/token"],
        "max_lifetime": 3600,
        "skew": 10,
        "foreign_issuers": [STS],
    }
    options.update(overrides)
    bundles = {TD_A: StaticKeySource(parse_jwks(BUNDLE_A)), TD_B: StaticKeySource(parse_jwks(BUNDLE_B))}
    return SvidVerifier(bundles, **options)


def svid(header: dict[str, Any] | None = None, key: Any = KEY_A_EC, alg: str | None = None, **claims: Any) -> str:
    return sign_jwt(apply(HEADER, header or {}), apply(CLAIMS, claims), key, alg=alg)


def svid_with(claim: str, value: object) -> str:
    """An SVID with one claim set; ``claim`` names a claim, never one of ``svid``'s own parameters."""
    claims: dict[str, Any] = {claim: value}
    return svid(**claims)


def verify(token: str, *, now: float = NOW, v: SvidVerifier | None = None) -> WorkloadIdentity:
    return asyncio.run((v or verifier()).verify(token, now=now))


def refused(token: str, match: str | None = None, *, now: float = NOW, v: SvidVerifier | None = None) -> IdentityError:
    with pytest.raises(IdentityError, match=match) as info:
        verify(token, now=now, v=v)
    return info.value


# --- accepted SVIDs (positive controls) -------------------------------------------------


@pytest.mark.parametrize(
    ("key", "alg"),
    [(KEY_A_EC, "ES256"), (KEY_A_RSA, "RS256"), (KEY_A_P384, "ES384"), (KEY_A_PS, "PS256")],
    ids=["ES256", "RS256", "ES384", "PS256"],
)
def test_SVID_01_accepted_svid(key: Any, alg: str) -> None:
    token = svid({"alg": alg, "kid": key.kid}, key=key)
    identity = verify(token)
    assert identity.principal == AGENT
    assert identity.kind is IdentityKind.SPIFFE
    assert identity.issuer == f"spiffe://{TD_A}"
    assert identity.exp == NOW + 300
    assert identity.jti == "svid-1"
    assert identity.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert identity.claims["aud"] == [STS]


def test_accepted_svid_of_second_trust_domain() -> None:
    identity = verify(svid({"kid": "b-ec"}, key=KEY_B, sub=SVC_B))
    assert identity.principal == SVC_B
    assert identity.issuer == f"spiffe://{TD_B}"


def test_accepted_svid_from_bundle_file(tmp_path: Path) -> None:
    bundle = tmp_path / "td-a.json"
    bundle.write_text(json.dumps(BUNDLE_A))
    v = SvidVerifier({TD_A: FileKeySource(bundle)}, audiences=[STS], max_lifetime=3600, skew=10)
    assert verify(svid(), v=v).principal == AGENT
    refused(svid({"kid": "b-ec"}, key=KEY_B), "kid", v=v)


# --- sub must be a canonical SPIFFE ID of a configured trust domain (JWT-08) ---------------


@pytest.mark.parametrize(
    "sub",
    [
        "agent/research",
        "https://td-a.example/agent/research",
        "spiffe:td-a.example/agent",
        "SPIFFE://td-a.example/agent/research",
        "spiffe://TD-A.example/agent/research",  # upper-case trust domain
        "spiffe://Td-a.example/agent/research",
        "spiffe://td-a.example/agent/research/",  # trailing slash
        "spiffe://td-a.example/agent/../admin",  # dot-dot segment
        "spiffe://td-a.example/agent/./research",  # dot segment
        "spiffe://td-a.example//agent",  # empty segment
        "spiffe://td-a.example/agent//research",
        "spiffe://td-a.example",  # no path
        "spiffe://td-a.example/",
        "spiffe://td-a.example/agent%2Fresearch",
        "spiffe://td-a.example/agent?x=1",
        "spiffe://td-a.example/agent#frag",
        "spiffe://user@td-a.example/agent",
        "spiffe://td-a.example:443/agent",
        " spiffe://td-a.example/agent",
        "spiffe://td-a.example/agent\n",
        "spiffe://td-a.example/" + "a" * 2048,
        "",
    ],
)
def test_JWT_08_non_canonical_spiffe_id_refused(sub: str) -> None:
    assert verify(svid()).principal == AGENT
    refused(svid(sub=sub), "spiffe id")


@pytest.mark.parametrize("sub", [DROP, None, 42, [AGENT], {"id": AGENT}])
def test_JWT_08_sub_missing_or_not_a_string_refused(sub: Any) -> None:
    assert verify(svid()).principal == AGENT
    refused(svid(sub=sub), "spiffe id")


def test_JWT_08_trust_domain_not_configured_refused() -> None:
    assert verify(svid()).principal == AGENT
    refused(svid(sub="spiffe://td-c.example/agent/research"), "configured trust domain")
    # a parent or child domain name is a different trust domain
    refused(svid(sub="spiffe://example/agent/research"), "configured trust domain")
    refused(svid(sub="spiffe://x.td-a.example/agent/research"), "configured trust domain")


def test_JWT_08_key_of_domain_a_cannot_vouch_for_domain_b() -> None:
    # positive controls: each key vouches for its own domain
    assert verify(svid()).principal == AGENT
    assert verify(svid({"kid": "b-ec"}, key=KEY_B, sub=SVC_B)).principal == SVC_B
    # A's key, A's kid, B's SPIFFE ID: B's bundle has no such kid
    refused(svid(key=KEY_A_EC, sub=SVC_B), "kid")
    # A's key presented under B's kid: B's key does not verify the signature
    refused(svid({"kid": "b-ec"}, key=KEY_A_EC, sub=SVC_B), "signature")
    # B's key under A's kid for an A SPIFFE ID
    refused(svid({"kid": "a-ec"}, key=KEY_B), "signature")


def test_JWT_08_key_with_same_kid_outside_bundle_refused() -> None:
    assert verify(svid(key=KEY_A_EC)).principal == AGENT
    refused(svid(key=OUTSIDER), "signature")


# --- SVID-01: only RS/ES/PS algorithms -----------------------------------------------------


def test_SVID_01_hs256_refused() -> None:
    assert verify(svid()).principal == AGENT
    # HMAC keyed with the public key in two encodings (attack A-02)
    for secret in (json.dumps(public_jwk(KEY_A_EC)).encode(), KEY_A_EC.as_pem(private=False)):
        token = sign_jwt(apply(HEADER, {"alg": "HS256"}), CLAIMS, secret=secret)
        refused(token, "algorithm `HS256` not allowed")


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_SVID_01_none_refused(alg: str) -> None:
    assert verify(svid()).principal == AGENT
    header = apply(HEADER, {"alg": alg})
    # empty signature: not even a compact JWS with three non-empty parts
    refused(sign_jwt(header, CLAIMS, alg="none"))
    # a real ES256 signature appended under alg none
    refused(sign_jwt(header, CLAIMS, KEY_A_EC, alg="ES256"), "algorithm")


def test_SVID_01_eddsa_refused_even_with_bundle_key() -> None:
    assert verify(svid()).principal == AGENT
    refused(svid({"alg": "EdDSA", "kid": "a-okp"}, key=KEY_A_OKP), "algorithm `EdDSA` not allowed")


@pytest.mark.parametrize(
    ("header", "key", "alg", "own_alg"),
    [
        ({"alg": "RS256", "kid": "a-ec"}, KEY_A_RSA, "RS256", "ES256"),  # RS256 naming an EC key
        ({"alg": "ES384", "kid": "a-ec"}, KEY_A_P384, "ES384", "ES256"),  # ES384 for a P-256 key
        ({"alg": "PS256", "kid": "a-rsa"}, KEY_A_RSA, "PS256", "RS256"),  # PS256 on an RS256 key
        ({"alg": "RS256", "kid": "a-ps"}, KEY_A_PS, "RS256", "PS256"),  # RS256 on a key declared PS256
    ],
    ids=["rs-on-ec", "es384-on-p256", "ps-on-rs-key", "rs-on-ps-key"],
)
def test_SVID_01_alg_must_match_the_key(header: dict[str, Any], key: Any, alg: str, own_alg: str) -> None:
    """JWT-01: one key, one algorithm; the kid's key fixes the algorithm (attack A-03)."""
    own_key = {"a-ec": KEY_A_EC, "a-rsa": KEY_A_RSA, "a-ps": KEY_A_PS}[header["kid"]]
    assert verify(svid({"alg": own_alg, "kid": header["kid"]}, key=own_key)).principal == AGENT
    refused(svid(header, key=key, alg=alg), "does not match the key")


def test_SVID_01_alg_compared_case_sensitively() -> None:
    assert verify(svid()).principal == AGENT
    refused(svid({"alg": "es256"}, alg="ES256"), "algorithm")


# --- SVID-02: only alg, kid, typ headers; compact JWS only -----------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("jku", "https://attacker.example/jwks"),
        ("x5u", "https://attacker.example/cert.pem"),
        ("jwk", None),
        ("crit", ["b64"]),
        ("b64", False),
        ("x5c", ["MIIB"]),
        ("x5t", "abc"),
        ("cty", "JWT"),
        ("zip", "DEF"),
        ("enc", "A256GCM"),
    ],
)
def test_SVID_02_extra_header_refused(name: str, value: Any) -> None:
    assert verify(svid()).principal == AGENT
    if name == "jwk":
        value = public_jwk(OUTSIDER)
    refused(svid({name: value}), f"header parameter `{name}` not allowed")


def test_ASVS_9_1_3_jwk_header_cannot_supply_the_key() -> None:
    # the key carried in the token is never used, even with a kid the bundle does not know
    assert verify(svid()).principal == AGENT
    refused(svid({"kid": DROP, "jwk": public_jwk(OUTSIDER)}, key=OUTSIDER), "header parameter `jwk` not allowed")


def test_SVID_02_duplicate_header_member_refused() -> None:
    assert verify(svid()).principal == AGENT
    raw = '{"alg":"ES256","kid":"a-ec","typ":"JWT","alg":"ES256"}'
    refused(sign_jwt(raw, CLAIMS, KEY_A_EC, alg="ES256"), "duplicate")


def test_SVID_02_json_serialization_refused() -> None:
    token = svid()
    assert verify(token).principal == AGENT
    protected, payload, signature = token.split(".")
    general = json.dumps({"payload": payload, "protected": protected, "signature": signature})
    refused(general)
    refused(token + ".")
    refused(token.rsplit(".", 1)[0] + ".")


def test_SVID_02_tampered_payload_refused() -> None:
    token = svid()
    assert verify(token).principal == AGENT
    protected, _, signature = token.split(".")
    forged = b64(json.dumps(apply(CLAIMS, {"sub": f"spiffe://{TD_A}/admin"})).encode())
    refused(f"{protected}.{forged}.{signature}", "signature")


def test_oversized_svid_refused() -> None:
    assert verify(svid(pad="x" * 1000)).principal == AGENT
    refused(svid(pad="x" * MAX_WORKLOAD_JWT), "too large")


# --- SVID-03: aud present and ours; exp present and near ----------------------------------


def test_SVID_03_aud_missing_refused() -> None:
    assert verify(svid()).principal == AGENT
    refused(svid(aud=DROP), "aud missing")


@pytest.mark.parametrize("aud", [[], "", None, 7, [7], [STS, 7], {"aud": STS}])
def test_SVID_03_aud_malformed_refused(aud: Any) -> None:
    assert verify(svid()).principal == AGENT
    refused(svid(aud=aud), "aud")


@pytest.mark.parametrize(
    "aud",
    [["https://other.example"], "https://other.example", [STS + "/"], ["https://STS.example"], [STS + "/introspect"]],
)
def test_SVID_03_aud_not_ours_refused(aud: Any) -> None:
    assert verify(svid()).principal == AGENT
    refused(svid(aud=aud), "aud does not name")


@pytest.mark.parametrize("aud", [[STS], STS, [STS + "/token"], ["https://other.example", STS]])
def test_SVID_03_aud_naming_us_accepted(aud: Any) -> None:
    assert verify(svid(aud=aud)).claims["aud"] == aud


def test_SVID_03_exp_missing_refused() -> None:
    assert verify(svid()).principal == AGENT
    refused(svid(exp=DROP), "exp missing")


@pytest.mark.parametrize("exp", [str(NOW + 300), True, None, -1, [NOW + 300], float("inf")])
def test_SVID_03_exp_not_a_numeric_date_refused(exp: Any) -> None:
    assert verify(svid()).principal == AGENT
    if exp == float("inf"):
        token = sign_jwt(HEADER, json.dumps(CLAIMS).replace(str(NOW + 300), "1e400"), KEY_A_EC)
    else:
        token = svid(exp=exp)
    # 1e400 is refused where the claims are parsed (a number a double cannot hold), before `exp` is read
    refused(token, "out of range" if exp == float("inf") else "exp")


def test_SVID_03_expired_refused() -> None:
    # skew is 10 s: exp = now - 9 still inside the allowance, exp = now - 10 is not
    assert verify(svid(exp=NOW - 9, iat=NOW - 100)).exp == NOW - 9
    refused(svid(exp=NOW - 10, iat=NOW - 100), "expired")
    refused(svid(exp=NOW - 3600, iat=NOW - 4000), "expired")


def test_SVID_03_exp_further_than_max_lifetime_refused() -> None:
    assert verify(svid(exp=NOW + 3600)).exp == NOW + 3600
    refused(svid(exp=NOW + 3601), "more than 3600s away")
    refused(svid(exp=NOW + 10 * 365 * 86400), "more than 3600s away")


def test_SVID_03_exp_float_accepted() -> None:
    assert verify(svid(exp=NOW + 300.5)).exp == NOW + 300


# --- SVID-04 / JWT-12: typ absent, JWT or JOSE; never one of tether's own types -------------


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT", "dpop+jwt", "application/dpop+jwt"])
def test_SVID_04_JWT_12_tether_token_types_refused(typ: str) -> None:
    assert verify(svid()).principal == AGENT
    refused(svid({"typ": typ}), "typ")


@pytest.mark.parametrize("typ", ["secevent+jwt", "JWS", "", 1, ["JWT"], None, {"typ": "JWT"}])
def test_SVID_04_other_typ_refused(typ: Any) -> None:
    assert verify(svid()).principal == AGENT
    refused(svid({"typ": typ}), "typ")


@pytest.mark.parametrize("typ", ["JWT", "JOSE", DROP])
def test_SVID_04_typ_jwt_jose_or_absent_accepted(typ: Any) -> None:
    assert verify(svid({"typ": typ})).principal == AGENT


# --- JWT-12: an SVID claiming tether as issuer is not an SVID --------------------------------


def test_JWT_12_svid_with_tether_issuer_refused() -> None:
    assert verify(svid(iss=f"spiffe://{TD_A}")).principal == AGENT
    refused(svid(iss=STS), "issued by tether")


@pytest.mark.parametrize("iss", [None, True, 7, 1.5, "", [STS], {"iss": STS}, [{"a": [None]}]], ids=repr)
def test_JWT_12_iss_of_another_json_type_refused_not_crashing(iss: Any) -> None:
    """Issue 12 "no 500 on odd JSON types": ``iss`` is optional in a JWT-SVID, but when present it is a
    string; a list or object here reached a set lookup (unhashable: 500 at the STS). Control: absent."""
    assert verify(svid(iss=DROP)).principal == AGENT
    refused(svid(iss=iss), "iss malformed")


# --- key lookup ----------------------------------------------------------------------------


def test_unknown_kid_refused() -> None:
    assert verify(svid()).principal == AGENT
    refused(svid({"kid": "rotated-away"}), "kid")
    refused(svid({"kid": 7}), "kid")


def test_missing_kid_with_several_bundle_keys_refused() -> None:
    assert verify(svid()).principal == AGENT
    refused(svid({"kid": DROP}), "kid")


# --- iat / nbf ---------------------------------------------------------------------------


@pytest.mark.parametrize("claim", ["iat", "nbf"])
def test_iat_nbf_in_the_future_refused(claim: str) -> None:
    assert verify(svid_with(claim, NOW + 10)).principal == AGENT  # within the 10 s skew
    refused(svid_with(claim, NOW + 11), f"{claim} is in the future")
    refused(svid_with(claim, NOW + 61), f"{claim} is in the future")


@pytest.mark.parametrize("claim", ["iat", "nbf"])
def test_iat_nbf_not_numeric_refused(claim: str) -> None:
    assert verify(svid_with(claim, NOW)).principal == AGENT
    refused(svid_with(claim, str(NOW)), f"{claim} is not a numeric date")
    refused(svid_with(claim, True), f"{claim} is not a numeric date")


# --- SVID-05: jti is optional, returned when present ------------------------------------------


def test_SVID_05_jti_returned_when_present() -> None:
    assert verify(svid(jti="abc-123")).jti == "abc-123"
    assert verify(svid(jti=DROP)).jti is None


@pytest.mark.parametrize("jti", ["", 5, "x" * 257, ["a"], None, {"jti": "a"}])
def test_SVID_05_malformed_jti_refused(jti: Any) -> None:
    assert verify(svid(jti="x" * 256)).jti == "x" * 256
    refused(svid(jti=jti), "jti malformed")


# --- handles() routes by trust domain of sub ---------------------------------------------------


def test_handles_only_configured_trust_domains() -> None:
    v = verifier()
    assert v.handles({"sub": AGENT})
    assert v.handles({"sub": SVC_B})
    assert not v.handles({"sub": "spiffe://td-c.example/agent"})
    assert not v.handles({"sub": "spiffe://TD-A.example/agent"})
    assert not v.handles({"sub": 5})
    assert not v.handles({})


def test_bundle_file_rotation_trusts_new_key_only(tmp_path: Path) -> None:
    bundle = tmp_path / "td-a.json"
    bundle.write_text(json.dumps(jwks(KEY_A_EC, use="jwt-svid")))
    os.utime(bundle, ns=(1_000_000_000, 1_000_000_000))
    v = SvidVerifier({TD_A: FileKeySource(bundle)}, audiences=[STS], max_lifetime=3600, skew=10)
    new_key = ec_key("a-ec-2")
    assert verify(svid(), v=v).principal == AGENT
    refused(svid({"kid": "a-ec-2"}, key=new_key), "kid", v=v)
    bundle.write_text(json.dumps(jwks(new_key, use="jwt-svid")))
    os.utime(bundle, ns=(2_000_000_000, 2_000_000_000))
    assert verify(svid({"kid": "a-ec-2"}, key=new_key), v=v).principal == AGENT
    refused(svid(), "kid", v=v)
