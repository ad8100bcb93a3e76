"""``tether gateway``: a reverse proxy that holds legacy secrets and injects them into checked calls.

Per request: the hop token and DPoP proof are verified for the route's own audience, the call
is admitted (``tether.gateway.gate``) and recorded (``tether.gateway.audit``), the vaulted
secret is injected — on an OAuth route, an upstream access token for the call's narrowest scope,
held per task and revoked when it ends (``tether.gateway.oauth_tokens``, FED-04) — and the answer
is relayed back scrubbed. MCP routes (``[[gateway.mcp]]``)
are served at ``/mcp/{name}`` by ``tether.gateway.mcp_serve`` (imported only when configured:
the MCP SDK is an optional extra). ``GET /metrics`` is unauthenticated; its labels are route
names, tool names from pinned catalogues and statuses, never principals.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tether.agent.identity import IdentitySource
from tether.clock import Clock, SystemClock
from tether.config import Config
from tether.errors import NotFoundError, OAuthError, TetherError
from tether.gateway.allowlist import check_path
from tether.gateway.audit import GatewayAudit
from tether.gateway.forms import declared_length
from tether.gateway.gate import Gate
from tether.gateway.inflight import InFlight, Slot
from tether.gateway.mcp_routes import McpRoute
from tether.gateway.oauth_tokens import UpstreamTokens
from tether.gateway.proxy import BadGateway, Forwarded, GatewayTimeout, forward
from tether.gateway.records import Call
from tether.gateway.redact import SecretRedactor
from tether.gateway.relay import Relayed
from tether.gateway.routes import GatewayRoute, route_warnings, utc_date
from tether.gateway.runtime import Runtime, open_runtime
from tether.gateway.upstream_oauth import UpstreamOAuth
from tether.gateway.vault import MissingSecret, SecretCache, opened_marks, put_secret
from tether.keys.sealed import load_master_key
from tether.logs import add_secret_source
from tether.metrics import CONTENT_TYPE, FEED_LAG_SECONDS, exposition
from tether.policy.engine import PolicyEngine
from tether.resource.principal import Principal
from tether.store.errors import StoreError
from tether.store.open import open_store
from tether.store.protocol import Store
from tether.web.client_cert import presented_certificate
from tether.web.errors import error_response, handle_http, handle_unexpected

if TYPE_CHECKING:
    from tether.gateway.mcp_serve import McpService

__all__ = ["Gateway", "build_gateway"]

log = logging.getLogger("tether.gateway")


class Gateway:
    def __init__(self, config: Config, *, clock: Clock | None = None, store: Store | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.routes = {route.name: route for route in config.routes}
        # a credential = "hop" route needs the gateway's own workload identity: refused now, not at first call
        self.hop_identity: IdentitySource | None = None
        if any(route.hop for route in config.mcp_routes):
            from tether.gateway.mcp_hop import gateway_identity  # the optional MCP extra

            self.hop_identity = gateway_identity(config)
        self.master = load_master_key(config.master_key_file)
        self.vault_marks = opened_marks(config)  # read now: one the gateway cannot read stops its start
        self.policy = PolicyEngine(config.policy_dir, mode=config.policy.mode)
        self.settings = config.gateway
        self._store = store
        self.run: Runtime | None = None
        self.redactor = SecretRedactor()
        self.in_flight = InFlight()
        self.audit = GatewayAudit(config, self.clock)
        self.mcp: McpService | None = None
        #: upstream OAuth tokens, when a route has an ``oauth`` table (``tether.gateway.oauth_tokens``)
        self.oauth: UpstreamTokens | None = None
        self._sweeping: asyncio.Task[None] | None = None
        self.app = self._app()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        if self.run is not None:
            return
        # httpx and httpcore log request URLs (which carry the secret with query injection) and
        # raw upstream headers (before scrubbing): every secret opened is redacted from them.
        self.redactor.install()
        add_secret_source(self.redactor)  # and from every other logger, through the root handler (tether.logs)
        store = self._store or await open_store(self.config)
        self.run = await open_runtime(self.config, store, clock=self.clock, policy=self.policy)
        self.feed = self.run.feed
        self.secrets = SecretCache(store, self.master, self.vault_marks, ttl=float(self.settings.secret_cache_seconds),
                                   on_open=self.redactor.register)  # fmt: skip
        self.gate = Gate(store, self.run.verifiers)
        self.audit.start(store)
        if any(route.oauth is not None for route in self.routes.values()):
            self._start_oauth()
        if self.config.mcp_routes:
            from tether.gateway.mcp_hop import HopCredentials
            from tether.gateway.mcp_serve import McpService  # the optional MCP extra
            from tether.gateway.mcp_sessions import UpstreamSessions

            hop = None
            if self.hop_identity is not None:
                hop = HopCredentials(self.config.issuer, self.hop_identity, self.run.http, clock=self.clock)
            sessions = UpstreamSessions(self.feed, self._mcp_secret, hop=hop)
            self.mcp = McpService(self.config, clock=self.clock, store=store, verifiers=self.run.mcp_verifiers,
                                  sessions=sessions, secrets=self.secrets, audit=self.audit)  # fmt: skip
        for warning in route_warnings(tuple(self.routes.values()), utc_date(self.clock.now())):
            log.warning("bearer exception: %s", warning)

    def _start_oauth(self) -> None:
        """Upstream OAuth tokens per task: fetched on a call, dropped and revoked when the feed ends the task."""
        assert self.run is not None
        client = UpstreamOAuth(self.run.http, self.secrets, self._rotate, clock=self.clock,
                               retired=self.redactor.unregister)  # fmt: skip
        self.oauth = UpstreamTokens(client, self.routes, self.audit, clock=self.clock, ended=self.feed.ended,
                                    register=self.redactor.register, unregister=self.redactor.unregister)  # fmt: skip
        self.feed.task_listeners.append(self.oauth.task_ended)
        self._sweeping = asyncio.create_task(self._sweep(self.oauth))

    async def _rotate(self, route: str, name: str, value: str) -> None:
        """Seal a refresh token the upstream rotated: a new vault version, audited as ``vault.rotated``."""
        assert self.run is not None
        self.redactor.register(value)
        await put_secret(self.run.store, self.master, name, value.encode(), now=self.clock.now(),
                         actor=f"gateway:{route}")  # fmt: skip

    @staticmethod
    async def _sweep(tokens: UpstreamTokens) -> None:
        while True:
            await asyncio.sleep(1.0)
            tokens.sweep()

    async def stop(self) -> None:
        if self.run is None:
            return
        if self._sweeping is not None:
            self._sweeping.cancel()
        if self.oauth is not None:
            await self.oauth.aclose()  # before the audit and the HTTP client close: it revokes and records
        await self.audit.stop()
        await self.run.aclose()
        self.run = self.audit.store = None

    def _app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            await self.start()
            try:
                async with self.mcp.running() if self.mcp is not None else contextlib.nullcontext():
                    yield  # MCP upstreams are stopped before the store closes
            finally:
                await self.stop()

        methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        return Starlette(
            routes=[
                Route("/routes/{name}/{rest:path}", self.handle, methods=methods),
                Route("/routes/{name}", self.handle, methods=methods),
                Route("/.well-known/oauth-protected-resource/routes/{name}", self.metadata, methods=["GET"]),
                Route("/mcp/{name}", _McpApp(self), methods=["GET", "POST", "DELETE"]),
                Route("/.well-known/oauth-protected-resource/mcp/{name}", self.mcp_metadata, methods=["GET"]),
                Route("/healthz", self.health, methods=["GET"]),
                *([Route("/metrics", self.scrape, methods=["GET"])] if self.config.metrics.enabled else []),
            ],
            lifespan=lifespan,
            exception_handlers={HTTPException: handle_http, Exception: handle_unexpected},
        )

    # -- endpoints -------------------------------------------------------------------------
    async def metadata(self, request: Request) -> Response:
        route = self.routes.get(request.path_params["name"])
        if route is None:
            return error_response(NotFoundError("no such route"))
        assert self.run is not None
        return JSONResponse(self.run.verifiers[route.name].metadata())

    async def mcp_metadata(self, request: Request) -> Response:
        if self.mcp is None:
            return error_response(NotFoundError("no such MCP route"))
        return await self.mcp.metadata(request)

    async def _mcp_secret(self, route: McpRoute) -> str | None:
        assert self.mcp is not None
        return await self.mcp.secret_of(route)

    async def health(self, request: Request) -> Response:
        """Status only (200, or 503 when the store is down): it is unauthenticated, and route
        names say which legacy systems sit behind the gateway."""
        assert self.run is not None
        try:
            await self.run.store.ping()
        except StoreError as exc:
            return error_response(exc)
        return JSONResponse({"status": "ok"})

    async def scrape(self, request: Request) -> Response:
        """Prometheus text exposition; the feed lag is measured now, at scrape time."""
        heard = self.feed.last_heard if self.run is not None else None
        FEED_LAG_SECONDS.set(float("inf") if heard is None else max(0.0, self.clock.now() - heard))
        if self.mcp is not None:
            self.mcp.observe()
        return Response(exposition(), media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        route = self.routes.get(request.path_params["name"])
        if route is None:
            return error_response(NotFoundError("no such route"))
        assert self.run is not None  # served between start and stop
        verifier, upstream = self.run.verifiers[route.name], self.run.upstream[route.name]
        deadline = asyncio.get_running_loop().time() + route.max_call_seconds
        wire_path = (request.scope.get("raw_path") or request.url.path.encode()).decode("latin-1")
        path = wire_path[len(f"/routes/{route.name}") :] or "/"  # exactly what the upstream is sent
        client = request.client.host if request.client else None
        principal: Principal | None = None
        slot: Slot | None = None
        forwarded: Forwarded | None = None
        try:
            principal = await verifier.verify(
                method=request.method, path=wire_path, route_path=path, headers=request.headers, client=client,
                authorize=False, certificate=presented_certificate(request.scope, verifier.proxies),
            )  # fmt: skip
            form = await self.gate.admit(request, route, principal, path=path, client=client, deadline=deadline,
                                         now=self.clock.now())  # fmt: skip
            assert principal.task is not None  # admit refuses calls without a task
            slot = self.in_flight.acquire(route.name, principal.task, route.max_in_flight_per_task)
            secret, also = await self._credential(route, principal, request.method, path, deadline)
            call = Call(route, principal, request.method, path, started, slot)
            call.seq = await self.audit.call(call)
            forwarded = await forward(upstream, route, method=request.method, path=path,
                                      query=request.url.query, headers=request.headers.items(),
                                      body=request.stream() if form is None else form,
                                      content_length=declared_length(request), secret=secret, deadline=deadline,
                                      also=also)  # fmt: skip
        except (TetherError, StoreError) as exc:
            refusal: Exception = exc
            if isinstance(exc, MissingSecret):
                log.error("route %s: a vault entry is missing or unusable: %s", route.name, exc)
                refusal = BadGateway("upstream credential unavailable")
            elif principal is None and isinstance(exc, OAuthError) and isinstance(exc.holder, Principal):
                principal = exc.holder  # refused after a fresh proof of possession: a revoked token
            response = verifier.refusal(refusal, request.headers)
            await self.audit.refused(route, principal, refusal, method=request.method, path=path,
                                     status=response.status_code, started=started, source=client)  # fmt: skip
            return response
        finally:
            if forwarded is None and slot is not None:  # refused, failed or cancelled before the relay
                slot.release()
        return Relayed(forwarded, functools.partial(self._finish, call, forwarded))

    async def _credential(
        self, route: GatewayRoute, principal: Principal, method: str, path: str, deadline: float
    ) -> tuple[str, tuple[str, ...]]:
        """What is injected (the vaulted secret, or an upstream access token for this call's scope)
        and the other values scrubbed from the answer (an OAuth route's client secret and refresh token).

        Waiting for the token counts against the call's ``max_call_seconds``: a route's refreshes are
        single-flight, so behind a hanging token endpoint calls would otherwise queue for one
        ``timeout`` each (504 at the deadline; the fetch itself goes on for the other waiters)."""
        if route.oauth is None:
            return await self.secrets.get(route.secret), ()
        assert self.oauth is not None
        waiting = asyncio.timeout_at(deadline)
        try:
            async with waiting:
                token = await self.oauth.token_for(route, principal, method, check_path(path))
        except TimeoutError:
            if not waiting.expired():
                raise
            raise GatewayTimeout("upstream authorization did not answer in time",
                                 debug=f"route {route.name}: no upstream token by the call's deadline") from None  # fmt: skip
        return token, await self.oauth.client.also_scrub(route)

    async def _finish(self, call: Call, forwarded: Forwarded) -> None:
        """After the relay, whatever became of it: free the in-flight slot, count and record the call."""
        call.slot.release()
        await self.audit.result(call, forwarded)


class _McpApp:
    """``/mcp/{name}`` as a raw ASGI app (the SDK answers it), served by the gateway's MCP service once started."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        mcp = self.gateway.mcp
        if mcp is None:
            await error_response(NotFoundError("no such MCP route"))(scope, receive, send)
            return
        await mcp(scope, receive, send)


def build_gateway(config: Config, *, clock: Clock | None = None, store: Store | None = None) -> Gateway:
    return Gateway(config, clock=clock, store=store)
