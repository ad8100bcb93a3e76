"""RFC 9068 access-token claims (``tether.rules.claims``): SECURITY.md AUX-01, JWT-09/11/12, C-01..03, TX-05.

``check_access_token_claims`` is pure over (header, claims, now), so most rows pass dicts; the
``verify_access_token`` rows sign real ES256 tokens with joserfc. Each negative test first
checks that the unchanged claim set on the same fixture is accepted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc.jwk import ECKey

from tether.errors import InvalidDPoPProof, InvalidToken
from tether.model import AccessToken
from tether.rules.claims import (
    MAX_ACCESS_TOKEN,
    MAX_ACT_DEPTH,
    Expected,
    Grant,
    build_claims,
    check_access_token_claims,
    verify_access_token,
)
from tether.rules.dpop import check_proof
from tether.rules.jws import JWSError, PublicKey, sign_compact

NOW = 1_700_000_000
ISS = "https://sts.example"
AUD = "https://api.example"
AGENT = "spiffe://example.org/agent/research"
SVC_B = "spiffe://example.org/svc/b"
JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
HEADER = {"typ": "at+jwt", "alg": "ES256", "kid": "k1"}
MISSING = object()
SKEW = 10
MAX_LIFETIME = 900


X5T = "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISS,
        "sub": AGENT,
        "aud": AUD,
        "exp": NOW + 300,
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "jti": "jti-1",
        "client_id": AGENT,
        "scope": "wiki:read wiki:write",
        "cnf": {"jkt": JKT},
        "agt": AGENT,
        "txn": "task-1",
    }
    for name, value in changes.items():
        if value is MISSING:
            base.pop(name, None)
        else:
            base[name] = value
    return base


def check(c: Mapping[str, Any], header: Mapping[str, Any] = HEADER, **kwargs: Any) -> AccessToken:
    now = kwargs.pop("now", NOW)
    return check_access_token_claims(header, c, _expected(**kwargs), now=now)


def _expected(**kwargs: Any) -> Expected:
    return Expected(**{"issuer": ISS, "audience": AUD, "skew": SKEW, "max_lifetime": MAX_LIFETIME, **kwargs})


def refused(c: Mapping[str, Any], header: Mapping[str, Any] = HEADER, **kwargs: Any) -> InvalidToken:
    # positive control on the same fixture: the unchanged claims pass with the same settings
    check(claims(), **kwargs)
    with pytest.raises(InvalidToken) as info:
        check(c, header, **kwargs)
    assert type(info.value) is InvalidToken
    assert info.value.error == "invalid_token"
    return info.value


def test_valid_claims_parsed() -> None:
    token = check(claims())
    assert token == AccessToken(
        iss=ISS,
        sub=AGENT,
        aud=AUD,
        exp=NOW + 300,
        iat=NOW - 10,
        nbf=NOW - 10,
        jti="jti-1",
        client_id=AGENT,
        scope=frozenset({"wiki:read", "wiki:write"}),
        txn="task-1",
        jkt=JKT,
        agent=AGENT,
        actors=(),
        purp=None,
    )


# ---------------------------------------------------------------------------------------------
# AUX-01 / JWT-11 / JWT-12 typ
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT", "Application/At+Jwt"])
def test_AUX_01_typ_at_jwt_accepted(typ: str) -> None:
    assert check(claims(), {**HEADER, "typ": typ}).sub == AGENT


@pytest.mark.parametrize(
    "typ",
    [
        "JWT",
        "jwt",
        "dpop+jwt",
        "application/jwt",
        "JOSE",
        "secevent+jwt",
        "at+jwt ",
        "at",
        "application/at+jwt; x",
        "",
        None,
        1,
        True,
        ["at+jwt"],
        MISSING,
    ],
    ids=lambda v: "missing" if v is MISSING else repr(v),
)
def test_AUX_01_JWT_12_other_typ_refused(typ: object) -> None:
    header = {k: v for k, v in HEADER.items() if k != "typ"} if typ is MISSING else {**HEADER, "typ": typ}
    refused(claims(), header)


# ---------------------------------------------------------------------------------------------
# AUX-01 iss exact match (PyJWT CVE-2024-53861)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("issuer", "iss"),
    [
        pytest.param(ISS, ISS + "/", id="trailing-slash"),
        pytest.param(ISS + "/", ISS, id="issuer-has-slash"),
        pytest.param(ISS, "https://sts.example.evil", id="superstring-host"),
        pytest.param(ISS, "https://sts.exampl", id="prefix"),
        pytest.param(ISS, "https://sts", id="shorter-prefix"),
        pytest.param(ISS, "sts.example", id="substring"),
        pytest.param(ISS, "https://sts.example/tenant", id="path-superstring"),
        pytest.param(ISS, "xhttps://sts.examplex", id="wrapped"),
        pytest.param("_" + ISS + "_", ISS, id="contained-in-issuer"),
        pytest.param(ISS, "HTTPS://STS.EXAMPLE", id="case"),
        pytest.param(ISS, " " + ISS, id="leading-space"),
        pytest.param(ISS, ISS + " ", id="trailing-space"),
        pytest.param(ISS, [ISS], id="list"),
        pytest.param(ISS, {"iss": ISS}, id="object"),
        pytest.param(ISS, "", id="empty"),
        pytest.param(ISS, None, id="null"),
        pytest.param(ISS, MISSING, id="missing"),
    ],
)
def test_AUX_01_iss_exact_match(issuer: str, iss: object) -> None:
    check(claims(iss=issuer), issuer=issuer)
    with pytest.raises(InvalidToken) as info:
        check(claims(iss=iss), issuer=issuer)
    assert info.value.error == "invalid_token"


# ---------------------------------------------------------------------------------------------
# JWT-09 / BCP-07 aud: one audience, ours
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "aud",
    [
        pytest.param(AUD + "/", id="trailing-slash"),
        pytest.param("https://api.example.evil", id="superstring"),
        pytest.param("https://other.example", id="other"),
        pytest.param([AUD], id="list-of-one"),
        pytest.param([AUD, "https://other.example"], id="list-of-two"),
        pytest.param([], id="empty-list"),
        pytest.param("", id="empty"),
        pytest.param(None, id="null"),
        pytest.param(1, id="int"),
        pytest.param(MISSING, id="missing"),
    ],
)
def test_JWT_09_aud_mismatch_refused(aud: object) -> None:
    refused(claims(aud=aud))


def test_JWT_09_audience_none_leaves_aud_to_caller_but_still_one_string() -> None:
    assert check(claims(aud="https://any.example"), audience=None).aud == "https://any.example"
    assert check(claims(aud=ISS), audience=None).aud == ISS
    for aud in ([AUD], None, "", 5):
        with pytest.raises(InvalidToken):
            check(claims(aud=aud), audience=None)


# ---------------------------------------------------------------------------------------------
# C-01 exp edges (skew 10)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exp", "skew"),
    [
        pytest.param(MISSING, SKEW, id="missing"),
        pytest.param(None, SKEW, id="null"),
        pytest.param(NOW - 1, 0, id="now-1@skew0"),
        pytest.param(NOW, 0, id="now@skew0"),
        pytest.param(NOW - SKEW - 1, SKEW, id="now-skew-1"),
        pytest.param(NOW - SKEW, SKEW, id="now-skew"),
        pytest.param(NOW - 3600, SKEW, id="now-1h"),
        pytest.param("9999999999", SKEW, id="string-9999999999"),
        pytest.param(str(NOW + 300), SKEW, id="numeric-string"),
        pytest.param(True, SKEW, id="true"),
        pytest.param(False, SKEW, id="false"),
        pytest.param(-1, SKEW, id="negative"),
        pytest.param(-(NOW + 300), SKEW, id="negative-future"),
        pytest.param(0, SKEW, id="zero"),
        pytest.param([NOW + 300], SKEW, id="list"),
        pytest.param({"exp": NOW + 300}, SKEW, id="object"),
    ],
)
def test_C_01_exp_refused(exp: object, skew: int) -> None:
    refused(claims(exp=exp), skew=skew)


@pytest.mark.parametrize(
    ("exp", "skew"),
    [
        pytest.param(NOW + 300, SKEW, id="now+300"),
        pytest.param(NOW + 1, 0, id="now+1@skew0"),
        pytest.param(NOW - 1, SKEW, id="now-1-within-skew"),
        pytest.param(NOW - SKEW + 1, SKEW, id="now-skew+1"),
        pytest.param(NOW + 300.5, SKEW, id="float"),
        pytest.param(float(NOW + 60), SKEW, id="float-integral"),
    ],
)
def test_C_01_exp_accepted(exp: float, skew: int) -> None:
    assert check(claims(exp=exp), skew=skew).exp == int(exp)


# ---------------------------------------------------------------------------------------------
# C-02 nbf / iat in the future (skew 10: accept +10, refuse +11 and +61)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("claim", ["nbf", "iat"])
@pytest.mark.parametrize("offset", [SKEW + 1, 61, 3600])
def test_C_02_future_nbf_iat_refused(claim: str, offset: int) -> None:
    refused(claims(**{claim: NOW + offset}))


@pytest.mark.parametrize("claim", ["nbf", "iat"])
@pytest.mark.parametrize("offset", [SKEW - 1, SKEW, 0, -100])
def test_C_02_nbf_iat_within_skew_accepted(claim: str, offset: int) -> None:
    token = check(claims(**{claim: NOW + offset}))
    assert getattr(token, claim) == NOW + offset


def test_C_02_missing_nbf_defaults_to_iat() -> None:
    assert check(claims(nbf=MISSING)).nbf == NOW - 10
    refused(claims(nbf=MISSING, iat=NOW + SKEW + 1))


_BAD_DATES = [None, "1700000000", True, -5, [NOW]]


@pytest.mark.parametrize(
    ("claim", "value"),
    [("iat", MISSING)] + [(c, v) for c in ("iat", "nbf") for v in _BAD_DATES],
    ids=lambda v: "missing" if v is MISSING else repr(v),
)
def test_C_01_malformed_nbf_iat_refused(claim: str, value: object) -> None:
    refused(claims(**{claim: value}))


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("value", [10**400, -(10**400)], ids=["huge", "huge-negative"])
def test_C_01_huge_integer_date_refused_not_crashing(claim: str, value: int) -> None:
    """A JSON integer too large for a float is a malformed NumericDate: ``invalid_token``, never a 5xx."""
    refused(claims(**{claim: value}))


# ---------------------------------------------------------------------------------------------
# C-03 lifetime cap
# ---------------------------------------------------------------------------------------------


def test_C_03_lifetime_at_cap_accepted() -> None:
    assert check(claims(iat=NOW, nbf=NOW, exp=NOW + MAX_LIFETIME)).exp == NOW + MAX_LIFETIME


@pytest.mark.parametrize(
    ("iat", "exp"),
    [
        pytest.param(NOW, NOW + MAX_LIFETIME + 1, id="cap+1"),
        pytest.param(NOW, 9_999_999_999, id="far-future"),
        pytest.param(NOW - 3600, NOW + 60, id="old-iat"),
        pytest.param(0, NOW + 60, id="iat-epoch"),
    ],
)
def test_C_03_lifetime_over_cap_refused(iat: int, exp: int) -> None:
    refused(claims(iat=iat, nbf=NOW, exp=exp))


# ---------------------------------------------------------------------------------------------
# cnf (RFC 9449 §6.1): only ``jkt``, exactly
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cnf",
    [
        pytest.param({"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg"}, id="x5t-short"),
        pytest.param({"x5t#S256": X5T + "="}, id="x5t-padded"),
        pytest.param({"x5t#S256": None}, id="x5t-null"),
        pytest.param({"jkt": JKT, "x5t#S256": X5T, "x5t": "abc"}, id="x5t-sha1-member"),
        pytest.param({"jkt": JKT, "x5t#S256": 1}, id="jkt-and-x5t-int"),
        pytest.param({"jkt": JKT, "extra": 1}, id="extra-member"),
        pytest.param({"jkt": JKT, "jwk": {"kty": "EC"}}, id="jkt-and-jwk"),
        pytest.param({"jwk": {"kty": "EC", "crv": "P-256"}}, id="jwk"),
        pytest.param({"kid": "k1"}, id="kid"),
        pytest.param({}, id="empty"),
        pytest.param({"jkt": 1}, id="jkt-int"),
        pytest.param({"jkt": None}, id="jkt-null"),
        pytest.param({"jkt": [JKT]}, id="jkt-list"),
        pytest.param({"jkt": ""}, id="jkt-empty"),
        pytest.param(JKT, id="string"),
        pytest.param([JKT], id="list"),
        pytest.param(1, id="int"),
    ],
)
def test_cnf_malformed_refused(cnf: object) -> None:
    refused(claims(cnf=cnf))


def test_cnf_absent_means_unbound() -> None:
    token = check(claims(cnf=MISSING))
    assert (token.jkt, token.x5t, token.bindings) == (None, None, "none")


@pytest.mark.parametrize(
    ("cnf", "bindings"),
    [
        pytest.param({"x5t#S256": X5T}, "mtls", id="x5t-alone"),
        pytest.param({"jkt": JKT, "x5t#S256": X5T}, "dpop+mtls", id="jkt-and-x5t"),
        pytest.param({"jkt": JKT}, "dpop", id="jkt-alone"),
    ],
)
def test_MTLS_cnf_x5t_read_with_or_instead_of_jkt(cnf: dict[str, str], bindings: str) -> None:
    """RFC 8705 §3.1: ``cnf.x5t#S256`` beside or instead of RFC 9449 ``cnf.jkt``."""
    token = check(claims(cnf=cnf))
    assert (token.jkt, token.x5t, token.bindings) == (cnf.get("jkt"), cnf.get("x5t#S256"), bindings)


