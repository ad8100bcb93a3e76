"""An MCP server as a tether resource server: ``protect(server, verifier)`` (MCP authorization spec 2026-07-28).

What the wrapper owes, in the order a request meets it:

* RFC 9728 metadata at ``/.well-known/oauth-protected-resource`` and at the path-suffixed
  ``/.well-known/oauth-protected-resource/mcp`` (RFC 9728 §3.1; MCP-09), naming the STS.
* Every HTTP request — each POST, the GET SSE stream, DELETE — is verified by the
  ``Verifier``: a DPoP-bound token (RFC 9449) and/or a certificate-bound one (RFC 8705 §3,
  honoured only with the client certificate of this connection or of a trusted proxy's
  RFC 9440 header; those headers from anyone else are removed before the server sees them)
  for exactly this server's URL (MCP-02, MCP-10; a session id is never authentication). A
  refusal is 401 with a ``DPoP`` challenge (``Bearer`` for a Bearer-scheme request) naming
  ``resource_metadata`` (RFC 9728 §5.1), so an MCP client can discover the STS.
* The POSTed JSON-RPC message is read (bounded) and parsed strictly before the server sees it
  (``tether.mcp.messages``). For ``tools/call``: the arguments are capped and canonicalized
  (``parse_tool_call``, MCP-15), the scope convention asks for ``tool:<name>`` (403
  ``insufficient_scope`` whose ``scope`` names every scope needed, RFC 6750 §3.1, MCP-09),
  then Cedar decides on the tool and its arguments; a refusal is a JSON-RPC error and the
  tool never runs. An allowed body is replayed to the server byte for byte.
* Held calls (SECURITY APR-01, ``rules.approval.check_call``): a call a ``@approval`` permit
  determines needs a token issued under a human approval for exactly it (``apr`` and
  ``tctx``), else it is refused with ``data.error = "approval_required"`` naming the groups and
  the call's ``tctx`` (the agent asks the STS for a token for this call and waits); a ``tctx``
  token for another call is ``access_denied`` ("the call differs from the one approved"); a
  token carrying ``apr`` serves one ``tools/call`` (its ``jti`` spent in the replay cache).
  Other MCP methods are not tool calls: a held tool is still listed. Any other route of the
  wrapped app (an SDK server's ``custom_route``) is a plain HTTP call, checked as the resource
  SDK checks one: a ``tctx`` token serves none, and a route a ``@approval`` permit holds is
  served once per approved token.
* ``tools/list`` answers are filtered to the tools the caller may call (``tether.mcp.listing``).
* A task that ends cuts its session: the next message fails verification, and a response
  still streaming (the GET stream, a long ``tools/call`` over SSE) is ended within
  ``cut_interval`` and the server's handling of it cancelled.

Why not the MCP SDK's own ``AuthSettings``/``token_verifier``: its ``BearerAuthBackend`` reads
``Authorization: Bearer`` and hands the verifier the token alone — it never sees the method,
the URL or the ``DPoP`` header, so it cannot check a proof of possession (RFC 9449 §7), and a
``DPoP``-scheme request does not reach it. Tether verifies at the ASGI edge instead, where the
whole request is visible, and needs nothing from the SDK (it is imported by no module here).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import anyio
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from tether.errors import AccessDenied, InsufficientScope, OAuthError, TetherError, TooManyRequests
from tether.mcp.cut import DEFAULT_CUT_INTERVAL, Tracked, watch
from tether.mcp.listing import DEFAULT_MAX_LISTING_BYTES, FilterError, SseRewriter, Target, filter_json
from tether.mcp.messages import (
    ACCESS_DENIED,
    HEADER_MISMATCH,
    INVALID_PARAMS,
    INVALID_REQUEST,
    JsonRpcRefusal,
    Message,
    RequestId,
    header_value,
    parse_message,
)
from tether.mcp.sessions import DEFAULT_MAX_SESSIONS, DEFAULT_SESSIONS_PER_OWNER, SessionOwners
from tether.resource.approvals import POLICY_DENIAL, ApprovalSpent, approval_fields
from tether.resource.middleware import METADATA_PATH, verifier_lifespan
from tether.resource.principal import Principal
from tether.resource.verifier import Verifier
from tether.rules.approval import ApprovalRequired
from tether.rules.tool_call import (
    DEFAULT_MAX_ARGUMENT_BYTES,
    DEFAULT_SCOPE_PREFIX,
    ToolCall,
    ToolCallError,
    json_text_argument,
    json_text_refusal,
    missing_tool_scope,
    parse_tool_call,
)
from tether.streams import replay_body
from tether.throttle import LogThrottle
from tether.web.client_cert import presented_certificate, strip_client_cert_headers
from tether.web.errors import wire_code

__all__ = ["APPROVAL_REQUIRED", "DEFAULT_CUT_INTERVAL", "DEFAULT_MAX_BODY_BYTES", "ProtectedMCP", "approval_refusal", "protect"]

#: ``data.error`` of a tools/call held for a human approval (the agent asks for a token for exactly this call)
APPROVAL_REQUIRED = "approval_required"

log = logging.getLogger("tether.mcp")
#: refusals of callers who proved nothing: at most this many log lines per this many seconds
UNPROVEN_LOG_BURST, UNPROVEN_LOG_INTERVAL = 50, 10.0

#: the largest POST body read before the server sees it (the MCP SDK's own default cap)
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
_JSON = "application/json"
_SSE = "text/event-stream"
#: RFC 6455 §7.4.1 policy violation: MCP has no WebSocket transport to verify
_CLOSE_REFUSED = 1008


@runtime_checkable
class _StreamableServer(Protocol):
    """An ``mcp`` SDK server (``MCPServer`` or lowlevel ``Server``), recognised without importing the SDK."""

    def streamable_http_app(self, *, streamable_http_path: str = "/mcp") -> ASGIApp: ...


def protect(
    app_or_server: ASGIApp | _StreamableServer,
    verifier: Verifier,
    *,
    path: str = "/mcp",
    scope_prefix: str | None = DEFAULT_SCOPE_PREFIX,
    max_argument_bytes: int = DEFAULT_MAX_ARGUMENT_BYTES,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_listing_bytes: int = DEFAULT_MAX_LISTING_BYTES,
    cut_interval: float = DEFAULT_CUT_INTERVAL,
    max_sessions: int = DEFAULT_MAX_SESSIONS,
    max_sessions_per_owner: int = DEFAULT_SESSIONS_PER_OWNER,
    input_schema: Callable[[str], Mapping[str, Any] | None] | None = None,
    **app_options: Any,
) -> ProtectedMCP:
    """Serve an MCP server's streamable HTTP transport as a tether resource server.

    ``app_or_server`` is an ``mcp`` SDK server (its ``streamable_http_app`` is built at ``path``
    with ``app_options``, e.g. ``stateless_http=True``, ``json_response=True``) or any ASGI app
    that speaks MCP streamable HTTP at ``path``. ``verifier.settings.resource`` must be the
    server's MCP URL (``https://host/mcp``): it is the tokens' audience. ``scope_prefix=None``
    turns the ``tool:<name>`` scope convention off (Cedar alone decides). ``input_schema`` gives a
    tool's input schema by name (an SDK server's own is used when it is not given): an argument
    holding JSON text is refused unless the schema declares it a string (MCP-15), and with no
    schema known every such argument is refused. ``max_sessions`` bounds the session-based
    protocol's sessions, ``max_sessions_per_owner`` those of one (subject, agent, task): an
    ``initialize`` beyond either is refused with ``too_many_requests`` (``tether.mcp.sessions``)."""
    if isinstance(app_or_server, _StreamableServer):
        if input_schema is None:
            lowlevel = getattr(app_or_server, "_lowlevel_server", app_or_server)
            input_schema = getattr(lowlevel, "get_tool_input_schema", None)
        # the SDK turns on its DNS-rebinding Host check (localhost names only) for a localhost ``host``:
        # the server is named by its resource URL, so that is the host it is reached by
        app_options.setdefault("host", urlsplit(verifier.settings.resource).hostname or "127.0.0.1")
        app: ASGIApp = app_or_server.streamable_http_app(streamable_http_path=path, **app_options)
    elif app_options:
        raise TypeError(f"options {sorted(app_options)} apply to an mcp SDK server, not to an ASGI app")
    else:
        app = app_or_server
    return ProtectedMCP(
        app,
        verifier,
        path=path,
        scope_prefix=scope_prefix,
        max_argument_bytes=max_argument_bytes,
        max_body_bytes=max_body_bytes,
        max_listing_bytes=max_listing_bytes,
        cut_interval=cut_interval,
        max_sessions=max_sessions,
        max_sessions_per_owner=max_sessions_per_owner,
        input_schema=input_schema,
    )


class ProtectedMCP:
    """The ASGI app ``protect`` returns; see the module docstring for what it enforces."""

    def __init__(
        self,
        app: ASGIApp,
        verifier: Verifier,
        *,
        path: str = "/mcp",
        scope_prefix: str | None = DEFAULT_SCOPE_PREFIX,
        max_argument_bytes: int = DEFAULT_MAX_ARGUMENT_BYTES,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_listing_bytes: int = DEFAULT_MAX_LISTING_BYTES,
        cut_interval: float = DEFAULT_CUT_INTERVAL,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_sessions_per_owner: int = DEFAULT_SESSIONS_PER_OWNER,
        input_schema: Callable[[str], Mapping[str, Any] | None] | None = None,
    ) -> None:
        if not path.startswith("/"):
            raise ValueError("path must start with '/'")
        resource_path = urlsplit(verifier.settings.resource).path.rstrip("/")
        if resource_path and resource_path != path.rstrip("/"):
            raise ValueError(f"the verifier's resource {verifier.settings.resource} is not served at {path}")
        self.app = app
        self.verifier = verifier
        self.path = path.rstrip("/") or "/"
        self.scope_prefix = scope_prefix
        self.max_argument_bytes = max_argument_bytes
        self.max_body_bytes = max_body_bytes
        self.max_listing_bytes = max_listing_bytes
        self.cut_interval = cut_interval
        self.input_schema = input_schema
        #: refusals nobody proved to own: logged at most once per interval
        self._unproven = LogThrottle(log, logging.INFO, interval=UNPROVEN_LOG_INTERVAL, burst=UNPROVEN_LOG_BURST)
        #: which principal each MCP session belongs to (MCP-10: a session id is never authentication)
        self.sessions = SessionOwners(max_sessions, per_owner=max_sessions_per_owner)
        #: RFC 9728 §3.1: the well-known path is inserted between the host and the resource's path
        self.metadata_paths = frozenset({METADATA_PATH, METADATA_PATH + resource_path})
        self.metadata_url = verifier.settings.origin + METADATA_PATH + resource_path

    # -- ASGI -------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, self._lifespan(receive), send)
            return
        if kind != "http":
            if kind == "websocket":
                await send({"type": "websocket.close", "code": _CLOSE_REFUSED, "reason": "invalid_request"})
                return
            raise TetherError(f"ASGI scope type {str(kind)[:40]!r} is not served by tether.mcp")
        strip_client_cert_headers(scope, self.verifier.proxies)
        if scope["path"] in self.metadata_paths and scope["method"] == "GET":
            await _send_json(send, 200, self.verifier.metadata())
            return
        await self.verifier.start()
        principal = await self._verify(scope, receive, send)
        if principal is None:
            return
        scope.setdefault("state", {})["principal"] = principal
        on_mcp_path = (scope["path"].rstrip("/") or "/") == self.path
        session_id = Headers(scope=scope).get("mcp-session-id") if on_mcp_path else None
        if session_id is not None and not self.sessions.allows(session_id, principal):
            _audit("session not the caller's", error="invalid_request", principal=principal, method=scope["method"])
            await _send_bytes(send, 404, JsonRpcRefusal(INVALID_REQUEST, "Session not found").body())
            return
        if session_id is not None:
            self.sessions.opened(session_id)  # an open request (the GET stream) keeps its binding alive
        try:
            await self._serve(scope, receive, send, principal, on_mcp_path=on_mcp_path, session_id=session_id)
        finally:
            if session_id is not None:
                self.sessions.closed(session_id)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, principal: Principal, *, on_mcp_path: bool,
        session_id: str | None,
    ) -> None:  # fmt: skip
        if not on_mcp_path or scope["method"] != "POST":
            target: Target = None  # a GET stream may replay (resume) a listing: any listing in it is filtered
            rewrite = on_mcp_path and scope["method"] == "GET"
            await self._run(scope, receive, send, principal, listing=rewrite, target=target)
            return
        body = await self._read_body(scope, receive, send, principal)
        if body is None:
            return
        try:
            message, call = self._judge(scope, body, principal)
            if call is not None and message is not None:
                await self._spend(message, call, principal)
        except JsonRpcRefusal as refusal:
            await _send_bytes(send, refusal.status, refusal.body())
            return
        except OAuthError as exc:  # insufficient scope, or a policy (or replay cache) that cannot decide right now
            await self._refuse(exc, scope, receive, send)
            return
        listing = message is not None and message.is_request and message.method == "tools/list"
        target = message.request_id if message is not None else None
        opening = session_id is None and message is not None and message.is_request and message.method == "initialize"
        if opening:
            feed = self.verifier.feed
            try:
                self.sessions.admit(principal, feed.tasks if feed is not None else ())
            except TooManyRequests as exc:  # this owner's quota, or the server's: nobody else's binding is evicted
                _audit("session refused", error=exc.error, principal=principal, code=INVALID_REQUEST)
                full = JsonRpcRefusal(INVALID_REQUEST, exc.description, request_id=target, status=exc.status,
                                      data={"error": exc.error})  # fmt: skip
                await _send_bytes(send, full.status, full.body())
                return
        reserved = [opening]  # until the session it opens is bound (or the request is over)
        try:
            await self._run(scope, replay_body(body, receive), send, principal, listing=listing, target=target,
                            reserved=reserved)  # fmt: skip
        finally:
            if reserved[0]:
                self.sessions.release(principal)

    async def _verify(self, scope: Scope, receive: Receive, send: Send) -> Principal | None:
        raw_path = scope.get("raw_path")
        wire_path = raw_path.decode("latin-1") if isinstance(raw_path, bytes) and raw_path else scope["path"]
        client = scope.get("client")
        try:
            return await self.verifier.verify(
                method=scope["method"],
                path=wire_path,
                route_path=scope["path"],
                headers=Headers(scope=scope),
                client=client[0] if client else None,
                certificate=presented_certificate(scope, self.verifier.proxies),
                # on the MCP path approvals are checked per tools/call (``_authorize``); any other route of
                # the app is a plain HTTP call (APR-01): a tctx token serves none, a held one needs an apr token
                per_message=(scope["path"].rstrip("/") or "/") == self.path,
            )
        except TetherError as exc:  # a refusal, or a shared replay cache that cannot answer (fail closed)
            holder = exc.holder if isinstance(exc, OAuthError) and isinstance(exc.holder, Principal) else None
            # a caller who proved nothing gets no line of its own: an unauthenticated flood would fill the disk
            _audit("request refused", error=wire_code(exc), principal=holder, method=scope["method"],
                   throttle=None if holder is not None else self._unproven)  # fmt: skip
            await self._refuse(exc, scope, receive, send)
            return None

    async def _refuse(self, exc: Exception, scope: Scope, receive: Receive, send: Send) -> None:
        response = self.verifier.refusal(exc, Headers(scope=scope), resource_metadata=self.metadata_url)
        await response(scope, receive, send)

    # -- the message --------------------------------------------------------------------
    async def _read_body(self, scope: Scope, receive: Receive, send: Send, principal: Principal) -> bytes | None:
        """The whole POST body, or None once a 413 was sent (declared or read past the cap)."""
        declared = Headers(scope=scope).get("content-length")
        too_large = JsonRpcRefusal(INVALID_REQUEST, f"the request body exceeds {self.max_body_bytes} bytes", status=413)
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            _audit("body too large", error="invalid_request", principal=principal, code=too_large.code)
            await _send_bytes(send, 413, too_large.body())
            return None
        parts: list[bytes] = []
        size = 0
        while True:
            event = await receive()
            if event["type"] == "http.disconnect":
                return None
            chunk = event.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                _audit("body too large", error="invalid_request", principal=principal, code=too_large.code)
                await _send_bytes(send, 413, too_large.body())
                return None
            parts.append(chunk)
            if not event.get("more_body", False):
                return b"".join(parts)

    def _judge(self, scope: Scope, body: bytes, principal: Principal) -> tuple[Message | None, ToolCall | None]:
        """Decide on one POSTed message; raises ``JsonRpcRefusal`` or an ``OAuthError`` to refuse.
        Returns the message and, for an allowed ``tools/call``, the call."""
        try:
            message = parse_message(body)
        except JsonRpcRefusal as refusal:
            _audit("malformed message", error="invalid_request", principal=principal, code=refusal.code)
            raise
        headers = Headers(scope=scope)
        declared_method = headers.get("mcp-method")
        if declared_method is not None and declared_method != message.method:
            _audit("header mismatch", error="invalid_request", principal=principal, code=HEADER_MISMATCH)
            raise JsonRpcRefusal(
                HEADER_MISMATCH, "Mcp-Method header does not match the body's method", request_id=message.request_id
            )
        if message.method != "tools/call":
            return message, None
        if not message.is_request:
            _audit("tools/call notification", error="invalid_request", principal=principal, code=INVALID_REQUEST)
            raise JsonRpcRefusal(INVALID_REQUEST, "tools/call must be a request (with an id)")
        try:
            call = parse_tool_call(message.params, max_bytes=self.max_argument_bytes)
        except ToolCallError as exc:
            tool = _tool_name(message.params)
            _audit("invalid tool call", error="invalid_request", principal=principal, tool=tool, code=INVALID_PARAMS)
            raise JsonRpcRefusal(INVALID_PARAMS, f"Invalid params: {exc}", request_id=message.request_id) from None
        smuggled = json_text_argument(call.arguments, self.input_schema(call.name) if self.input_schema else None)
        if smuggled is not None:
            _audit("JSON text argument", error="invalid_request", principal=principal, call=call, code=INVALID_PARAMS)
            raise JsonRpcRefusal(INVALID_PARAMS, json_text_refusal(smuggled), request_id=message.request_id)
        declared_name = headers.get("mcp-name")
        if declared_name is not None and header_value(declared_name) != call.name:
            _audit("header mismatch", error="invalid_request", principal=principal, call=call, code=HEADER_MISMATCH)
            raise JsonRpcRefusal(
                HEADER_MISMATCH, "Mcp-Name header does not match the tool called", request_id=message.request_id
            )
        self._authorize(scope, message, call, principal)
        return message, call

    def _authorize(self, scope: Scope, message: Message, call: ToolCall, principal: Principal) -> None:
        if self.scope_prefix is not None:
            missing = missing_tool_scope(principal.scopes, call.name, self.scope_prefix)
            if missing is not None:
                # one challenge naming every scope needed: those held plus the missing one (RFC 6750 §3.1, MCP-09)
                needed = " ".join(sorted(principal.scopes | {missing}))
                _audit("tool scope missing", error="insufficient_scope", principal=principal, call=call)
                raise InsufficientScope(f"scope `{missing}` is required to call this tool", scope=needed)
        client = scope.get("client")
        try:
            self.verifier.authorize_call(
                principal,
                method="POST",
                path=scope["path"],
                client=client[0] if client else None,
                now=self.verifier.clock.now(),
                call=call,
            )
        except ApprovalRequired as exc:
            _audit("tool call held for approval", error=APPROVAL_REQUIRED, principal=principal, call=call, code=ACCESS_DENIED)
            raise approval_refusal(exc, call.name, message.request_id) from None
        except AccessDenied as exc:
            _audit("tool call denied", error="access_denied", principal=principal, call=call, code=ACCESS_DENIED)
            # the policy's refusal keeps its words; an approved token used for another call says so (APR-01)
            text = f"tool call denied by policy: {call.name}" if exc.description == POLICY_DENIAL else exc.description
            raise JsonRpcRefusal(
                ACCESS_DENIED, text, request_id=message.request_id, data={"error": "access_denied", "tool": call.name}
            ) from None
        except OAuthError as exc:
            _audit("tool call undecided", error=wire_code(exc), principal=principal, call=call)
            raise

    async def _spend(self, message: Message, call: ToolCall, principal: Principal) -> None:
        """A token issued under approval serves this one call and no other (APR-01; ``Verifier.spend_approval``)."""
        try:
            await self.verifier.spend_approval(principal, required=(), call=call, now=self.verifier.clock.now())
        except ApprovalSpent as exc:
            _audit("approved token reused", error="access_denied", principal=principal, call=call, code=ACCESS_DENIED)
            raise JsonRpcRefusal(
                ACCESS_DENIED, exc.description, request_id=message.request_id,
                data={"error": "access_denied", "tool": call.name},
            ) from None  # fmt: skip

    def _visible(self, scope: Scope, principal: Principal) -> Callable[[str], bool]:
        """May ``tools/list`` show this tool to this caller: the scope convention, then Cedar with the tool alone."""
        client = scope.get("client")
        now = self.verifier.clock.now()

        def visible(name: str) -> bool:
            try:
                parse_tool_call({"name": name})  # a name tether would refuse to call is not shown
            except ToolCallError:
                return False
            if self.scope_prefix is not None and missing_tool_scope(principal.scopes, name, self.scope_prefix):
                return False
            try:
                self.verifier.authorize_call(
                    principal, method="POST", path=scope["path"], client=client[0] if client else None, now=now, tool=name
                )
            except AccessDenied:
                return False
            except OAuthError as exc:
                raise FilterError(f"policy cannot decide ({exc.error})") from None
            return True

        return visible

    # -- the response -------------------------------------------------------------------
    async def _run(
        self, scope: Scope, receive: Receive, send: Send, principal: Principal, *, listing: bool, target: Target,
        reserved: list[bool] | None = None,
    ) -> None:  # fmt: skip
        """Run the server, watching the caller's task while the response is open (the mid-session cut)."""
        out = Tracked(send, on_start=self._session_binder(scope, principal, reserved))
        cut: list[OAuthError] = []
        failure: list[BaseException] = []
        async with anyio.create_task_group() as group:
            inner: Send = out
            if listing:
                visible = self._visible(scope, principal)
                inner = _ListingFilter(out, visible, target, self.max_listing_bytes, stop=group.cancel_scope.cancel)
            group.start_soon(partial(watch, self.verifier, principal, group.cancel_scope, cut, interval=self.cut_interval))
            try:
                await self.app(scope, receive, inner)
            except Exception as error:  # noqa: BLE001 -- re-raised below, outside the task group (no exception group)
                failure.append(error)
            group.cancel_scope.cancel()
        if cut:
            reason = cut[0]
            _audit("stream cut", error=wire_code(reason), principal=principal, method=scope["method"])
            if out.started:
                await out.end()
            else:
                await self._refuse(reason, scope, receive, send)
            return
        if failure:
            raise failure[0]

    def _session_binder(
        self, scope: Scope, principal: Principal, reserved: list[bool] | None = None
    ) -> Callable[[AsgiMessage], None]:
        """Bind a session the server names to the caller; forget one the caller deleted. A session
        opened under a reservation (``SessionOwners.admit``) turns it into the binding at once: the
        client may open its next session before this request's handling has wound down."""
        asked = Headers(scope=scope).get("mcp-session-id")
        on_mcp_path = (scope["path"].rstrip("/") or "/") == self.path

        def on_start(message: AsgiMessage) -> None:
            if not on_mcp_path:
                return
            named = Headers(raw=message.get("headers", [])).get("mcp-session-id")
            if scope["method"] == "DELETE" and asked is not None and 200 <= message.get("status", 0) < 300:
                self.sessions.forget(asked)
            elif named is not None and (asked is None or named == asked):
                self.sessions.bind(named, principal)
                if reserved is not None and reserved[0]:
                    reserved[0] = False
                    self.sessions.release(principal)

        return on_start

    def _lifespan(self, receive: Receive) -> Receive:
        return verifier_lifespan(self.verifier, receive)


