"""The approvers' API (``/approvals…``): list, read, approve, deny, and an SSE stream per approval.

Approvers are humans: they send the organisation's OIDC ID token as ``Authorization: Bearer``
(RFC 6750 §2.1; ``identity.approvers``); a bad or missing one is 401 ``invalid_token`` with a
``Bearer`` challenge (RFC 6750 §3). A tether admin sends its DPoP-bound admin token as for
``/tasks`` (RFC 9449 §7.1) and may read everything, decide nothing. An agent waiting on a held
request may follow its approval's stream with its own bound token for that task.
Errors are RFC 6749 §5.2 bodies (``web.errors``); refusals are audited as ``approval.refused``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections import Counter
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from tether.errors import (
    AccessDenied,
    InvalidRequest,
    InvalidToken,
    NotFoundError,
    OAuthError,
    TetherError,
    TooManyRequests,
    UseDPoPNonce,
)
from tether.metrics import REFUSALS
from tether.model import AccessToken, ApprovalStatus
from tether.rules.approval import Approver, valid_approval_id
from tether.rules.jws import JWSError, b64url_decode, strict_json_loads
from tether.store.errors import StoreError
from tether.sts.approvals import Admin, Viewer, decide, get_approval, list_approvals, sealed
from tether.sts.auth import is_admin, require_admin
from tether.sts.context import StsContext
from tether.sts.routes.common import Endpoint, authenticate_token, client_address, context, nonce_headers
from tether.web.dpop_request import authorization
from tether.web.errors import NO_STORE, error_response, request_scheme, wire_code
from tether.web.forms import read_json

__all__ = [
    "AUDIT_KIND",
    "ApprovalStreams",
    "Slot",
    "approval_decide_endpoint",
    "approval_endpoint",
    "approval_events_endpoint",
    "approvals_api",
    "approvals_endpoint",
]

log = logging.getLogger("tether.sts")

AUDIT_KIND = "approval.refused"
_APPROVE_FIELDS = frozenset({"uses", "window", "reason"})
_DENY_FIELDS = frozenset({"reason"})


def approvals_api(fn: Endpoint) -> Endpoint:
    """Like ``routes.common.endpoint``, but a refusal's challenge is ``Bearer`` first for approver
    requests (RFC 6750 §3), and a refusal of a proven approver is attributed to them."""
    name = fn.__name__.removesuffix("_endpoint")

    @functools.wraps(fn)
    async def handler(request: Request) -> Response:
        ctx = context(request)
        try:
            return await fn(request)
        except (TetherError, StoreError) as exc:
            return await refusal(request, ctx, exc, name=name, path=request.url.path[:200])

    return handler


async def refusal(
    request: Request, ctx: StsContext, exc: Exception, *, name: str, path: str, challenge: bool = True
) -> Response:
    """Count, audit (``approval.refused``) and render one refusal; ``path`` never carries a link.
    ``challenge``: a protected resource's status and ``WWW-Authenticate`` (not for the link pages)."""
    REFUSALS.labels(endpoint=name, error=wire_code(exc)).inc()
    # approvers use Bearer: every request but a DPoP one gets the Bearer challenge first (RFC 6750 §3)
    scheme = "dpop" if request_scheme(request.headers.get("authorization")) == "dpop" else "bearer"
    if isinstance(exc, OAuthError) and not isinstance(exc, UseDPoPNonce):
        principal = getattr(request.state, "approver", None)
        try:
            await ctx.refuse(exc, kind=AUDIT_KIND, principal=principal, detail={"path": path}, source=client_address(request))
        except StoreError as store_exc:
            exc = store_exc
    return error_response(exc, resource=challenge, algs=ctx.proofs.algorithms, scheme=scheme, bearer=True)


def _issued_by_us(ctx: StsContext, token: str) -> bool:
    """Whether a Bearer token claims to be one of our own (certificate-bound, RFC 8705 §3); only picks the verifier."""
    try:
        claims = strict_json_loads(b64url_decode(token.split(".")[1])) if token.count(".") == 2 else None
    except (JWSError, ValueError):
        return False
    return isinstance(claims, dict) and claims.get("iss") == ctx.settings.issuer