# ---------------------------------------------------------------------------------------------
# act (RFC 8693 §4.1): nested, bounded depth
# ---------------------------------------------------------------------------------------------


def _act(depth: int) -> dict[str, Any] | None:
    act: dict[str, Any] | None = None
    for i in reversed(range(depth)):
        act = {"sub": f"spiffe://example.org/svc/{i}", **({"act": act} if act else {})}
    return act


@pytest.mark.parametrize("depth", [1, 2, MAX_ACT_DEPTH])
def test_TX_05_act_chain_parsed_newest_first(depth: int) -> None:
    token = check(claims(act=_act(depth)))
    assert token.actors == tuple(f"spiffe://example.org/svc/{i}" for i in range(depth))
    assert token.current_actor == "spiffe://example.org/svc/0"
    assert token.depth == depth


@pytest.mark.parametrize("depth", [MAX_ACT_DEPTH + 1, 20])
def test_act_too_deep_refused(depth: int) -> None:
    check(claims(act=_act(MAX_ACT_DEPTH)))
    refused(claims(act=_act(depth)))


@pytest.mark.parametrize(
    "act",
    [
        SVC_B,
        [SVC_B],
        1,
        True,
        {},
        {"sub": 1},
        {"sub": ""},
        {"sub": None},
        {"sub": SVC_B, "extra": 1},
        {"sub": SVC_B, "act": SVC_B},
        {"sub": SVC_B, "act": {}},
        {"sub": SVC_B, "act": {"sub": 2}},
        {"act": {"sub": SVC_B}},
        {"sub": "not a principal"},
        {"sub": "svc-b"},
        {"sub": "spiffe://Example.org/svc/b"},
        {"sub": SVC_B, "act": [AGENT]},
    ],
    ids=repr,
)
def test_act_malformed_refused(act: object) -> None:
    refused(claims(act=act))


