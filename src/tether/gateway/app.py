"""``tether gateway``: a reverse proxy that holds legacy secrets and injects them into checked calls.

Per request, in order: the hop token and DPoP proof are verified by the resource SDK
for the route's own audience (so the agent's token works nowhere else), the route must
not be past its expiry date, the path must be unambiguous and in the allowlist (and the
query name no method override), the Cedar ``call`` policy must allow it, a form body must
name no method override either (``tether.gateway.forms``: read first, then forwarded as
read), the task must be inside the route's session duration, rate, per-task cap and
in-flight cap; then the
call is audited (``gateway.call``, before anything is sent: a call the store cannot
record is not made), the vaulted secret is injected, the call is forwarded on the
route's own connection pool (no redirects followed, timeouts, size caps, one deadline
for the whole call), and the secret is scrubbed from whatever comes back. Its result
(``gateway.result``) and every refusal are audited and counted; a burst of refusals or
a cap hit suspends the task (which revokes its tokens).

``GET /metrics`` (unless ``[metrics] enabled = false``) shows calls by route and
status, their latency, and how long ago the revocation feed was last heard from the
STS; like the STS's, it is unauthenticated and its labels are route names and statuses,
never principals.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether.audit.anonymous import AnonymousRefusals
from tether.audit.chain import AuditEvent
from tether.clock import Clock, SystemClock
from tether.config import Config
from tether.errors import AccessDenied, InvalidRequest, NotFoundError, OAuthError, TetherError, TooManyRequests
from tether.gateway.allowlist import PathRefused, check_path, is_allowed
from tether.gateway.forms import declared_length, read_form
from tether.gateway.inflight import InFlight, Slot
from tether.gateway.overrides import check_query
from tether.gateway.proxy import BadGateway, Forwarded, GatewayTimeout, forward, upstream_client
from tether.gateway.records import Call, call_event, result_event
from tether.gateway.redact import SecretRedactor
from tether.gateway.relay import Relayed
from tether.gateway.routes import GatewayRoute, days_to_expiry
from tether.gateway.vault import MissingSecret, SecretCache, opened_marks
from tether.identity.jwks_cache import UrlKeySource
from tether.keys.sealed import load_master_key
from tether.logs import add_secret_source
from tether.lru import LruCache
from tether.metrics import CONTENT_TYPE, FEED_LAG_SECONDS, GATEWAY_CALLS, GATEWAY_SECONDS, REVOCATIONS, exposition
from tether.model import TaskState
from tether.policy.engine import PolicyEngine
from tether.resource.principal import Principal
from tether.resource.revocations import RevocationFeed
from tether.resource.verifier import ResourceSettings, Verifier
from tether.store.errors import NotFound, StoreError, TaskNotActive
from tether.store.open import open_store
from tether.store.protocol import Store
from tether.web.errors import error_response, handle_http, handle_unexpected

__all__ = ["Gateway", "build_gateway", "route_warnings"]

log = logging.getLogger("tether.gateway")
EXPIRY_WARNING_DAYS = 14


def route_warnings(routes: tuple[GatewayRoute, ...], today: dt.date) -> list[str]:
    """Bearer exceptions that have expired or expire within two weeks (startup and ``tether report``)."""
    warnings = []
    for route in routes:
        days = days_to_expiry(route, today)
        if days < 0:
            warnings.append(f"route `{route.name}` (owner {route.owner}) expired on {route.expires}: it refuses every call")
        elif days <= EXPIRY_WARNING_DAYS:
            warnings.append(f"route `{route.name}` (owner {route.owner}) expires in {days} days ({route.expires})")
    return warnings


class Gateway:
    def __init__(self, config: Config, *, clock: Clock | None = None, store: Store | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.url = str(config.values["gateway"]["url"])
        self.routes = {route.name: route for route in config.routes}
        self.master = load_master_key(config.master_key_file)
        self.vault_marks = opened_marks(config)  # read now: one the gateway cannot read stops its start
        self.policy = PolicyEngine(config.policy_dir, mode=config.values["policy"]["mode"])
        self.settings = config.values["gateway"]
        self.metrics: Counter[tuple[str, int]] = Counter()
        self._store = store
        self.store: Store | None = None
        self.verifiers: dict[str, Verifier] = {}
        self.redactor = SecretRedactor()
        self.in_flight = InFlight()
        self._first_seen: LruCache[str, float] = LruCache(50_000)
        self.app = self._app()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        if self.store is not None:
            return
        # httpx and httpcore log request URLs (which carry the secret with query injection) and
        # raw upstream headers (before scrubbing): every secret opened is redacted from them.
        self.redactor.install()
        add_secret_source(self.redactor)  # and from every other logger, through the root handler (tether.logs)
        self.store = self._store or await open_store(self.config)
        self.http = httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=10.0)
        self.upstream = {route.name: upstream_client(route.max_connections) for route in self.routes.values()}
        issuer = self.config.issuer
        keys = UrlKeySource(issuer + "/jwks", self.http, ttl=300, min_refresh=5.0)
        stale = float(self.settings["stale_after"])
        # the gateway holds the store: it follows revocations from it, with no identity to present
        self.feed = RevocationFeed.from_store(self.store, stale_after=stale, clock=self.clock)
        self.feed.start()
        for route in self.routes.values():
            settings = ResourceSettings(issuer=issuer, resource=route.audience(self.url), stale_after=stale, tags=route.tags)
            self.verifiers[route.name] = Verifier(
                settings, http=self.http, clock=self.clock, replay=self.store, keys=keys, feed=self.feed, policy=self.policy
            )
        self.secrets = SecretCache(self.store, self.master, self.vault_marks, ttl=float(self.settings["secret_cache_seconds"]),
                                   on_open=self.redactor.register)  # fmt: skip
        audit = self.config.values["audit"]
        self.anonymous = AnonymousRefusals(self._append, interval=audit["refusal_interval"],
                                           max_buckets=audit["refusal_buckets"])  # fmt: skip
        self._counting = asyncio.create_task(self._count_refusals())
        for warning in route_warnings(tuple(self.routes.values()), dt.datetime.fromtimestamp(self.clock.now(), dt.UTC).date()):
            log.warning("bearer exception: %s", warning)

    async def stop(self) -> None:
        if self.store is None:
            return
        await self.feed.aclose()
        self._counting.cancel()
        with contextlib.suppress(StoreError):  # counted refusals of the last interval, best effort
            await self.anonymous.flush(self.clock.now(), everything=True)
        for client in self.upstream.values():
            await client.close()
        await self.http.aclose()
        await self.store.aclose()
        self.store = None

    async def _append(self, event: AuditEvent, now: float) -> None:
        assert self.store is not None
        await self.store.append_audit(event, now=now)

    async def _count_refusals(self) -> None:
        """Write the counted summaries of unattributed refusals as their intervals end."""
        while True:
            await asyncio.sleep(5)
            with contextlib.suppress(StoreError):
                await self.anonymous.flush(self.clock.now())

    def _app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            await self.start()
            try:
                yield
            finally:
                await self.stop()

        methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        return Starlette(
            routes=[
                Route("/routes/{name}/{rest:path}", self.handle, methods=methods),
                Route("/routes/{name}", self.handle, methods=methods),
                Route("/.well-known/oauth-protected-resource/routes/{name}", self.metadata, methods=["GET"]),
                Route("/healthz", self.health, methods=["GET"]),
                *([Route("/metrics", self.scrape, methods=["GET"])] if self.config.values["metrics"]["enabled"] else []),
            ],
            lifespan=lifespan,
            exception_handlers={HTTPException: handle_http, Exception: handle_unexpected},
        )

    # -- endpoints -------------------------------------------------------------------------
    async def metadata(self, request: Request) -> Response:
        route = self.routes.get(request.path_params["name"])
        if route is None:
            return error_response(NotFoundError("no such route"))
        return JSONResponse(self.verifiers[route.name].metadata())

    async def health(self, request: Request) -> Response:
        """Status only (200, or 503 when the store is down): it is unauthenticated, and route
        names say which legacy systems sit behind the gateway."""
        assert self.store is not None
        try:
            await self.store.ping()
        except StoreError as exc:
            return error_response(exc)
        return JSONResponse({"status": "ok"})

    async def scrape(self, request: Request) -> Response:
        """Prometheus text exposition; the feed lag is measured now, at scrape time."""
        heard = self.feed.last_heard if self.store is not None else None
        FEED_LAG_SECONDS.set(float("inf") if heard is None else max(0.0, self.clock.now() - heard))
        return Response(exposition(), media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        name = request.path_params["name"]
        route = self.routes.get(name)
        if route is None:
            return error_response(NotFoundError("no such route"))
        deadline = asyncio.get_running_loop().time() + route.max_call_seconds
        raw = request.scope.get("raw_path") or request.url.path.encode()
        wire_path = raw.decode("latin-1")
        prefix = f"/routes/{name}"
        upstream_path = wire_path[len(prefix) :] or "/"
        principal: Principal | None = None
        slot: Slot | None = None
        forwarded: Forwarded | None = None
        try:
            client = request.client.host if request.client else None
            principal = await self.verifiers[route.name].verify(
                method=request.method, path=wire_path, route_path=upstream_path, headers=request.headers, client=client,
                authorize=False,
            )  # fmt: skip
            form = await self._admit(request, route, principal, upstream_path, client, deadline)
            assert principal.task is not None and self.store is not None  # _admit refuses calls without a task
            slot = self.in_flight.acquire(route.name, principal.task, route.max_in_flight_per_task)
            secret = await self.secrets.get(route.secret)
            call = Call(route, principal, request.method, upstream_path, started, slot)
            # recorded before anything is sent: a call the store cannot record is not made (fail closed)
            call.seq = (await self.store.append_audit(call_event(call), now=self.clock.now())).seq
            forwarded = await forward(
                self.upstream[route.name],
                route,
                method=request.method,
                path=upstream_path,
                query=request.url.query,
                headers=request.headers.items(),
                body=request.stream() if form is None else form,
                content_length=declared_length(request),
                secret=secret,
                deadline=deadline,
            )
        except MissingSecret as exc:
            log.error("route %s: vault entry `%s` is missing or unusable: %s", route.name, route.secret, exc)
            return await self._refused(request, route, principal, BadGateway("upstream credential unavailable"), started)
        except (TetherError, StoreError) as exc:
            if principal is None and isinstance(exc, OAuthError) and isinstance(exc.holder, Principal):
                principal = exc.holder  # refused after a fresh proof of possession: a revoked token
            return await self._refused(request, route, principal, exc, started)
        finally:
            if forwarded is None and slot is not None:  # refused, failed or cancelled before the relay
                slot.release()
        return Relayed(forwarded, functools.partial(self._finish, call, forwarded))

    # -- checks ----------------------------------------------------------------------------
    async def _admit(
        self, request: Request, route: GatewayRoute, principal: Principal, upstream_path: str, client: str | None,
        deadline: float,
    ) -> bytes | None:  # fmt: skip
        """Everything after the token: expiry, path, query overrides, allowlist, Cedar, form overrides,
        session, rate, cap — in that order. Returns a form body it read to check (None: not a form)."""
        assert self.store is not None
        now = self.clock.now()
        if route.expired(dt.datetime.fromtimestamp(now, dt.UTC).date()):
            raise AccessDenied(f"route `{route.name}` is a bearer exception that expired on {route.expires}")
        try:
            segments = check_path(upstream_path)
        except PathRefused as exc:
            raise InvalidRequest(f"path refused: {exc}") from exc
        check_query(request.url.query)
        if not is_allowed(route.allow, request.method, segments):
            raise AccessDenied(f"{request.method} {upstream_path[:200]} is not in the route's allowlist")
        self.verifiers[route.name].authorize_call(principal, method=request.method, path=upstream_path, client=client, now=now)
        if principal.task is None:
            raise AccessDenied("gateway calls must be bound to a task")
        form = await read_form(request, route, deadline)
        base = f"gw:{route.name}:{principal.task}"
        first = self._first_seen.get(base)
        if first is None:  # the first call's time never changes once stored: remember it
            first = await self.store.first_seen(base + ":start", now=now, until=int(now) + route.max_session_seconds + 86400)
            self._first_seen.put(base, first)
        if now - first > route.max_session_seconds:
            raise AccessDenied(f"session on route `{route.name}` exceeded {route.max_session_seconds}s")
        second = int(now)
        if await self.store.count(f"{base}:s:{second}", until=second + 2, now=now) > route.max_requests_per_second:
            raise TooManyRequests("rate limit exceeded", retry_after=1)
        total = await self.store.count(base + ":total", until=int(now) + 86400 * 2, now=now)
        if total > route.max_requests_per_task:
            refusal = TooManyRequests(f"task reached the route's cap of {route.max_requests_per_task} calls")
            refusal.audit["cap_hit"] = True
            raise refusal
        return form

    async def _refused(
        self, request: Request, route: GatewayRoute, principal: Principal | None, exc: Exception, started: float
    ) -> Response:
        response = error_response(exc, resource=True, algs=self.verifiers[route.name].settings.dpop_algs)
        self.metrics[(route.name, response.status_code)] += 1
        GATEWAY_CALLS.labels(route=route.name, status=str(response.status_code)).inc()
        GATEWAY_SECONDS.labels(route=route.name).observe(time.perf_counter() - started)
        if self.store is None:
            return response
        reason = exc.debug if isinstance(exc, OAuthError) else str(exc)
        raw = request.scope.get("raw_path") or request.url.path.encode()
        upstream_path = raw.decode("latin-1")[len(f"/routes/{route.name}") :] or "/"
        detail: dict[str, Any] = {
            "route": route.name,
            "method": request.method,
            "path": upstream_path[:200],
            "status": response.status_code,
            "decision": "refused",
            "reason": reason[:300],
            "ms": round((time.perf_counter() - started) * 1000, 2),
        }
        if principal is not None:
            detail["agent"] = principal.agent
        if isinstance(exc, OAuthError):  # markers such as replay / cap_hit, for the monitor
            detail.update({k: v for k, v in exc.audit.items() if isinstance(v, bool | int | str)})
        with contextlib.suppress(StoreError):  # unattributed refusals are counted (tether.audit.anonymous)
            await self.anonymous.record(
                AuditEvent(kind="gateway.refused", outcome="refused", principal=principal.client_id if principal else None,
                           task=principal.task if principal else None, error=_code(exc), detail=detail),
                source=request.client.host if request.client else None, now=self.clock.now(),
            )  # fmt: skip
            if principal is not None and principal.task is not None:
                await self._maybe_suspend(route, principal, exc)
        return response

    async def _maybe_suspend(self, route: GatewayRoute, principal: Principal, exc: Exception) -> None:
        assert self.store is not None and principal.task is not None
        now = self.clock.now()
        cap_hit = isinstance(exc, OAuthError) and bool(exc.audit.get("cap_hit"))
        limit = int(self.settings["suspend_after_refusals"])
        window = int(self.settings["refusal_window"])
        burst = False
        if limit > 0 and not isinstance(exc, BadGateway | GatewayTimeout):
            refusals = await self.store.count(f"gw:refusals:{principal.task}", until=int(now) + window, now=now)
            burst = refusals >= limit
        if not (burst or (cap_hit and self.settings["suspend_on_cap"])):
            return
        reason = "cap hit" if cap_hit else f"{limit} refused calls within {window}s"
        event = AuditEvent(kind="task.suspended", outcome="ok", principal=f"gateway:{route.name}", task=principal.task,
                           detail={"reason": reason, "route": route.name})  # fmt: skip
        with contextlib.suppress(NotFound, TaskNotActive):
            await self.store.end_task(principal.task, TaskState.SUSPENDED, now=now, audit=event)
            REVOCATIONS.labels(kind="task").inc()
            log.warning("task %s suspended by the gateway: %s", principal.task, reason)

    async def _finish(self, call: Call, forwarded: Forwarded) -> None:
        """After the relay, whatever became of it: free the in-flight slot, count the call and
        record its result (best effort: the call has happened)."""
        call.slot.release()
        route = call.route
        self.metrics[(route.name, forwarded.status)] += 1
        GATEWAY_CALLS.labels(route=route.name, status=str(forwarded.status)).inc()
        GATEWAY_SECONDS.labels(route=route.name).observe(time.perf_counter() - call.started)
        if forwarded.scrubbed:
            log.warning("route %s: upstream echoed the secret %d time(s); scrubbed", route.name, forwarded.scrubbed)
        if forwarded.cut == "deadline":
            log.warning("route %s: call cut at its deadline of %gs", route.name, route.max_call_seconds)
        if self.store is None:
            return
        event = result_event(call, forwarded, (time.perf_counter() - call.started) * 1000)
        try:
            await self.store.append_audit(event, now=self.clock.now())
        except StoreError as exc:
            log.error("gateway call result could not be audited: %s", exc)


def _code(exc: Exception) -> str:
    return exc.error if isinstance(exc, OAuthError) else "temporarily_unavailable"


def build_gateway(config: Config, *, clock: Clock | None = None, store: Store | None = None) -> Gateway:
    return Gateway(config, clock=clock, store=store)