async def _tether_caller(request: Request) -> AccessToken:
    ctx = context(request)
    return await authenticate_token(request, method=request.method, url=ctx.settings.issuer + request.url.path)


async def _approver(request: Request, token: str) -> Approver:
    ctx = context(request)
    if ctx.approvers is None:
        raise InvalidToken("approvers are not configured here (`[approvals] issuer`)")
    approver = await ctx.approvers.verify(token, now=ctx.now())
    request.state.approver = approver.principal
    return approver


async def _caller(request: Request) -> Viewer | AccessToken:
    """The approver (Bearer ID token), or the tether token the request carries (admin or agent)."""
    ctx = context(request)
    scheme, token = authorization(request.headers)
    if scheme == "dpop" or (scheme == "bearer" and _issued_by_us(ctx, token)):
        return await _tether_caller(request)
    if scheme != "bearer":
        raise InvalidToken("approvers present their ID token with the bearer scheme", debug=f"scheme {scheme[:20]}")
    return await _approver(request, token)


async def _viewer(request: Request) -> Viewer:
    """An approver, or an admin the policy allows to read approvals (``admin`` operation ``approvals.read``)."""
    caller = await _caller(request)
    if isinstance(caller, AccessToken):
        ctx = context(request)
        require_admin(ctx, caller, operation="approvals.read", client=client_address(request))
        return Admin(caller.sub)
    return caller


def _json(request: Request, body: object, *, dpop: bool) -> Response:
    headers = {**NO_STORE, **(nonce_headers(context(request)) if dpop else {})}
    return JSONResponse(body, headers=headers)