class _ListingFilter:
    """A ``send`` that filters ``tools/list`` answers: a JSON body whole, an SSE stream event by event."""

    def __init__(
        self, send: Send, visible: Callable[[str], bool], target: Target, limit: int, *, stop: Callable[[], None]
    ) -> None:
        self.send = send
        #: cancels the server's handling once the response had to be ended early
        self.stop = stop
        self.visible = visible
        self.target = target
        self.limit = limit
        self.mode = "pass"
        self.start: AsgiMessage | None = None
        self.parts: list[bytes] = []
        self.size = 0
        self.sse: SseRewriter | None = None
        self.done = False

    async def __call__(self, message: AsgiMessage) -> None:
        if self.done:
            return
        if message["type"] == "http.response.start":
            content_type = Headers(raw=message.get("headers", [])).get("content-type", "").split(";")[0].strip().lower()
            if message.get("status") == 200 and content_type == _JSON:
                self.mode, self.start = "json", message
                return
            if content_type == _SSE:
                self.mode, self.sse = "sse", SseRewriter(self.visible, self.target, limit=self.limit)
                message = {**message, "headers": _without_length(message.get("headers", []))}
            await self.send(message)
            return
        if message["type"] != "http.response.body":
            await self.send(message)
            return
        chunk: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        if self.mode == "json":
            await self._json(chunk, more)
        elif self.mode == "sse":
            assert self.sse is not None
            out = self.sse.feed(chunk)
            if self.sse.failed:  # an event too large to filter: the stream ends after the error event
                self.done = True
                await self.send({"type": "http.response.body", "body": out, "more_body": False})
                self.stop()
                return
            if not more:
                out += self.sse.close()
            await self.send({"type": "http.response.body", "body": out, "more_body": more})
        else:
            await self.send(message)

    async def _json(self, chunk: bytes, more: bool) -> None:
        assert self.start is not None
        self.size += len(chunk)
        if self.size > self.limit:
            body = filter_json(b"", self.visible, self.target)  # not JSON: withheld with an error
            self.done = True
        elif more:
            self.parts.append(chunk)
            return
        else:
            body = filter_json(b"".join([*self.parts, chunk]), self.visible, self.target)
        headers = [*_without_length(self.start.get("headers", [])), (b"content-length", str(len(body)).encode())]
        await self.send({**self.start, "headers": headers})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})


