"""The MCP gateway: ``{gateway.url}/mcp/{name}`` speaks MCP to agents and forwards checked tool calls upstream.

Every HTTP request (POST, the session GET stream, DELETE) is verified like an HTTP route's:
a tether DPoP token whose audience is exactly the route URL (RFC 8707, RFC 9449), the
route still open and pinned; a refusal is a 401/403 whose ``WWW-Authenticate`` names the
route's RFC 9728 metadata (MCP authorization spec, "Protected Resource Metadata
Discovery"). The verified Principal is put on the request's state and the request handed
to the official SDK's streamable HTTP session manager (protocol 2026-07-28 single-exchange
POSTs, and the session-based earlier versions, whose ``Mcp-Session-Id`` is bound to the
caller's client, task and key so nobody else can use it).

``tools/list`` shows what a call would be admitted for; ``tools/call`` is checked
(``mcp_checks``, Cedar with the arguments, the per-task cap), recorded (``mcp.call``), made on
the caller's own upstream session (``mcp_sessions``), scrubbed of the vaulted secret and
size-capped (``mcp_results``), and recorded again (``mcp.result``). A refusal is a JSON-RPC
error ``-32003`` whose ``data`` names the OAuth error code and the tool, raised as the SDK's
``MCPError`` so any MCP client surfaces it; malformed or oversized arguments are ``-32602``.
A call held for a human's approval is ``approval_required`` with the groups and the call's
``tctx``, and an approved token serves its one call, as at ``tether.mcp.protect`` (APR-01).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from functools import partial
from typing import Any

import anyio
import mcp_types as types
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken as SdkAccessToken
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from tether.clock import Clock
from tether.config import Config
from tether.errors import (
    AccessDenied,
    InvalidRequest,
    NotFoundError,
    OAuthError,
    TemporarilyUnavailable,
    TetherError,
    TooManyRequests,
)
from tether.gateway.admission import check_bound
from tether.gateway.audit import GatewayAudit
from tether.gateway.inject import Injection, encodings
from tether.gateway.mcp_checks import (
    HeaderMismatch,
    JsonTextArgument,
    NotPinned,
    check_allowed,
    check_cap,
    check_drift,
    check_json_text,
    check_open,
    check_param_headers,
    check_pinned,
    check_rate,
    check_scope,
    visible,
)
from tether.gateway.mcp_hop import incoming_token, not_offered, upstream_refusal
from tether.gateway.mcp_owners import SDK_SESSIONS_PER_TASK, SdkSessionOwners
from tether.gateway.mcp_records import McpCall, call_event, drift_event, refusal_event, result_event
from tether.gateway.mcp_results import ResultTooLarge, result_size, scrub_json
from tether.gateway.mcp_routes import McpRoute
from tether.gateway.mcp_sessions import UpstreamSession, UpstreamSessions
from tether.gateway.mcp_wire import BodyTooLarge, ambiguity, read_body, rpc_error
from tether.gateway.proxy import BadGateway, GatewayTimeout
from tether.gateway.routes import utc_date
from tether.gateway.vault import MissingSecret, SecretCache
from tether.lru import LruCache
from tether.mcp.catalogue import pinned_view
from tether.mcp.cut import Tracked, watch
from tether.mcp.pins import PinsTampered, check_current, load_pins, pins_path
from tether.mcp.protect import approval_refusal
from tether.mcp.upstream import UpstreamError
from tether.metrics import MCP_CALLS, MCP_SESSIONS
from tether.resource.principal import Principal
from tether.resource.verifier import Verifier
from tether.rules.approval import ApprovalRequired
from tether.rules.tool_call import ToolCall, ToolCallError, missing_tool_scope, parse_tool_call
from tether.store.errors import StoreError
from tether.store.protocol import Store
from tether.streams import replay_body
from tether.web.client_cert import presented_certificate
from tether.web.errors import error_response, wire_code

__all__ = ["PRINCIPAL_STATE", "TOOL_REFUSED", "McpEndpoint", "McpService"]

log = logging.getLogger("tether.gateway")

#: JSON-RPC error code of a refused tool call (server-defined range, JSON-RPC 2.0 §5.1)
TOOL_REFUSED = -32003
#: where the verified Principal sits on the request's state for the MCP handlers
PRINCIPAL_STATE = "tether_principal"
#: how long one drift alert per (route, tool, definition) is remembered across gateway replicas
DRIFT_CLAIM_SECONDS = 30 * 86400
DAY = 86400


def _refusal(exc: OAuthError, tool: str | None) -> MCPError:
    """The JSON-RPC error of a refused call; a call held for a human approval says ``approval_required``
    and names the groups and the call's ``tctx`` (``tether.mcp.protect.approval_refusal``)."""
    if isinstance(exc, ApprovalRequired) and tool is not None:
        held = approval_refusal(exc, tool[:128], None)
        return MCPError(TOOL_REFUSED, held.message, data=held.data)
    data: dict[str, Any] = {"error": exc.error}
    if tool is not None:
        data["tool"] = tool[:128]
    scope = getattr(exc, "scope", None)
    if isinstance(scope, str) and scope:
        data["scope"] = scope
    return MCPError(TOOL_REFUSED, exc.description, data=data)


