"""SPIFFE JWT-SVID validation against per-trust-domain bundles (SPIFFE JWT-SVID §3–§4).

The trust domain of ``sub`` picks the bundle, so a key trusted for one domain never vouches
for another. Only RS/ES/PS algorithms, only ``alg``, ``kid`` and ``typ`` headers, ``typ``
absent or ``JWT``/``JOSE``, ``aud`` naming us and ``exp`` present and near.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from tether.identity.checks import (
    MAX_WORKLOAD_JWT,
    IdentityError,
    check_audience,
    check_lifetime,
    check_typ,
    optional_jti,
    optional_string,
    token_hash,
    unverified,
)
from tether.identity.jwks_cache import KeySource
from tether.model import IdentityKind, WorkloadIdentity
from tether.rules.jws import JWSError, PublicKey, verify_compact
from tether.rules.principal import spiffe_trust_domain

__all__ = ["SVID_ALGS", "SvidVerifier"]

SVID_ALGS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"})
_HEADERS = frozenset({"alg", "kid", "typ"})


class SvidVerifier:
    def __init__(
        self,
        bundles: Mapping[str, KeySource],
        *,
        audiences: Collection[str],
        max_lifetime: int,
        skew: int,
        foreign_issuers: Collection[str] = (),
    ) -> None:
        self._bundles = dict(bundles)
        self._audiences = frozenset(audiences)
        self._max_lifetime = max_lifetime
        self._skew = skew
        self._foreign = frozenset(foreign_issuers)

    def handles(self, claims: Mapping[str, Any]) -> bool:
        sub = claims.get("sub")
        return isinstance(sub, str) and spiffe_trust_domain(sub) in self._bundles

    async def verify(self, token: str, *, now: float) -> WorkloadIdentity:
        header, claims = unverified(token)
        sub = claims.get("sub")
        domain = spiffe_trust_domain(sub) if isinstance(sub, str) else None
        if domain is None or domain not in self._bundles:
            raise IdentityError("sub is not a spiffe id of a configured trust domain")
        if optional_string(claims, "iss") in self._foreign:
            raise IdentityError("token was issued by tether itself, not a trust domain")
        check_typ(header, allowed=("JWT", "JOSE"))
        keyset = await self._bundles[domain].keys(kid=header.get("kid"), now=now)

        def resolve(h: Mapping[str, Any]) -> PublicKey:
            key = keyset.find(h.get("kid"))
            if key is None:
                raise JWSError("no trusted key for kid")
            return key

        try:
            verified = verify_compact(
                token, algorithms=SVID_ALGS, allowed_headers=_HEADERS, resolve_key=resolve, max_length=MAX_WORKLOAD_JWT
            )
        except JWSError as exc:
            raise IdentityError(str(exc)) from exc
        claims = dict(verified.claims)
        check_audience(claims, self._audiences)
        exp = check_lifetime(claims, now=now, skew=self._skew, max_lifetime=self._max_lifetime)
        return WorkloadIdentity(
            principal=str(claims["sub"]),
            kind=IdentityKind.SPIFFE,
            issuer=f"spiffe://{domain}",
            exp=exp,
            jti=optional_jti(claims),
            token_hash=token_hash(token),
            claims=claims,
        )