@pytest.mark.parametrize("act", [None, {"sub": SVC_B, "act": None}], ids=repr)
def test_act_null_is_malformed_not_absent(act: object) -> None:
    """Issue 12 "no 500 on odd JSON types": a present ``act`` (at any level) is an object; ``null`` is
    a wrong-typed member, not a missing one. Control: the same chain without the member is accepted."""
    assert check(claims(act=MISSING)).actors == ()
    assert check(claims(act={"sub": SVC_B})).actors == (SVC_B,)
    refused(claims(act=act))


@pytest.mark.parametrize(("claim", "value"), [("txn", None), ("purp", None), ("cnf", None), ("cnf", {"jkt": None})], ids=repr)
def test_optional_claim_null_is_malformed_not_absent(claim: str, value: object) -> None:
    """``"txn": null`` is not a token without ``txn``: the control without the member is accepted."""
    check(claims(**{claim: MISSING}))
    refused(claims(**{claim: value}))


# ---------------------------------------------------------------------------------------------
# remaining claims
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("sub", MISSING),
        ("sub", ""),
        ("sub", 1),
        ("sub", "alice"),
        ("sub", "spiffe://example.org"),
        ("sub", "user:al ice"),
        ("client_id", MISSING),
        ("client_id", "not a principal"),
        ("client_id", ["x"]),
        ("agt", MISSING),
        ("agt", ""),
        ("agt", "spiffe://example.org/a/../b"),
        ("jti", MISSING),
        ("jti", ""),
        ("jti", 7),
        ("jti", "j" * 129),
        ("scope", 1),
        ("scope", ["wiki:read"]),
        ("scope", "wiki:read  wiki:write"),
        ("scope", " wiki:read"),
        ("scope", 'a"b'),
        ("txn", 1),
        ("txn", ""),
        ("txn", "t" * 129),
        ("purp", 1),
        ("purp", "p" * 513),
    ],
    ids=lambda v: "missing" if v is MISSING else repr(v)[:24],
)
def test_claim_malformed_refused(claim: str, value: object) -> None:
    refused(claims(**{claim: value}))


