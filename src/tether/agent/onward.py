"""Calling onward on a caller's behalf (DESIGN "The flow", step 5; RFC 8693 §2.1 ``actor_token``).

A service that received a hop token must not forward it (MCP-03: no token
passthrough). Instead it exchanges the incoming token as ``subject_token`` with its
own workload JWT as ``actor_token``; the STS nests it into ``act`` and binds the new
token to this service's own DPoP key.

    onward = Onward(sts_url, my_identity)
    async with httpx.AsyncClient(auth=onward.auth(incoming_token)) as http:
        await http.get("https://next.example/fetch")
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping

from tether.agent.auth import DPoPAuth, FlowLock
from tether.agent.exchange import ACCESS, JWT, TOKEN_EXCHANGE, Flow, IssuedToken, Nonces, exchange_flow
from tether.agent.identity import IdentitySource
from tether.agent.proof import DPoPKey

__all__ = ["Onward"]


class Onward:
    def __init__(self, sts_url: str, identity: IdentitySource, *, key: DPoPKey | None = None) -> None:
        self.sts_url = sts_url.rstrip("/")
        self.identity = identity
        self.key = key or DPoPKey()
        self.nonces = Nonces()
        self.lock = FlowLock()
        self._cache: dict[tuple[str, str], IssuedToken] = {}

    def auth(self, incoming_token: str, *, audiences: Mapping[str, str] | None = None, scope: str | None = None) -> DPoPAuth:
        return DPoPAuth(_OnBehalf(self, incoming_token, scope), audiences=audiences)

    def token_flow(self, incoming_token: str, audience: str, scope: str | None = None) -> Flow:
        key = (hashlib.sha256(incoming_token.encode()).hexdigest(), audience)
        cached = self._cache.get(key)
        if cached is not None and cached.usable(time.time(), 5.0):
            return cached.value
        form = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": incoming_token,
            "subject_token_type": ACCESS,
            "actor_token": self.identity.token(self.sts_url),
            "actor_token_type": JWT,
            "resource": audience,
        }
        if scope is not None:
            form["scope"] = scope
        issued: IssuedToken = yield from exchange_flow(self.sts_url + "/token", form, self.key, self.nonces)
        self._cache[key] = issued
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