def _headers(ctx: ServerRequestContext[Any, Any]) -> Mapping[str, str]:
    return ctx.request.headers if isinstance(ctx.request, Request) else {}


def _principal(ctx: ServerRequestContext[Any, Any]) -> tuple[Principal, str | None]:
    """The Principal the HTTP layer verified for this message, and the caller's address."""
    request = ctx.request
    principal = getattr(request.state, PRINCIPAL_STATE, None) if isinstance(request, Request) else None
    if not isinstance(principal, Principal):  # never: every request is verified before the SDK sees it
        raise MCPError(TOOL_REFUSED, "unauthenticated", data={"error": "invalid_token"})
    assert isinstance(request, Request)
    return principal, request.client.host if request.client else None


class McpService:
    """Every MCP route of one gateway, their upstream sessions and what they share."""

    def __init__(
        self, config: Config, *, clock: Clock, store: Store, verifiers: Mapping[str, Verifier], sessions: UpstreamSessions,
        secrets: SecretCache, audit: GatewayAudit,
    ) -> None:  # fmt: skip
        self.config = config
        self.clock = clock
        self.store = store
        self.secrets = secrets
        self.audit = audit
        self.sessions = sessions
        self.endpoints = {
            route.name: McpEndpoint(self, route, verifiers[route.name]) for route in config.mcp_routes
        }  # fmt: skip
        self._drift_seen: LruCache[str, bool] = LruCache(10_000)  # claims already made (or lost) here

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Serve: the SDK session managers' task groups and the upstream session sweeper."""
        async with contextlib.AsyncExitStack() as stack:
            for endpoint in self.endpoints.values():
                await stack.enter_async_context(endpoint.manager.run())
            self.sessions.on_sweep.append(self.end_sdk_sessions)
            self.sessions.start()
            stack.push_async_callback(self.sessions.aclose)
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.endpoints.get(scope.get("path_params", {}).get("name", ""))
        if endpoint is None:
            await error_response(NotFoundError("no such MCP route"))(scope, receive, send)
            return
        await endpoint(scope, receive, send)

    async def metadata(self, request: Request) -> Response:
        """RFC 9728 §3: the protected resource metadata of ``/mcp/{name}`` (resource = the route URL)."""
        endpoint = self.endpoints.get(request.path_params["name"])
        if endpoint is None:
            return error_response(NotFoundError("no such MCP route"))
        return JSONResponse(endpoint.verifier.metadata())

    async def end_sdk_sessions(self) -> None:
        """Called by the sweeper: terminate the SDK sessions of every task the revocation feed lists (F3)."""
        ended = self.sessions.feed.tasks
        for endpoint in self.endpoints.values():
            await endpoint.owners.end_tasks(ended)

    async def secret_of(self, route: McpRoute) -> str | None:
        if not route.secret:
            return None
        try:
            return await self.secrets.get(route.secret)
        except MissingSecret as exc:
            log.error("MCP route %s: vault entry `%s` is missing or unusable: %s", route.name, route.secret, exc)
            raise BadGateway("upstream credential unavailable") from exc

    def observe(self) -> None:
        """Set the open-sessions gauge (at scrape time)."""
        for name in self.endpoints:
            MCP_SESSIONS.labels(route=name).set(sum(1 for key in self.sessions.sessions if key[0] == name))

    async def refused(
        self, route: McpRoute, principal: Principal | None, exc: Exception, *, method: str, tool: str | None,
        digest: str | None, status: int | None, started: float, source: str | None, pinned: bool = False,
    ) -> None:  # fmt: skip
        """Count and record a refusal (attributed only to a caller who proved possession)."""
        MCP_CALLS.labels(route=route.name, tool=tool if pinned and tool else "-", outcome=wire_code(exc)).inc()
        ms = (time.perf_counter() - started) * 1000
        event = refusal_event(route, principal, exc, method=method, tool=tool, digest=digest, status=status, ms=ms)
        await self.audit.record_refusal(event, f"mcp:{route.name}", principal, exc, source=source)

    async def drifted(self, route: McpRoute, principal: Principal, tool: str, pinned: str, current: str | None) -> None:
        """Record ``mcp.drift`` (outcome ``alert``) once per (route, tool, current and pinned definition), across
        replicas; the monitor's ``mcp_drift`` detector turns it into an ``alert.raised`` (``tether alerts``)."""
        claim = f"mcp-drift:{route.name}:{tool}:{current or '-'}:{pinned}"
        if self._drift_seen.get(claim):
            return
        now = self.clock.now()
        try:
            first = await self.store.first_use(claim, until=int(now) + DRIFT_CLAIM_SECONDS, now=now)
        except StoreError:
            return  # the call is refused anyway; the next one tries again
        self._drift_seen.put(claim, True)
        if not first:
            return
        event = drift_event(route, principal, tool, pinned=pinned, current=current)
        log.warning("%s", event.detail["reason"])
        await self.audit.append_quietly(event)  # the monitor's mcp_drift detector raises the alert from it


