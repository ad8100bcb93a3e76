"""Calling onward on a caller's behalf (RFC 8693 §2.1 ``actor_token``).

A service must not forward the token it received (no token passthrough). It exchanges that
token as ``subject_token`` with its own workload JWT as ``actor_token``; the STS nests it into
``act`` and binds the new token to this service's own DPoP key.

    onward = Onward(sts_url, my_identity)
    async with httpx.AsyncClient(auth=onward.auth(incoming_token)) as http:
        await http.get("https://next.example/fetch")
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from tether.agent.auth import DPoPAuth, FlowLock
from tether.agent.exchange import Flow, IssuedToken, Nonces, exchange_flow
from tether.agent.identity import IdentitySource
from tether.agent.proof import DPoPKey
from tether.agent.token_cache import DEFAULT_CAPACITY, TokenCache
from tether.clock import Clock
from tether.rules.jws import JWSError, b64url_decode, strict_json_loads
from tether.urns import TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS, TOKEN_TYPE_JWT

__all__ = ["Onward"]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _lineage(incoming: str) -> str:
    """Which cache slot a parent fills: its task and holder (``txn``, ``client_id``), read unverified.

    Only the cache uses it, to let a newer incoming token of the same task and caller
    replace the onward tokens of the one before (the STS verifies every token it is
    given). A token without both claims gets a slot of its own.
    """
    try:
        claims = strict_json_loads(b64url_decode(incoming.split(".")[1]))
    except (JWSError, IndexError):
        claims = None
    if isinstance(claims, dict) and isinstance(claims.get("txn"), str) and isinstance(claims.get("client_id"), str):
        return f"{claims['txn']}\x00{claims['client_id']}"
    return _digest(incoming)


class Onward:
    """Onward tokens, cached per (incoming token's task and caller, audience, scope) until near expiry.

    The cache is bounded (``max_entries``, least recently used out first), never serves
    a token near its expiry and drops those on every insertion, and a newer incoming token
    for the same task and caller replaces the older one's entries (``TokenCache``).
    """

    def __init__(
        self,
        sts_url: str,
        identity: IdentitySource,
        *,
        key: DPoPKey | None = None,
        max_entries: int = DEFAULT_CAPACITY,
        clock: Clock | None = None,
    ) -> None:
        self.sts_url = sts_url.rstrip("/")
        self.identity = identity
        self.key = key or DPoPKey()
        self.nonces = Nonces()
        self.lock = FlowLock()
        self.cache: TokenCache[tuple[str, str, str | None]] = TokenCache(max_entries, clock=clock)

    def auth(self, incoming_token: str, *, audiences: Mapping[str, str] | None = None, scope: str | None = None) -> DPoPAuth:
        return DPoPAuth(_OnBehalf(self, incoming_token, scope), audiences=audiences)

    def forget(self, incoming_token: str, audience: str, scope: str | None = None) -> None:
        """Drop the cached onward token for this caller and audience (refused by its audience, or no longer needed)."""
        self.cache.discard((_lineage(incoming_token), audience, scope))

    def token_flow(self, incoming_token: str, audience: str, scope: str | None = None) -> Flow:
        slot, parent = (_lineage(incoming_token), audience, scope), _digest(incoming_token)
        cached = self.cache.get(slot, parent=parent)
        if cached is not None:
            return cached
        form = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": incoming_token,
            "subject_token_type": TOKEN_TYPE_ACCESS,
            "actor_token": self.identity.token(self.sts_url),
            "actor_token_type": TOKEN_TYPE_JWT,
            "resource": audience,
        }
        if scope is not None:
            form["scope"] = scope
        url = self.sts_url + "/token"
        issued: IssuedToken = yield from exchange_flow(url, form, self.key, self.nonces, clock=self.cache.clock)
        self.cache.put(slot, issued, parent=parent)
        return issued.value


class _OnBehalf:
    """Adapts ``Onward`` for one incoming token to the ``TokenProvider`` protocol."""

    def __init__(self, onward: Onward, incoming: str, scope: str | None) -> None:
        self._onward = onward
        self._incoming = incoming
        self._scope = scope
        self.key = onward.key
        self.nonces = onward.nonces
        self.sts_url = onward.sts_url
        self.lock = onward.lock

    def token_flow(self, audience: str) -> Flow:
        token = yield from self._onward.token_flow(self._incoming, audience, self._scope)
        return token