def _limit(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 1000:  # isdigit alone takes "²"
        raise InvalidRequest("`limit` must be an integer from 1 to 1000")
    return int(raw)


@approvals_api
async def approvals_endpoint(request: Request) -> Response:
    """``GET /approvals?status=&task=&limit=&before=``: newest first, those the caller may see."""
    ctx = context(request)
    viewer = await _viewer(request)
    query = request.query_params
    approvals = await list_approvals(
        ctx,
        viewer,
        status=query.get("status"),
        task=query.get("task"),
        limit=_limit(query.get("limit", "100")),
        before=query.get("before"),
    )
    now = ctx.now()
    return _json(request, {"approvals": [a.as_json(now) for a in approvals]}, dpop=isinstance(viewer, Admin))


@approvals_api
async def approval_endpoint(request: Request) -> Response:
    """``GET /approvals/{id}``."""
    ctx = context(request)
    viewer = await _viewer(request)
    approval = await get_approval(ctx, viewer, request.path_params["approval_id"])
    return _json(request, approval.as_json(ctx.now()), dpop=isinstance(viewer, Admin))


def _body(raw: dict[str, object], allowed: frozenset[str]) -> dict[str, object]:
    unknown = set(raw) - allowed
    if unknown:
        raise InvalidRequest(f"unknown field `{sorted(unknown)[0]:.40}`")
    return raw


@approvals_api
async def approval_decide_endpoint(request: Request) -> Response:
    """``POST /approvals/{id}/approve`` ``{"uses","window","reason"}`` · ``POST /approvals/{id}/deny`` ``{"reason"}``."""
    ctx = context(request)
    action = request.path_params["action"]
    if action not in ("approve", "deny"):
        raise NotFoundError("no such approval action")
    caller = await _caller(request)
    if not isinstance(caller, Approver):
        raise AccessDenied("only an approver (an ID token from the approvers' provider) can decide")
    empty = "content-type" not in request.headers and request.headers.get("content-length", "0") == "0"
    raw = {} if empty else await read_json(request)
    body = _body(raw, _APPROVE_FIELDS if action == "approve" else _DENY_FIELDS)
    approval = await decide(
        ctx,
        caller,
        request.path_params["approval_id"],
        action,
        uses=body.get("uses", 1),
        window=body.get("window", 0),
        reason=body.get("reason", ""),
    )
    return _json(request, approval.as_json(ctx.now()), dpop=False)


# -- the SSE stream -----------------------------------------------------------------------


@dataclass
class ApprovalStreams:
    """Open approval streams of this process, capped in number (globally and per caller) and in seconds."""

    max_streams: int = 200
    max_per_caller: int = 10
    seconds: float = 300.0
    #: how often a stream re-reads its approval
    poll: float = 0.5
    _per_caller: Counter[str] = field(default_factory=Counter)

    def join(self, caller: str) -> Slot:
        if sum(self._per_caller.values()) >= self.max_streams:
            raise TooManyRequests("too many approval streams are open; retry later", retry_after=5)
        if self._per_caller[caller] >= self.max_per_caller:
            raise TooManyRequests("too many approval streams for this caller", retry_after=5)
        self._per_caller[caller] += 1
        return Slot(self, caller)

    def _leave(self, caller: str) -> None:
        self._per_caller[caller] -= 1
        if self._per_caller[caller] <= 0:
            del self._per_caller[caller]


@dataclass
class Slot:
    """One open stream's place; released once, when its events end or its response does (whichever is first)."""

    streams: ApprovalStreams
    caller: str
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.streams._leave(self.caller)


def streams_of(request: Request) -> ApprovalStreams:
    state = request.app.state
    streams: ApprovalStreams | None = getattr(state, "approval_streams", None)
    if streams is None:
        streams = state.approval_streams = ApprovalStreams()
    return streams


def _event(body: object) -> bytes:
    return f"event: approval\ndata: {json.dumps(body, separators=(',', ':'))}\n\n".encode()


async def _events(ctx: StsContext, approval_id: str, slot: Slot) -> AsyncGenerator[bytes, None]:
    """The approval now, then on every change; ends once it is decided or expired, or at the stream's deadline.

    The slot is released as the events end, before the response's last message: a client that
    saw the stream end may open the next one at once."""
    streams = slot.streams
    loop = asyncio.get_running_loop()
    deadline = loop.time() + streams.seconds
    last: object = None
    try:
        while True:
            approval = await ctx.store.get_approval(approval_id)
            if approval is None or not sealed(ctx, approval):
                return
            now = ctx.now()
            body = approval.as_json(now)
            if body != last:
                last = body
                yield _event(body)
            if approval.effective_status(now) is not ApprovalStatus.PENDING or loop.time() >= deadline:
                return
            await asyncio.sleep(min(streams.poll, max(0.0, deadline - loop.time())))
    except StoreError as exc:
        log.warning("approval stream ended: %s", exc)
    finally:
        slot.release()


class _StreamResponse(StreamingResponse):
    """The SSE response of one approval stream; its slot is freed however the response ends."""

    def __init__(self, ctx: StsContext, approval_id: str, slot: Slot) -> None:
        super().__init__(
            _events(ctx, approval_id, slot),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        self.slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()


@approvals_api
async def approval_events_endpoint(request: Request) -> Response:
    """``GET /approvals/{id}/events``: for an approver or admin who may see it, or the agent of its task.

    The agent authenticates with its own bound token for the approval's task (as at ``/tasks``:
    DPoP proof with ``ath``, revocation checked); any other token sees ``not_found``."""
    ctx = context(request)
    approval_id = request.path_params["approval_id"]
    caller = await _caller(request)
    viewer: str
    if isinstance(caller, AccessToken):
        approval = await ctx.store.get_approval(approval_id) if valid_approval_id(approval_id) else None
        mine = approval is not None and caller.txn == approval.task
        if approval is None or not sealed(ctx, approval) or not (mine or is_admin(ctx, caller)):
            raise NotFoundError("approval not found", debug=f"approval `{approval_id:.40}` not visible to this token")
        if not mine:
            require_admin(ctx, caller, operation="approvals.read", client=client_address(request))
        viewer = caller.sub
    else:
        approval = await get_approval(ctx, caller, approval_id)
        viewer = caller.principal
    await ctx.store.ping()
    return _StreamResponse(ctx, approval.id, streams_of(request).join(viewer))