def test_optional_claims_absent() -> None:
    token = check(claims(txn=MISSING, scope=MISSING, purp=MISSING))
    assert (token.txn, token.scope, token.purp) == (None, frozenset(), None)
    assert check(claims(jti="j" * 128, purp="p" * 512)).purp == "p" * 512


_JSON_LEAF = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_JSON = st.recursive(
    _JSON_LEAF,
    lambda c: (
        st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["sub", "act", "jkt"]) | st.text(max_size=5), c, max_size=3)
    ),
    max_leaves=8,
)
_CLAIM_NAMES = ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id", "scope", "cnf", "act", "agt", "txn", "purp"]


@settings(max_examples=300, deadline=None)
@given(claim=st.sampled_from(_CLAIM_NAMES), value=_JSON)
def test_any_claim_value_is_refused_cleanly(claim: str, value: object) -> None:
    """Whatever JSON sits in a claim, the outcome is a parsed token or ``invalid_token``, never another exception."""
    try:
        check(claims(**{claim: value}))
    except InvalidToken as exc:
        assert exc.error == "invalid_token"


# ---------------------------------------------------------------------------------------------
# build_claims round trip
# ---------------------------------------------------------------------------------------------


def _grant(**changes: Any) -> Grant:
    base: dict[str, Any] = {
        "sub": "user:alice",
        "aud": AUD,
        "scope": frozenset({"wiki:read"}),
        "exp": NOW + 300,
        "client_id": SVC_B,
        "agent": AGENT,
        "jkt": JKT,
        "txn": "task-1",
        "actors": (SVC_B, AGENT),
        "purp": "summarise the wiki",
    }
    base.update(changes)
    return Grant(**base)