def approval_refusal(exc: ApprovalRequired, tool: str, request_id: RequestId | None) -> JsonRpcRefusal:
    """The JSON-RPC error of a held tools/call: the code of a policy refusal, and ``data`` naming
    the groups that must approve and the ``tctx`` of this call, so the agent can request a token
    for exactly it (``authorization_details``, RFC 9396) and wait for the approval."""
    data: dict[str, Any] = {"error": APPROVAL_REQUIRED, "tool": tool, "groups": list(exc.groups), "tctx": exc.tctx}
    return JsonRpcRefusal(ACCESS_DENIED, f"tool call needs a human approval: {tool}", request_id=request_id, data=data)


def _without_length(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in headers if k.lower() != b"content-length"]


def _tool_name(params: object) -> str | None:
    name = params.get("name") if isinstance(params, dict) else None
    return name[:128] if isinstance(name, str) else None


def _audit(
    what: str,
    *,
    error: str,
    principal: Principal | None = None,
    call: ToolCall | None = None,
    tool: str | None = None,
    code: int | None = None,
    method: str | None = None,
    throttle: LogThrottle | None = None,
) -> None:
    """One structured record per refusal (through ``throttle`` when given): never the arguments, only
    their digest (RFC 8785 + SHA-256)."""
    fields: dict[str, Any] = {
        "mcp_event": what,
        "error": error,
        "tool": call.name if call is not None else tool,
        "arguments_digest": call.digest if call is not None else None,
        "principal": (principal.actor or principal.client_id) if principal is not None else None,
        "subject": principal.subject if principal is not None else None,
        "task": principal.task if principal is not None else None,
        "jsonrpc_code": code,
        "http_method": method,
        **(approval_fields(principal) if principal is not None else {}),
    }
    tool = f" tool {fields['tool']}" if fields["tool"] else ""
    message = f"mcp {what}: {error}{tool} by {fields['principal'] or 'unverified caller'} (task {fields['task'] or '-'})"
    extra = {k: v for k, v in fields.items() if v is not None}
    if throttle is not None:
        throttle.emit(message, extra=extra)
    else:
        log.info("%s", message, extra=extra)


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _send_bytes(send: Send, status: int, payload: bytes) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
