"""RFC 7523 ``private_key_jwt`` client assertions (RFC 7523 §3; SECURITY.md JWT-08, JWT-09, JWT-12).

Each refusal is paired with the same fixture's accepted assertion.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from identity_support import DROP, NOW, apply, ec_key, jwks, public_jwk, rsa_key, sign_jwt

from tether.identity.checks import IdentityError
from tether.identity.client_assertion import ClientAssertionVerifier
from tether.identity.jwks_cache import StaticKeySource, parse_jwks
from tether.model import IdentityKind, WorkloadIdentity

STS = "https://sts.example"
TOKEN_ENDPOINT = STS + "/token"
CLIENT = "client:agent-1"
OTHER_CLIENT = "client:agent-2"

KEY = ec_key("c1")
KEY_RSA = rsa_key("c1-rsa")
OTHER_KEY = ec_key("c2")
SAME_KID = ec_key("c1")  # never registered, but claims the registered kid

HEADER = {"alg": "ES256", "kid": "c1"}
CLAIMS = {"iss": CLIENT, "sub": CLIENT, "aud": TOKEN_ENDPOINT, "exp": NOW + 60, "iat": NOW, "jti": "assert-1"}


def verifier() -> ClientAssertionVerifier:
    clients = {
        CLIENT: StaticKeySource(parse_jwks(jwks(KEY, KEY_RSA))),
        OTHER_CLIENT: StaticKeySource(parse_jwks(jwks(OTHER_KEY))),
    }
    return ClientAssertionVerifier(
        clients, audiences=[STS, TOKEN_ENDPOINT, STS + "/introspect", STS + "/revoke"], max_lifetime=300, skew=10
    )


def assertion(header: dict[str, Any] | None = None, key: Any = KEY, alg: str | None = None, **claims: Any) -> str:
    return sign_jwt(apply(HEADER, header or {}), apply(CLAIMS, claims), key, alg=alg)


def verify(token: str, *, now: float = NOW) -> WorkloadIdentity:
    return asyncio.run(verifier().verify(token, now=now))


def refused(token: str, match: str | None = None) -> None:
    with pytest.raises(IdentityError, match=match):
        verify(token)


def test_accepted_assertion() -> None:
    token = assertion()
    identity = verify(token)
    assert identity.principal == CLIENT
    assert identity.kind is IdentityKind.CLIENT
    assert identity.issuer == CLIENT
    assert identity.exp == NOW + 60
    assert identity.jti == "assert-1"
    assert verify(assertion({"alg": "RS256", "kid": "c1-rsa"}, key=KEY_RSA)).principal == CLIENT


# --- iss == sub == client_id (RFC 7523 §3 items 1 and 2) ---------------------------------------


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": OTHER_CLIENT},
        {"sub": DROP},
        {"iss": DROP},
        {"sub": "client:agent-1 "},
        {"iss": OTHER_CLIENT},
        {"iss": "client:unknown", "sub": "client:unknown"},
        {"iss": 5, "sub": 5},
        {"iss": [CLIENT], "sub": [CLIENT]},
    ],
    ids=repr,
)
def test_iss_sub_must_both_be_the_client_id(claims: dict[str, Any]) -> None:
    assert verify(assertion()).principal == CLIENT
    refused(assertion(**claims), "iss and sub")


def test_handles_only_registered_self_issued_assertions() -> None:
    v = verifier()
    assert v.handles({"iss": CLIENT, "sub": CLIENT})
    assert not v.handles({"iss": CLIENT, "sub": OTHER_CLIENT})
    assert not v.handles({"iss": "client:unknown", "sub": "client:unknown"})
    assert not v.handles({"sub": CLIENT})


# --- aud: the issuer or the endpoint (RFC 7523 §3 item 3; JWT-09) ---------------------------------


@pytest.mark.parametrize("aud", [STS, TOKEN_ENDPOINT, [TOKEN_ENDPOINT], ["https://elsewhere.example", STS]])
def test_JWT_09_aud_issuer_or_token_endpoint_accepted(aud: Any) -> None:
    assert verify(assertion(aud=aud)).claims["aud"] == aud


@pytest.mark.parametrize(
    "aud",
    [
        "https://other.example/token",
        STS + "/",
        STS + "/tokens",
        TOKEN_ENDPOINT + "/",
        "https://STS.example/token",
        CLIENT,
        [],
        DROP,
    ],
    ids=repr,
)
def test_JWT_09_other_aud_refused(aud: Any) -> None:
    assert verify(assertion()).principal == CLIENT
    refused(assertion(aud=aud), "aud")


# --- the key must be a registered key of that client (JWT-08, ASVS 9.1.3) ----------------------------


def test_JWT_08_other_key_with_the_registered_kid_refused() -> None:
    assert verify(assertion(key=KEY)).principal == CLIENT
    refused(assertion(key=SAME_KID), "signature")


def test_JWT_08_key_of_another_client_refused() -> None:
    assert verify(assertion({"kid": "c2"}, key=OTHER_KEY, iss=OTHER_CLIENT, sub=OTHER_CLIENT)).principal == OTHER_CLIENT
    # client 2's key and kid, claiming to be client 1
    refused(assertion({"kid": "c2"}, key=OTHER_KEY), "kid")


def test_unknown_kid_refused() -> None:
    assert verify(assertion()).principal == CLIENT
    refused(assertion({"kid": "c9"}), "kid")
    refused(assertion({"kid": DROP}), "kid")  # two registered keys: a kid is needed to choose


def test_ASVS_9_1_3_key_carried_in_the_assertion_refused() -> None:
    assert verify(assertion()).principal == CLIENT
    refused(assertion({"kid": DROP, "jwk": public_jwk(SAME_KID)}, key=SAME_KID), "`jwk` not allowed")
    refused(assertion({"jku": "https://attacker.example/jwks"}), "`jku` not allowed")


def test_hmac_keyed_with_registered_public_key_refused() -> None:
    assert verify(assertion()).principal == CLIENT
    secret = json.dumps(public_jwk(KEY)).encode()
    refused(sign_jwt({"alg": "HS256", "kid": "c1"}, CLAIMS, secret=secret), "algorithm `HS256` not allowed")
    refused(sign_jwt({"alg": "none", "kid": "c1"}, CLAIMS, KEY, alg="ES256"), "algorithm `none` not allowed")


# --- exp near (RFC 7523 §3 item 4) ---------------------------------------------------------


def test_exp_far_in_future_refused() -> None:
    assert verify(assertion(exp=NOW + 300)).exp == NOW + 300
    refused(assertion(exp=NOW + 301), "more than 300s away")
    refused(assertion(exp=NOW + 86400 * 365), "more than 300s away")


def test_exp_missing_or_expired_refused() -> None:
    assert verify(assertion(exp=NOW - 9)).exp == NOW - 9
    refused(assertion(exp=NOW - 10), "expired")
    refused(assertion(exp=DROP), "exp missing")


def test_nbf_in_future_refused() -> None:
    assert verify(assertion(nbf=NOW + 10)).principal == CLIENT
    refused(assertion(nbf=NOW + 11), "nbf is in the future")


# --- typ (JWT-12) ----------------------------------------------------------------------------


@pytest.mark.parametrize("typ", ["JWT", DROP])
def test_JWT_12_typ_jwt_or_absent_accepted(typ: Any) -> None:
    assert verify(assertion({"typ": typ})).principal == CLIENT


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "dpop+jwt", "secevent+jwt"])
def test_JWT_12_other_typ_refused(typ: str) -> None:
    assert verify(assertion({"typ": "JWT"})).principal == CLIENT
    refused(assertion({"typ": typ}), "typ")


def test_jti_optional_and_returned() -> None:
    assert verify(assertion(jti="one-time")).jti == "one-time"
    assert verify(assertion(jti=DROP)).jti is None
    refused(assertion(jti=""), "jti malformed")