class McpEndpoint:
    """One MCP route: the HTTP-level checks, the SDK server and its session manager."""

    def __init__(self, service: McpService, route: McpRoute, verifier: Verifier) -> None:
        self.service = service
        self.route = route
        self.verifier = verifier
        self.path = f"/mcp/{route.name}"
        self.metadata_url = f"{service.config.gateway.url}/.well-known/oauth-protected-resource/mcp/{route.name}"
        self.server: Server[Any] = Server(
            f"tether-gateway/{route.name}",
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            get_tool_input_schema=lambda name: None,  # no second tools/list outside the caller's checks
        )
        self.manager = StreamableHTTPSessionManager(
            app=self.server,
            json_response=True,
            session_idle_timeout=route.session_idle_seconds,
            # arguments are capped by the rules (refused with a clear error); the body limit only
            # keeps a runaway request from being parsed at all
            max_request_body_size=max(65536, 4 * route.max_argument_bytes),
            # one task holds at most SDK_SESSIONS_PER_TASK of them (``mcp_owners``): the route's
            # max_sessions tasks can each hold their quota
            max_sessions=max(64, SDK_SESSIONS_PER_TASK * route.max_sessions),
        )
        self.owners = SdkSessionOwners(self.manager, route.name)
        self._needles: tuple[str | None, list[bytes]] = (None, [])
        self._pins: tuple[object, Mapping[str, str]] | None = None

    # -- HTTP --------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        started = time.perf_counter()
        client = request.client.host if request.client else None
        wire_path = (scope.get("raw_path") or request.url.path.encode()).decode("latin-1")
        principal: Principal | None = None
        try:
            principal = await self.verifier.verify(method=request.method, path=wire_path, route_path=self.path,
                                                   headers=request.headers, client=client, authorize=False,
                                                   certificate=presented_certificate(scope, self.verifier.proxies))  # fmt: skip
            check_bound(principal.task)
            check_open(self.route, utc_date(self.service.clock.now()))
            await self.pins()
        except (TetherError, StoreError) as exc:
            if principal is None and isinstance(exc, OAuthError) and isinstance(exc.holder, Principal):
                principal = exc.holder  # refused after a fresh proof of possession: a revoked token
            response = self.verifier.refusal(exc, request.headers, resource_metadata=self.metadata_url)
            await self.service.refused(self.route, principal, exc, method=request.method, tool=None, digest=None,
                                       status=response.status_code, started=started, source=client)  # fmt: skip
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})[PRINCIPAL_STATE] = principal
        # the SDK binds an Mcp-Session-Id to the credential that opened it: here the agent
        # session (client, task, DPoP key and/or certificate), so another caller's requests on it answer 404
        owner = f"{principal.client_id} task={principal.task} {principal.binding}"
        scope["user"] = AuthenticatedUser(SdkAccessToken(token=principal.jti, client_id=owner, scopes=[],
                                                         subject=principal.subject))  # fmt: skip
        if request.method == "POST":
            body = await self.strict_body(request, send, principal, started, client)
            if body is None:
                return
            receive = replay_body(body, receive)
        task = check_bound(principal.task)
        opening = _opens_session(request)
        if opening:
            try:
                self.owners.reserve(task)
            except TooManyRequests as exc:
                await self.service.refused(self.route, principal, exc, method=request.method, tool=None, digest=None,
                                           status=exc.status, started=started, source=client)  # fmt: skip
                answer = rpc_error(None, types.INVALID_REQUEST, exc.description, exc.status, {"error": exc.error})
                answer.headers["Retry-After"] = str(exc.retry_after)
                await answer(scope, receive, send)
                return
        reserved = [opening]  # until the session it opens is bound (or the request is over)
        try:
            await self.serve_watched(scope, receive, send, principal, reserved=reserved, started=started, client=client)
        finally:
            if reserved[0]:
                self.owners.release(task)

    async def serve_watched(
        self, scope: Scope, receive: Receive, send: Send, principal: Principal, *, reserved: list[bool],
        started: float, client: str | None,
    ) -> None:  # fmt: skip
        """Hand the request to the SDK while watching the caller's task and token (``tether.mcp.cut``,
        as ``protect`` does): when the task ends or the token expires an open response (the session
        GET stream, a long SSE answer) is ended and its handling cancelled. A session the SDK opens
        is bound to the caller's task (``mcp_owners``), so the sweeper can end it with the task; its
        reservation becomes the binding at once (the client may open the next before this returns)."""
        task = check_bound(principal.task)

        def bind(message: Message) -> None:
            named = Headers(raw=message.get("headers", [])).get("mcp-session-id")
            if reserved[0] and named is not None and message.get("status", 500) < 400:
                self.owners.bind(task, named)
                reserved[0] = False
                self.owners.release(task)

        out = Tracked(send, on_start=bind)
        cut: list[OAuthError] = []
        failure: list[Exception] = []
        async with anyio.create_task_group() as group:
            group.start_soon(partial(watch, self.verifier, principal, group.cancel_scope, cut))
            try:
                await self.manager.handle_request(scope, receive, out)
            except Exception as error:  # noqa: BLE001 -- re-raised below, outside the task group (no exception group)
                failure.append(error)
            group.cancel_scope.cancel()
        if cut:
            reason = cut[0]
            # an expiry or a task end mid-stream is not the agent's misbehaviour: no suspension burst
            reason.audit.update(stream_cut=True, blameless=True)
            status = None if out.started else reason.status
            await self.service.refused(self.route, principal, reason, method=str(scope.get("method")), tool=None,
                                       digest=None, status=status, started=started, source=client)  # fmt: skip
            if out.started:
                await out.end()
            else:
                response = self.verifier.refusal(reason, Headers(scope=scope), resource_metadata=self.metadata_url)
                await response(scope, receive, send)
            return
        if failure:
            raise failure[0]

    async def strict_body(
        self, request: Request, send: Send, principal: Principal, started: float, client: str | None
    ) -> bytes | None:
        """The POST body, read whole and judged strictly before the SDK parses it (``mcp_wire``);
        None when it was refused (answered and audited here)."""
        limit = self.manager.max_request_body_size
        try:
            body = await read_body(request.stream(), limit)
        except BodyTooLarge:
            answer = rpc_error(None, types.INVALID_REQUEST, f"the request body exceeds {limit} bytes", 413)
            await answer(request.scope, request.receive, send)
            return None
        ambiguous = ambiguity(body)
        if ambiguous is None:
            return body
        refusal = InvalidRequest(f"the request is ambiguous JSON ({ambiguous.reason}); refused")
        await self.service.refused(self.route, principal, refusal, method=ambiguous.method, tool=ambiguous.tool,
                                   digest=None, status=400, started=started, source=client)  # fmt: skip
        answer = rpc_error(ambiguous.ident, types.INVALID_PARAMS, refusal.description, 400, {"error": "invalid_request"})
        await answer(request.scope, request.receive, send)
        return None

    async def pins(self) -> Mapping[str, str]:
        """The pinned catalogue (tool → digest); a route without a usable one serves nothing.

        Read again whenever the pin file changes (a re-pin applies at once, no restart); a
        file that does not verify, or that is older than the newest approval the audit log
        records for the route (a file written back from before a re-pin), is refused on every
        request until the route is re-pinned."""
        config, name = self.service.config, self.route.name
        try:
            stat = pins_path(config, name).stat()
        except FileNotFoundError:
            stat = None
        signature = None if stat is None else (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if signature is not None and self._pins is not None and self._pins[0] == signature:
            return self._pins[1]
        try:
            catalogue = load_pins(config, name)
            if catalogue is not None:
                check_current(catalogue, await self.service.store.mcp_pin_latest_audit(name))
        except PinsTampered as exc:
            log.error("MCP route %s: the pinned catalogue failed its integrity check: %s", name, exc)
            raise NotPinned(f"MCP route `{name}`: its pinned tool catalogue failed its integrity check; "
                            "an operator must re-pin it", debug=str(exc)[:300]) from exc  # fmt: skip
        if catalogue is None:
            raise NotPinned(f"MCP route `{name}` has no pinned tool catalogue: an operator must review and pin it")
        self._pins = (signature, catalogue.tools)
        return catalogue.tools

    def _pinned(self, tool: str) -> bool:
        """Whether ``tool`` is in the pins last loaded (only such names become metric labels: a bounded set)."""
        return self._pins is not None and tool in self._pins[1]

    # -- MCP ---------------------------------------------------------------------------------
    def could_see_any(self, principal: Principal, client: str | None, pins: Mapping[str, str]) -> bool:
        """Whether any pinned tool could be listed for this caller: allowlisted, granted by the
        scope convention and by Cedar (which needs only the name). Decided before an upstream is
        started, so a caller who may call nothing costs no process (review finding F5)."""
        now = self.service.clock.now()
        for name in pins:
            if not self.route.allows(name):
                continue
            if self.route.scope_prefix and missing_tool_scope(principal.scopes, name, self.route.scope_prefix):
                continue
            try:
                self.verifier.authorize_call(principal, method="POST", path=self.path, client=client, now=now, tool=name)
            except AccessDenied:
                continue
            return True
        return False

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        """Only tools the caller could call: allowlisted, pinned and undrifted, granted by scope and Cedar."""
        principal, client = _principal(ctx)
        started = time.perf_counter()
        route = self.route
        try:
            pins = await self.pins()
            if not self.could_see_any(principal, client, pins):
                return types.ListToolsResult(tools=[])
            session = await self.service.sessions.get(route, principal, incoming_token(_headers(ctx)))
            digests = dict(await self.service.sessions.relist(session))
            now = self.service.clock.now()
            tools = []
            for name, definition in session.definitions.items():
                current = digests[name]
                if route.allows(name) and name in pins and pins[name] != current:
                    await self.service.drifted(route, principal, name, pins[name], current)
                if not visible(route, pins, principal.scopes, name, current):
                    continue
                try:
                    self.verifier.authorize_call(principal, method="POST", path=self.path, client=client, now=now, tool=name)
                except AccessDenied:
                    continue
                try:  # only what the pin covers: `_meta`, `icons`, `execution` could change unseen (review F6)
                    tools.append(types.Tool.model_validate(pinned_view(definition)))
                except ValidationError:
                    log.warning("MCP route %s: upstream tool `%s` is not a valid MCP tool; not listed", route.name, name)
            for name, pinned in pins.items():
                if name not in digests and route.allows(name) and not route.hop:  # a hop upstream lists per caller
                    await self.service.drifted(route, principal, name, pinned, None)
        except (TetherError, StoreError) as exc:
            refusal = exc if isinstance(exc, OAuthError) else error_of(exc)
            await self.service.refused(route, principal, refusal, method="tools/list", tool=None, digest=None, status=None,
                                       started=started, source=client)  # fmt: skip
            raise _refusal(refusal, None) from None
        return types.ListToolsResult(tools=tools)

    async def call_tool(self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        principal, client = _principal(ctx)
        started = time.perf_counter()
        route = self.route
        try:
            call = parse_tool_call({"name": params.name, "arguments": params.arguments}, max_bytes=route.max_argument_bytes)
        except ToolCallError as exc:
            invalid = InvalidRequest(str(exc))
            await self.service.refused(route, principal, invalid, method="tools/call", tool=params.name, digest=None,
                                       status=None, started=started, source=client)  # fmt: skip
            raise MCPError(
                types.INVALID_PARAMS, str(exc), data={"error": "invalid_request", "tool": params.name[:128]}
            ) from None
        try:
            session = await self.admit(principal, call, client, _headers(ctx))
            record = McpCall(route, principal, call, started)
            record.seq = await self.service.audit.append(call_event(record))
        except (TetherError, StoreError) as exc:
            refusal = exc if isinstance(exc, OAuthError) else error_of(exc)
            await self.service.refused(route, principal, refusal, method="tools/call", tool=call.name, digest=call.digest,
                                       status=None, started=started, source=client,
                                       pinned=self._pinned(call.name))  # fmt: skip
            if isinstance(refusal, HeaderMismatch):  # the transport's own error code (400), as the SDK's checks
                raise MCPError(types.HEADER_MISMATCH, refusal.description, data={"error": refusal.error}) from None
            if isinstance(refusal, JsonTextArgument):  # invalid params, as tether.mcp.protect answers it
                raise MCPError(
                    types.INVALID_PARAMS, refusal.description, data={"error": refusal.error, "tool": call.name}
                ) from None
            raise _refusal(refusal, call.name) from None
        return await self.forward(session, record)

    async def admit(
        self, principal: Principal, call: ToolCall, client: str | None, headers: Mapping[str, str]
    ) -> UpstreamSession:
        """Every check of a tools/call, in order; the caller's upstream session once all pass."""
        route = self.route
        now = self.service.clock.now()
        check_open(route, utc_date(now))
        check_allowed(route, call.name)
        pins = await self.pins()
        pinned = check_pinned(route, pins, call.name)
        check_scope(route, principal.scopes, call.name)
        required = self.verifier.authorize_call(principal, method="POST", path=self.path, client=client, now=now, call=call)
        session = await self.service.sessions.get(route, principal, incoming_token(headers))
        current = session.digests.get(call.name)
        if current is None and (hidden := not_offered(route, call.name)) is not None:
            raise hidden
        if current != pinned:
            await self.service.drifted(route, principal, call.name, pinned, current)
        check_drift(route, call.name, pinned, current)
        check_json_text(session.definitions.get(call.name, {}), call)
        check_param_headers(session.definitions.get(call.name, {}), call, headers)
        task = check_bound(principal.task)
        base = f"mcp:{route.name}:{task}"
        second = int(now)
        check_rate(route, await self.service.store.count(f"{base}:s:{second}", until=second + 2, now=now))
        check_cap(route, await self.service.store.count(base + ":total", until=int(now) + DAY * 2, now=now))
        # last, once every other check passed: a token issued under approval serves this one call (APR-01)
        await self.verifier.spend_approval(principal, required=required, call=call, now=now)
        return session

    async def forward(self, session: UpstreamSession, record: McpCall) -> types.CallToolResult:
        """Make the recorded call upstream; scrub, cap, record and return its result."""
        route, call = self.route, record.call
        sessions = self.service.sessions
        session.busy += 1
        try:
            result = await asyncio.wait_for(session.upstream.call_tool(call.name, dict(call.arguments), timeout=route.timeout),
                                            route.timeout + 1)  # fmt: skip
            secret = session.secret
            cleaned, scrubbed = scrub_json(result, self._secret_forms(secret))
            if scrubbed:
                log.warning(
                    "MCP route %s: upstream echoed the secret %d time(s) in a tool result; scrubbed", route.name, scrubbed
                )
            size = result_size(cleaned)
            if size > route.max_result_bytes:
                raise ResultTooLarge(f"the tool result ({size} bytes) exceeds the route's cap of {route.max_result_bytes} "
                                     "bytes; it was not returned")  # fmt: skip
            try:
                answer = types.CallToolResult.model_validate(cleaned)
            except ValidationError as exc:
                raise BadGateway("the MCP upstream returned an invalid tool result", debug=str(exc)[:300]) from exc
        except (TimeoutError, UpstreamError, OSError, OAuthError) as exc:
            refusal: OAuthError
            if isinstance(exc, OAuthError):
                refusal = exc
            elif isinstance(exc, TimeoutError):
                refusal = GatewayTimeout(f"the tool did not answer within {route.timeout:g}s")
            elif isinstance(exc, UpstreamError) and (denied := upstream_refusal(route, exc)) is not None:
                refusal = denied
            else:
                refusal = BadGateway("the MCP upstream failed the call", debug=str(exc)[:300])
            if isinstance(exc, TimeoutError) or not session.upstream.alive:  # hung or dead: the next call gets a fresh one
                await sessions.close(session.key, f"call failed: {refusal.error}")
            ms = (time.perf_counter() - record.started) * 1000
            MCP_CALLS.labels(route=route.name, tool=call.name, outcome=refusal.error).inc()
            await self.service.audit.append_quietly(result_event(record, outcome="error", ms=ms, size=0, scrubbed=0,
                                                                 error=refusal.debug))  # fmt: skip
            raise _refusal(refusal, call.name) from None
        finally:
            session.busy -= 1
            session.last_used = time.monotonic()
        outcome = "error" if answer.is_error else "ok"
        ms = (time.perf_counter() - record.started) * 1000
        MCP_CALLS.labels(route=route.name, tool=call.name, outcome=outcome).inc()
        await self.service.audit.append_quietly(result_event(record, outcome=outcome, ms=ms, size=size, scrubbed=scrubbed))
        return answer

    def _secret_forms(self, secret: str | None) -> list[bytes]:
        if secret is None:
            return []
        if self._needles[0] != secret:
            self._needles = (secret, encodings(secret, self.route.injection or Injection(mode="header")))
        return self._needles[1]


def _opens_session(request: Request) -> bool:
    """Whether the SDK would open a new transport session for this request: a POST naming no
    ``Mcp-Session-Id`` in the session-based protocol (no version header, or a handshake version;
    2026-07-28 requests are single exchanges and open none)."""
    if request.method != "POST" or "mcp-session-id" in request.headers:
        return False
    version = request.headers.get("mcp-protocol-version")
    return version is None or version in HANDSHAKE_PROTOCOL_VERSIONS


def error_of(exc: Exception) -> OAuthError:
    """A store failure (or any other typed failure) as the refusal the client sees."""
    return TemporarilyUnavailable("the gateway cannot decide right now; retry shortly", debug=str(exc)[:300])
