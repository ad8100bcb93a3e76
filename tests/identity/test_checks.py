"""The verification tail shared by the JWT-SVID, OIDC and client-assertion verifiers
(``tether.identity.checks.verify_signed``): key lookup, signature, audience, lifetime (JWT-08, JWT-09).

Each refusal is paired with the accepted token of the same fixture; the principal is read only
from claims whose signature, audience and lifetime have been checked.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from identity_support import NOW, apply, ec_key, jwks, sign_jwt

from tether.identity.checks import Acceptance, IdentityError, unverified, verify_signed
from tether.identity.jwks_cache import StaticKeySource, parse_jwks
from tether.model import IdentityKind, WorkloadIdentity

AUD = "https://sts.example"
KEY = ec_key("k1")
IMPOSTOR = ec_key("k1")  # claims the trusted kid, never published
HEADER = {"alg": "ES256", "kid": "k1"}
CLAIMS = {"sub": "svc:one", "aud": AUD, "exp": NOW + 60, "iat": NOW, "jti": "one"}
ACCEPT = Acceptance(IdentityKind.OIDC, ("ES256",), (AUD,), max_lifetime=300, skew=10, unknown_key="no key for this kid")


def verify(token: str, seen: list[dict[str, Any]]) -> WorkloadIdentity:
    """Through the tail, with a principal callback that records the claims it is given."""

    def principal(claims: dict[str, Any]) -> str:
        seen.append(claims)
        return str(claims["sub"])

    keys = StaticKeySource(parse_jwks(jwks(KEY)))
    header, _ = unverified(token)
    return asyncio.run(verify_signed(token, header, keys, ACCEPT, issuer="https://idp.example", principal=principal, now=NOW))


def token(key: Any = KEY, header: dict[str, Any] | None = None, **claims: Any) -> str:
    return sign_jwt(apply(HEADER, header or {}), apply(CLAIMS, claims), key)


def test_accepted_token_gives_the_identity_from_verified_claims() -> None:
    seen: list[dict[str, Any]] = []
    good = token()
    identity = verify(good, seen)
    assert (identity.principal, identity.kind, identity.issuer) == ("svc:one", IdentityKind.OIDC, "https://idp.example")
    assert (identity.exp, identity.jti) == (NOW + 60, "one")
    assert seen == [identity.claims]


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("JWT_08_unpublished_key_with_the_trusted_kid", "signature"),
        ("unknown_kid", "no key for this kid"),
        ("JWT_09_other_audience", "aud"),
        ("exp_beyond_max_lifetime", "more than 300s"),
        ("expired", "expired"),
    ],
)
def test_refused_before_the_principal_is_read(case: str, reason: str) -> None:
    forged = {
        "JWT_08_unpublished_key_with_the_trusted_kid": lambda: token(IMPOSTOR),
        "unknown_kid": lambda: token(header={"kid": "k2"}),
        "JWT_09_other_audience": lambda: token(aud="https://other.example"),
        "exp_beyond_max_lifetime": lambda: token(exp=NOW + 3600),
        "expired": lambda: token(exp=NOW - 60, iat=NOW - 120),
    }[case]()
    seen: list[dict[str, Any]] = []
    with pytest.raises(IdentityError, match=reason):
        verify(forged, seen)
    assert seen == []
    assert verify(token(), seen).principal == "svc:one"  # positive control on the same fixture
