"""RFC 7523 §2.2/§3 ``private_key_jwt`` client assertions for registered clients.

``iss`` and ``sub`` must both be the ``client_id``, ``aud`` must name the issuer or
the endpoint the assertion is presented to, ``exp`` must be near, and the key must be
one registered for that client (never one the assertion carries). Single use of the
``jti`` is enforced by the caller when the request succeeds.
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
    token_hash,
    unverified,
)
from tether.identity.jwks_cache import KeySource
from tether.model import IdentityKind, WorkloadIdentity
from tether.rules.jws import ASYMMETRIC_ALGS, JWSError, PublicKey, verify_compact

__all__ = ["ClientAssertionVerifier"]

_HEADERS = frozenset({"alg", "kid", "typ"})


class ClientAssertionVerifier:
    def __init__(self, clients: Mapping[str, KeySource], *, audiences: Collection[str], max_lifetime: int, skew: int) -> None:
        self._clients = dict(clients)
        self._audiences = frozenset(audiences)
        self._max_lifetime = max_lifetime
        self._skew = skew

    def handles(self, claims: Mapping[str, Any]) -> bool:
        iss = claims.get("iss")
        return isinstance(iss, str) and iss in self._clients and claims.get("sub") == iss

    async def verify(self, token: str, *, now: float) -> WorkloadIdentity:
        header, claims = unverified(token)
        client_id = claims.get("iss")
        if not isinstance(client_id, str) or client_id not in self._clients or claims.get("sub") != client_id:
            raise IdentityError("iss and sub must both name a registered client")
        check_typ(header, allowed=("JWT",))
        keyset = await self._clients[client_id].keys(kid=header.get("kid"), now=now)

        def resolve(h: Mapping[str, Any]) -> PublicKey:
            key = keyset.find(h.get("kid"))
            if key is None:
                raise JWSError("no registered key for kid")
            return key

        try:
            verified = verify_compact(
                token, algorithms=ASYMMETRIC_ALGS, allowed_headers=_HEADERS, resolve_key=resolve, max_length=MAX_WORKLOAD_JWT
            )
        except JWSError as exc:
            raise IdentityError(str(exc)) from exc
        claims = dict(verified.claims)
        check_audience(claims, self._audiences)
        exp = check_lifetime(claims, now=now, skew=self._skew, max_lifetime=self._max_lifetime)
        return WorkloadIdentity(
            principal=client_id,
            kind=IdentityKind.CLIENT,
            issuer=client_id,
            exp=exp,
            jti=optional_jti(claims),
            token_hash=token_hash(token),
            claims=claims,
        )