def test_build_claims_shape() -> None:
    c = build_claims(_grant(), issuer=ISS, jti="jti-9", now=NOW)
    assert c == {
        "iss": ISS,
        "sub": "user:alice",
        "aud": AUD,
        "exp": NOW + 300,
        "iat": NOW,
        "nbf": NOW,
        "jti": "jti-9",
        "client_id": SVC_B,
        "scope": "wiki:read",
        "cnf": {"jkt": JKT},
        "agt": AGENT,
        "ckd": "unknown",
        "akd": "unknown",
        "txn": "task-1",
        "act": {"sub": SVC_B, "act": {"sub": AGENT}},
        "purp": "summarise the wiki",
    }
    bare = build_claims(_grant(txn=None, actors=(), purp=None), issuer=ISS, jti="j", now=NOW)
    assert not {"txn", "act", "purp"} & set(bare)


def _assert_round_trip(grant: Grant, token: AccessToken) -> None:
    assert (
        token.sub,
        token.aud,
        token.exp,
        token.scope,
        token.client_id,
        token.agent,
        token.jkt,
        token.txn,
        token.actors,
        token.purp,
    ) == (
        grant.sub,
        grant.aud,
        grant.exp,
        grant.scope,
        grant.client_id,
        grant.agent,
        grant.jkt,
        grant.txn,
        grant.actors,
        grant.purp,
    )


