"""Upstream access tokens held by the gateway: per task and scope, never past the task (FED-04).

A token is cached under (route, task, scope) — and the agent, for ``token_exchange``, whose
token names it — until the first of: the upstream's ``expires_in`` less a margin, the hop token
that asked for it (a hop token never outlives its task, and an expired task sends nothing on
the feed), or the task's end as the revocation feed reports it. The cache is bounded; the
least recently used token goes first. Concurrent calls for one key share one fetch.

A token dropped while the upstream would still honour it (task ended, capped, evicted, gateway
stopping) is revoked at the route's ``revocation_endpoint`` (RFC 7009 §2.1) off the request
path, retried a few times, and audited as ``gateway.oauth.revoked`` (route, task, how many and
the outcome; tokens appear only as SHA-256 prefixes). A route with ``revoke_access_tokens``
false (the default for ``refresh_token``, whose server may revoke the refresh token with them)
only drops them: outcome ``not_revoked``, alive upstream until ``expires_in``. Nothing here logs a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from tether.audit.chain import AuditEvent
from tether.clock import Clock
from tether.errors import InvalidToken, after_end
from tether.gateway.audit import GatewayAudit
from tether.gateway.oauth_wire import TokenRefused, TokenUnavailable, UpstreamToken, wider_than
from tether.gateway.routes import GatewayRoute
from tether.gateway.upstream_oauth import UpstreamOAuth
from tether.gateway.vault import MissingSecret
from tether.metrics import GATEWAY_OAUTH_TOKENS
from tether.resource.principal import Principal

__all__ = ["MAX_TOKENS", "REVOKE_ATTEMPTS", "UpstreamTokens", "token_digest"]

log = logging.getLogger("tether.gateway")

MAX_TOKENS = 4096
REVOKE_ATTEMPTS = 3
#: seconds between revocation attempts (then doubled)
REVOKE_BACKOFF = 0.2
#: the longest the gateway waits, when stopping, for revocations still under way
STOP_GRACE = 5.0

Key = tuple[str, str, str, str]


def token_digest(token: str) -> str:
    """How the audit names an upstream token: a SHA-256 prefix, enough to match the upstream's records."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def _margin(expires_in: int) -> float:
    """Stop using a token a little before the upstream does (clock skew, time in flight): 10%, 1 to 30 s."""
    return max(1.0, min(30.0, expires_in * 0.1))


@dataclass
class _Held:
    route: str
    task: str
    value: str
    #: when the gateway stops using it (gateway clock)
    until: float
    #: when the upstream stops honouring it
    upstream_until: float


