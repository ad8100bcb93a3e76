"""``POST /revocations``, ``POST /revocations/stream``, ``POST /policies``: for registered workloads only.

The feed names task and token ids and ``/policies`` is the whole Cedar set, so both are for the
workloads that enforce them: an admin, a ``[[resources]]`` principal or one in ``[revocations]
subscribers``, authenticated as at ``/introspect`` with a fresh RFC 7523 client assertion in
the form body (never the URL). Anyone else gets ``access_denied``; the old ``GET`` forms answer
``invalid_client``. Streams are served by the process's ``FeedHub``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from tether.errors import AccessDenied, InvalidClient, InvalidRequest, NotFoundError
from tether.sts.auth import authenticate_client
from tether.sts.context import StsContext
from tether.sts.feed import MAX_HEARTBEAT_SECONDS, PAGE, FeedHub, Subscription, clamp_heartbeat
from tether.sts.routes.common import context, endpoint
from tether.web.errors import NO_STORE
from tether.web.forms import Form, read_form

__all__ = ["policies_endpoint", "revocations_endpoint", "revocations_stream_endpoint"]

AUDIT_KIND = "feed.refused"


def hub(request: Request) -> FeedHub:
    feed: FeedHub = request.app.state.feed
    return feed


async def _subscriber(ctx: StsContext, feed: FeedHub, request: Request) -> tuple[Form, str]:
    """The request's form and its authenticated, registered caller (the ``GET`` forms are refused, with the way in)."""
    if request.method != "POST":
        raise InvalidClient(
            "authentication required: POST a form with a jwt-bearer client_assertion (a workload JWT)",
            debug=f"unauthenticated {request.method[:10]} {request.url.path[:200]}",
        )
    form = await read_form(request)
    client = await authenticate_client(ctx, form.get("client_assertion"), form.get("client_assertion_type"))
    if not feed.settings.may_follow(client.principal):
        refusal = AccessDenied(
            "this workload may not read the revocation feed or the policies",
            debug=f"`{client.principal}` is not an admin, a resource principal or a listed subscriber",
        )
        refusal.audit["caller"] = client.principal
        raise refusal
    return form, client.principal


def _cursor(raw: str, name: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:  # isdigit alone takes "²"
        raise InvalidRequest(f"{name} must be a non-negative integer")
    return int(raw)


@endpoint(resource=False, audit_kind=AUDIT_KIND)
async def revocations_endpoint(request: Request) -> Response:
    """Feed entries after ``after`` (a cursor); entries drop out once the tokens they cover expire."""
    ctx, feed = context(request), hub(request)
    form, _ = await _subscriber(ctx, feed, request)
    after = _cursor(form.get("after") or "0", "`after`")
    entries = await ctx.store.revocations_after(after, now=ctx.now(), limit=PAGE)
    cursor = entries[-1].seq if entries else after
    return JSONResponse({"revocations": [e.as_json() for e in entries], "cursor": cursor}, headers=NO_STORE)


class _FeedResponse(StreamingResponse):
    """The SSE response of one subscription; its slot is freed however the response ends."""

    def __init__(self, feed: FeedHub, sub: Subscription, cursor: int) -> None:
        super().__init__(
            feed.stream(sub, cursor),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        self.feed, self.sub = feed, sub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.feed.leave(self.sub)


@endpoint(resource=False, audit_kind=AUDIT_KIND)
async def revocations_stream_endpoint(request: Request) -> Response:
    """SSE: the backlog after ``Last-Event-ID`` (or ``after``), then entries as they are published, heartbeats between."""
    ctx, feed = context(request), hub(request)
    form, principal = await _subscriber(ctx, feed, request)
    cursor = _cursor(request.headers.get("last-event-id") or form.get("after") or "0", "`after` / Last-Event-ID")
    try:
        heartbeat = clamp_heartbeat(float(form.get("heartbeat") or MAX_HEARTBEAT_SECONDS))
    except ValueError as exc:
        raise InvalidRequest("`heartbeat` must be a number of seconds") from exc
    await ctx.store.ping()
    return _FeedResponse(feed, feed.subscribe(principal, heartbeat=heartbeat), cursor)


@endpoint(resource=False, audit_kind=AUDIT_KIND)
async def policies_endpoint(request: Request) -> Response:
    """The policy set in force, for resource servers and gateways that take policies from the STS.

    The heartbeat of the revocation stream carries ``policy_version``, so subscribers
    fetch this again as soon as the STS loads a new set (push, not polling).
    """
    ctx, feed = context(request), hub(request)
    await _subscriber(ctx, feed, request)
    ctx.policy.refresh()
    current = ctx.policy.current
    if not ctx.settings.publish_policies or current is None:
        raise NotFoundError("policies are not published")
    etag = f'"{current.version}"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    body = {"version": current.version, "mode": ctx.policy.mode, "files": dict(current.sources)}
    return JSONResponse(body, headers={"ETag": etag, "Cache-Control": "no-cache"})