def test_build_claims_round_trips_through_check() -> None:
    grant = _grant()
    token = check(build_claims(grant, issuer=ISS, jti="jti-9", now=NOW))
    _assert_round_trip(grant, token)
    assert (token.iat, token.nbf, token.jti, token.iss) == (NOW, NOW, "jti-9", ISS)


_principals = st.sampled_from([f"spiffe://example.org/svc/{n}" for n in "abcdefgh"] + ["user:alice", "k8s:ns:sa"])
_scopes = st.frozensets(st.sampled_from(["wiki:read", "wiki:write", "mail:send", "a", "B", "x:y/z"]), max_size=6)


@settings(max_examples=60, deadline=None)
@given(
    sub=_principals,
    agent=_principals,
    actors=st.lists(_principals, max_size=MAX_ACT_DEPTH, unique=True).map(tuple),
    scope=_scopes,
    ttl=st.integers(min_value=1, max_value=MAX_LIFETIME),
    txn=st.one_of(st.none(), st.text("abcdef0123456789-", min_size=1, max_size=36)),
    purp=st.one_of(st.none(), st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=64)),
)
def test_build_claims_round_trip_property(
    sub: str, agent: str, actors: tuple[str, ...], scope: frozenset[str], ttl: int, txn: str | None, purp: str | None
) -> None:
    grant = _grant(
        sub=sub,
        agent=agent,
        client_id=actors[0] if actors else agent,
        actors=actors,
        scope=scope,
        exp=NOW + ttl,
        txn=txn,
        purp=purp,
    )
    _assert_round_trip(grant, check(build_claims(grant, issuer=ISS, jti="j", now=NOW)))


# ---------------------------------------------------------------------------------------------
# verify_access_token: signature, JOSE gate and claims together
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signing_key() -> ECKey:
    return ECKey.generate_key("P-256", private=True)


@pytest.fixture(scope="module")
def public_key(signing_key: ECKey) -> PublicKey:
    return ECKey.import_key(dict(signing_key.as_dict(private=False)))


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _sign(signing_key: ECKey, c: Mapping[str, Any], header: Mapping[str, Any] = HEADER) -> str:
    return sign_compact(header, c, signing_key, "ES256")


def verify(token: str, public_key: PublicKey, **kwargs: Any) -> AccessToken:
    def resolve(header: Mapping[str, Any]) -> PublicKey:
        if header.get("kid") != "k1":
            raise JWSError("unknown kid")
        return public_key

    now = kwargs.pop("now", NOW)
    return verify_access_token(token, _expected(**kwargs), resolve_key=resolve, algorithms=("ES256",), now=now)


def verify_refused(token: str, signing_key: ECKey, public_key: PublicKey) -> InvalidToken:
    assert verify(_sign(signing_key, claims()), public_key).jti == "jti-1"
    with pytest.raises(InvalidToken) as info:
        verify(token, public_key)
    assert type(info.value) is InvalidToken
    assert info.value.error == "invalid_token"
    return info.value


def test_verify_access_token_round_trip(signing_key: ECKey, public_key: PublicKey) -> None:
    grant = _grant()
    token = verify(_sign(signing_key, build_claims(grant, issuer=ISS, jti="jti-7", now=NOW)), public_key)
    _assert_round_trip(grant, token)


@pytest.mark.parametrize("typ", ["JWT", "dpop+jwt", "id_token+jwt"])
def test_JWT_12_other_kind_of_jwt_from_same_key_refused(signing_key: ECKey, public_key: PublicKey, typ: str) -> None:
    verify_refused(_sign(signing_key, claims(), {**HEADER, "typ": typ}), signing_key, public_key)


