"""Admitting a call once its token is verified: each check in order, with the reads it is decided on.

The decisions are ``tether.gateway.admission``'s; here are their inputs: the date, the Cedar
``call`` policy, the form body and the store's counters per route and task (shared by every
gateway process on the store). Reading a counter also counts the call it is read for.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import Request

from tether.gateway.admission import check_bound, check_cap, check_open, check_rate, check_session, check_target
from tether.gateway.forms import read_form
from tether.gateway.routes import GatewayRoute, utc_date
from tether.lru import LruCache
from tether.resource.principal import Principal
from tether.resource.verifier import Verifier
from tether.store.protocol import Store

__all__ = ["Gate"]

DAY = 86400


class Gate:
    def __init__(self, store: Store, verifiers: Mapping[str, Verifier]) -> None:
        self.store = store
        self.verifiers = verifiers
        self._first_seen: LruCache[str, float] = LruCache(50_000)

    async def admit(
        self, request: Request, route: GatewayRoute, principal: Principal, *, path: str, client: str | None,
        deadline: float, now: float,
    ) -> bytes | None:  # fmt: skip
        """Everything after the token, in this order; returns a form body it read to check (None: not a form)."""
        check_open(route, utc_date(now))
        check_target(route, request.method, path, request.url.query)
        verifier = self.verifiers[route.name]
        # a token issued for one tool call serves no HTTP route; a held route needs an approved token (APR-01)
        required = verifier.authorize_call(principal, method=request.method, path=path, client=client, now=now)
        task = check_bound(principal.task)
        form = await read_form(request, route, deadline)
        base = f"gw:{route.name}:{task}"
        check_session(route, await self._session_start(route, base, now), now)
        second = int(now)
        check_rate(route, await self.store.count(f"{base}:s:{second}", until=second + 2, now=now))
        check_cap(route, await self.store.count(base + ":total", until=int(now) + DAY * 2, now=now))
        await verifier.spend_approval(principal, required=required, call=None, now=now)  # last: one approved call, made
        return form

    async def _session_start(self, route: GatewayRoute, base: str, now: float) -> float:
        """When the task first called the route (``now`` for its first call)."""
        first = self._first_seen.get(base)
        if first is None:  # the first call's time never changes once stored: remember it
            first = await self.store.first_seen(base + ":start", now=now, until=int(now) + route.max_session_seconds + DAY)
            self._first_seen.put(base, first)
        return first