class UpstreamTokens:
    def __init__(self, client: UpstreamOAuth, routes: dict[str, GatewayRoute], audit: GatewayAudit, *, clock: Clock,
                 ended: Callable[[str], bool], register: Callable[[str], None], unregister: Callable[[str], None],
                 max_tokens: int = MAX_TOKENS) -> None:  # fmt: skip
        """``ended(task)`` says whether the feed reports the task over; ``register``/``unregister`` keep
        each live token in log redaction."""
        self.client = client
        self.routes = routes
        self.audit = audit
        self.clock = clock
        self.ended = ended
        self.register = register
        self.unregister = unregister
        self.max_tokens = max_tokens
        self._held: OrderedDict[Key, _Held] = OrderedDict()
        self._fetching: dict[Key, asyncio.Task[str]] = {}
        self._revoking: set[asyncio.Task[None]] = set()
        #: tokens fetched from the upstream, and those it revoked (tests and the benchmark read them)
        self.fetched = 0
        self.revoked = 0

    # -- the request path -------------------------------------------------------------------------
    async def token_for(self, route: GatewayRoute, principal: Principal, method: str, segments: tuple[str, ...]) -> str:
        """The access token for this call: cached for its task and scope, or fetched once."""
        assert route.oauth is not None and principal.task is not None
        task = principal.task
        scopes = route.oauth.scopes_for(method, segments)
        who = principal.agent if route.oauth.grant == "token_exchange" else ""
        key: Key = (route.name, task, " ".join(scopes), who)
        self._refuse_ended(task)
        now = self.clock.now()
        held = self._held.get(key)
        if held is not None and now < held.until:
            self._held.move_to_end(key)
            GATEWAY_OAUTH_TOKENS.labels(route=route.name, outcome="cached").inc()
            return held.value
        if held is not None:
            self._drop(key, reason="expired")
        fetch = self._fetching.get(key)
        if fetch is None:
            fetch = asyncio.create_task(self._obtain(route, principal, key, scopes))
            self._fetching[key] = fetch
            fetch.add_done_callback(functools.partial(self._fetched, key))
        return await asyncio.shield(fetch)  # a caller that goes away leaves the fetch to the others

    def _fetched(self, key: Key, fetch: asyncio.Task[str]) -> None:
        if self._fetching.get(key) is fetch:
            del self._fetching[key]
        if not fetch.cancelled():
            fetch.exception()  # retrieved: every waiter may have gone away

    def _refuse_ended(self, task: str) -> None:
        if self.ended(task):
            raise after_end(InvalidToken("token has been revoked", debug=f"task {task} ended: no upstream token"))

    async def _obtain(self, route: GatewayRoute, principal: Principal, key: Key, scopes: tuple[str, ...]) -> str:
        assert route.oauth is not None and principal.task is not None
        task = principal.task
        detail = {"route": route.name, "agent": principal.agent, "grant": route.oauth.grant, "scope": " ".join(scopes)}
        try:
            token = await self.client.fetch(route, scopes=scopes, agent=principal.agent, task=task)
        except (TokenUnavailable, TokenRefused, MissingSecret) as exc:
            GATEWAY_OAUTH_TOKENS.labels(route=route.name, outcome="refused").inc()
            reason = exc.debug if isinstance(exc, TokenUnavailable | TokenRefused) else type(exc).__name__
            await self._record("gateway.oauth.refused", "refused", task, {**detail, "reason": reason[:300]})
            raise
        self.fetched += 1
        self.register(token.access_token)
        wider = wider_than(token, scopes)
        if wider:  # never used: given up at once
            self._revoke_later(route, task, [token.access_token], reason="wider")
            beyond = " ".join(wider)[:200]
            refused = TokenRefused("upstream granted more than the call needs",
                                   debug=f"route {route.name}: granted beyond the request: {beyond}")  # fmt: skip
            await self._record("gateway.oauth.refused", "refused", task, {**detail, "reason": refused.debug})
            raise refused
        GATEWAY_OAUTH_TOKENS.labels(route=route.name, outcome="fetched").inc()
        await self._record("gateway.oauth.token", "ok", task, {**detail, "token": token_digest(token.access_token),
                                                               "expires_in": token.expires_in,
                                                               "granted": " ".join(token.scope)})  # fmt: skip
        # checked after the last await: the feed may end the task during the fetch or the record, and
        # ``task_ended`` has then already released what the task held (a token kept now would sit
        # unrevoked until its hop token expired)
        if self.ended(task):
            self._revoke_later(route, task, [token.access_token], reason="task ended")
            self._refuse_ended(task)
        now = self.clock.now()
        upstream_until = now + token.expires_in
        until = min(upstream_until - _margin(token.expires_in), float(principal.expires_at))
        self._keep(key, _Held(route.name, task, token.access_token, until, upstream_until), token)
        return token.access_token

    def _keep(self, key: Key, held: _Held, token: UpstreamToken) -> None:
        if held.until <= self.clock.now():
            # usable for this call only (a hop token about to expire, a very short-lived upstream token):
            # given up once the call's deadline has passed
            route = self.routes[held.route]
            assert route.oauth is not None
            if route.oauth.revoke_access_tokens:
                self._revoke_later(route, held.task, [token.access_token], reason="single use", delay=route.max_call_seconds)
            else:
                asyncio.get_running_loop().call_later(route.max_call_seconds, self.unregister, token.access_token)
            return
        previous = self._held.pop(key, None)
        if previous is not None:
            self._retire(previous, reason="replaced")
        self._held[key] = held
        while len(self._held) > self.max_tokens:
            oldest = next(iter(self._held))
            self._drop(oldest, reason="evicted")

    # -- dropping and revoking ---------------------------------------------------------------------
    def _drop(self, key: Key, *, reason: str) -> None:
        held = self._held.pop(key, None)
        if held is not None:
            self._retire(held, reason=reason)

    def _retire(self, held: _Held, *, reason: str) -> None:
        """A token the gateway no longer uses: revoked if the upstream would still honour it."""
        if held.upstream_until > self.clock.now():
            self._revoke_later(self.routes[held.route], held.task, [held.value], reason=reason)
        else:
            self.unregister(held.value)

    def task_ended(self, task: str) -> None:
        """The feed reports ``task`` over: drop and revoke every token it got (called from the feed, in the loop)."""
        self._release(task, reason="task ended")

    def _release(self, task: str, *, reason: str) -> None:
        """Drop every token ``task`` holds; one revocation job (and audit record) per route."""
        keys = [k for k, held in self._held.items() if held.task == task]
        by_route: dict[str, list[str]] = {}
        for key in keys:
            held = self._held.pop(key)
            by_route.setdefault(held.route, []).append(held.value)
        for route, values in by_route.items():
            self._revoke_later(self.routes[route], task, values, reason=reason)

    def sweep(self) -> None:
        """Drop tokens past their time (the request path drops them lazily; this catches the idle ones)."""
        now = self.clock.now()
        for key in [k for k, held in self._held.items() if held.until <= now]:
            self._drop(key, reason="expired")

    def _revoke_later(self, route: GatewayRoute, task: str, values: list[str], *, reason: str, delay: float = 0.0) -> None:
        job = asyncio.get_running_loop().create_task(self._revoke(route, task, values, reason=reason, delay=delay))
        self._revoking.add(job)
        job.add_done_callback(self._revoking.discard)

    async def _revoke(self, route: GatewayRoute, task: str, values: list[str], *, reason: str, delay: float) -> None:
        """RFC 7009 revocation of ``values``, each retried ``REVOKE_ATTEMPTS`` times; one audit record."""
        assert route.oauth is not None
        if delay:
            await asyncio.sleep(delay)
        done = 0
        revoking = route.oauth.revoke_access_tokens
        if revoking:
            for value in values:
                done += await self._revoke_one(route, value)
        self.revoked += done
        for value in values:
            self.unregister(value)
        outcome = ("ok" if done == len(values) else "failed") if revoking else "not_revoked"
        GATEWAY_OAUTH_TOKENS.labels(route=route.name, outcome=f"revoke_{outcome}").inc(len(values))
        if outcome == "failed":
            log.warning("route %s: %d of %d upstream token(s) of task %s not revoked", route.name,
                        len(values) - done, len(values), task)  # fmt: skip
        detail = {"route": route.name, "reason": reason, "count": len(values), "revoked": done,
                  "tokens": [token_digest(v) for v in values][:50]}  # fmt: skip
        await self._record("gateway.oauth.revoked", outcome, task, detail)

    async def _revoke_one(self, route: GatewayRoute, value: str) -> int:
        wait = REVOKE_BACKOFF
        for attempt in range(REVOKE_ATTEMPTS):
            try:
                if await self.client.revoke(route, value):
                    return 1
            except (TokenUnavailable, MissingSecret) as exc:
                log.info("route %s: revocation attempt %d failed: %s", route.name, attempt + 1,
                         exc.debug if isinstance(exc, TokenUnavailable) else type(exc).__name__)  # fmt: skip
            if attempt + 1 < REVOKE_ATTEMPTS:
                await asyncio.sleep(wait)
                wait *= 2
        return 0

    async def _record(self, kind: str, outcome: str, task: str, detail: dict[str, object]) -> None:
        event = AuditEvent(kind=kind, outcome=outcome, principal="gateway", task=task, detail=detail)
        await self.audit.append_quietly(event)

    async def pending(self) -> None:
        """Wait for the revocations under way (tests; the gateway's stop)."""
        while self._revoking:
            await asyncio.gather(*list(self._revoking), return_exceptions=True)

    async def aclose(self) -> None:
        """Stopping: the cache dies with the process, so every live token in it is revoked (within ``STOP_GRACE``)."""
        for fetch in list(self._fetching.values()):
            fetch.cancel()
        for task in {held.task for held in self._held.values()}:
            self._release(task, reason="gateway stopped")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_GRACE):
                await self.pending()
        for job in list(self._revoking):
            job.cancel()