def test_JWT_12_dpop_proof_is_not_an_access_token(signing_key: ECKey, public_key: PublicKey) -> None:
    """A DPoP proof (typ dpop+jwt, jwk header) signed by the issuer key is refused as an access token, and vice versa."""
    jwk = dict(public_key.as_dict(private=False))
    proof_claims = {**claims(), "htm": "POST", "htu": "https://sts.example/token", "iat": NOW}
    proof = sign_compact({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}, proof_claims, signing_key, "ES256")
    assert check_proof(proof, method="POST", url="https://sts.example/token", now=NOW).jti == "jti-1"
    verify_refused(proof, signing_key, public_key)
    access_token = _sign(signing_key, claims())
    with pytest.raises(InvalidDPoPProof):
        check_proof(access_token, method="POST", url="https://sts.example/token", now=NOW)


def test_AUX_01_signature_by_other_key_refused(signing_key: ECKey, public_key: PublicKey) -> None:
    verify_refused(_sign(ECKey.generate_key("P-256", private=True), claims()), signing_key, public_key)


def test_AUX_01_unknown_kid_refused(signing_key: ECKey, public_key: PublicKey) -> None:
    verify_refused(_sign(signing_key, claims(), {**HEADER, "kid": "k2"}), signing_key, public_key)


@pytest.mark.parametrize("alg", ["none", "NONE", "HS256"])
def test_A_01_A_02_unsigned_or_mac_access_token_refused(signing_key: ECKey, public_key: PublicKey, alg: str) -> None:
    h = _b64u(json.dumps({**HEADER, "alg": alg}).encode())
    p = _b64u(json.dumps(claims()).encode())
    secret = json.dumps(dict(public_key.as_dict(private=False))).encode()
    sig = _b64u(hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest()) if alg == "HS256" else ""
    verify_refused(f"{h}.{p}.{sig}", signing_key, public_key)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"jku": "https://attacker.example/jwks"}, id="jku"),
        pytest.param({"x5u": "https://attacker.example/c"}, id="x5u"),
        pytest.param({"jwk": {"kty": "EC"}}, id="jwk"),
        pytest.param({"crit": ["exp"], "exp": 1}, id="crit"),
        pytest.param({"b64": True}, id="b64"),
    ],
)
def test_JWT_10_access_token_header_allowlist(signing_key: ECKey, public_key: PublicKey, extra: dict[str, Any]) -> None:
    h = _b64u(json.dumps({**HEADER, **extra}).encode())
    p = _b64u(json.dumps(claims()).encode())
    good = _sign(signing_key, claims())
    # signed with the real key, so that only the header is wrong
    private = signing_key.private_key
    assert private is not None  # the fixture generates a private key
    r, s = decode_dss_signature(private.sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256())))
    token = f"{h}.{p}.{_b64u(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
    assert good != token
    verify_refused(token, signing_key, public_key)


def test_access_token_over_8kb_refused(signing_key: ECKey, public_key: PublicKey) -> None:
    token = _sign(signing_key, claims(purp="p" * 500, pad="x" * MAX_ACCESS_TOKEN))
    assert len(token) > MAX_ACCESS_TOKEN
    verify_refused(token, signing_key, public_key)


def test_verified_token_claims_still_checked(signing_key: ECKey, public_key: PublicKey) -> None:
    verify_refused(_sign(signing_key, claims(exp=NOW - 3600)), signing_key, public_key)
    verify_refused(_sign(signing_key, claims(iss=ISS + "/")), signing_key, public_key)
    verify_refused(_sign(signing_key, claims(aud="https://other.example")), signing_key, public_key)


@pytest.mark.parametrize("kind", ["spiffe", "oidc", "client"])
def test_kind_claims_are_read(kind: str) -> None:
    token = check(claims(ckd=kind, akd="spiffe"))
    assert (token.client_kind, token.agent_kind) == (kind, "spiffe")


def test_kind_claims_absent_read_as_unknown() -> None:
    """A token from before ``ckd``/``akd`` matches no ``kind`` a policy names: it is never guessed."""
    token = check(claims())
    assert (token.client_kind, token.agent_kind) == ("unknown", "unknown")


@pytest.mark.parametrize("name", ["ckd", "akd"])
@pytest.mark.parametrize("value", ["SPIFFE", "admin", "", None, 1, ["spiffe"], {"kind": "spiffe"}])
def test_kind_claim_that_is_not_a_kind_refused(name: str, value: Any) -> None:
    assert "is not a principal kind" in refused(claims(**{name: value})).debug
