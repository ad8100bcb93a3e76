"""RFC 7523 §2.2/§3 ``private_key_jwt`` client assertions for registered clients.

``iss`` and ``sub`` must both be the ``client_id``, ``aud`` must name the issuer or
the endpoint the assertion is presented to, ``exp`` must be near, and the key must be
one registered for that client (never one the assertion carries). Single use of the
``jti`` is enforced by the caller when the request succeeds.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from tether.identity.checks import Acceptance, IdentityError, check_typ, unverified, verify_signed
from tether.identity.jwks_cache import KeySource
from tether.model import IdentityKind, WorkloadIdentity
from tether.rules.jws import ASYMMETRIC_ALGS

__all__ = ["ClientAssertionVerifier"]


class ClientAssertionVerifier:
    def __init__(self, clients: Mapping[str, KeySource], *, audiences: Collection[str], max_lifetime: int, skew: int) -> None:
        self._clients = dict(clients)
        self._accept = Acceptance(
            IdentityKind.CLIENT, ASYMMETRIC_ALGS, frozenset(audiences), max_lifetime, skew, "no registered key for kid"
        )

    def handles(self, claims: Mapping[str, Any]) -> bool:
        iss = claims.get("iss")
        return isinstance(iss, str) and iss in self._clients and claims.get("sub") == iss

    async def verify(self, token: str, *, now: float) -> WorkloadIdentity:
        header, claims = unverified(token)
        client_id = claims.get("iss")
        if not isinstance(client_id, str) or client_id not in self._clients or claims.get("sub") != client_id:
            raise IdentityError("iss and sub must both name a registered client")
        check_typ(header, allowed=("JWT",))
        keys = self._clients[client_id]
        return await verify_signed(token, header, keys, self._accept, issuer=client_id, principal=lambda _: client_id, now=now)
