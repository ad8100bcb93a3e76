"""``/jwks``, RFC 8414 metadata, ``/healthz`` and the revocation feed (``/revocations``)."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from tether.errors import InvalidRequest, NotFoundError
from tether.metrics import FEED_SUBSCRIBERS
from tether.sts.context import StsContext
from tether.sts.routes.common import context, endpoint
from tether.sts.settings import TOKEN_EXCHANGE

__all__ = [
    "health_endpoint",
    "jwks_endpoint",
    "metadata_endpoint",
    "policies_endpoint",
    "revocations_endpoint",
    "revocations_stream_endpoint",
]


@endpoint(resource=False)
async def jwks_endpoint(request: Request) -> Response:
    ctx = context(request)
    return JSONResponse(
        ctx.keyring.jwks(now=ctx.now()), headers={"Cache-Control": "public, max-age=60"}, media_type="application/jwk-set+json"
    )


@endpoint(resource=False)
async def metadata_endpoint(request: Request) -> Response:
    """RFC 8414 §2, with RFC 9449 §5.1 ``dpop_signing_alg_values_supported``."""
    ctx = context(request)
    issuer = ctx.settings.issuer
    algs = list(ctx.proofs.algorithms)
    return JSONResponse(
        {
            "issuer": issuer,
            "token_endpoint": issuer + "/token",
            "jwks_uri": issuer + "/jwks",
            "introspection_endpoint": issuer + "/introspect",
            "revocation_endpoint": issuer + "/revoke",
            "grant_types_supported": [TOKEN_EXCHANGE],
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
            "token_endpoint_auth_signing_alg_values_supported": algs,
            "introspection_endpoint_auth_methods_supported": ["private_key_jwt"],
            "revocation_endpoint_auth_methods_supported": ["private_key_jwt"],
            "dpop_signing_alg_values_supported": algs,
            "scopes_supported": sorted(ctx.settings.admin_scope),
            "tether_tasks_endpoint": issuer + "/tasks",
            "tether_revocations_endpoint": issuer + "/revocations",
        },
        headers={"Cache-Control": "public, max-age=300"},
    )


@endpoint(resource=False)
async def health_endpoint(request: Request) -> Response:
    ctx = context(request)
    await ctx.store.ping()
    return JSONResponse({"status": "ok", "kid": ctx.keyring.current.kid}, headers={"Cache-Control": "no-store"})


@endpoint(resource=False)
async def revocations_endpoint(request: Request) -> Response:
    """Feed entries after ``after`` (a cursor); entries drop out once the tokens they cover expire."""
    ctx = context(request)
    after_raw = request.query_params.get("after", "0")
    if not after_raw.isdigit() or len(after_raw) > 18:
        raise InvalidRequest("`after` must be a non-negative integer")
    entries = await ctx.store.revocations_after(int(after_raw), now=ctx.now(), limit=1000)
    cursor = entries[-1].seq if entries else int(after_raw)
    return JSONResponse(
        {"revocations": [e.as_json() for e in entries], "cursor": cursor}, headers={"Cache-Control": "no-store"}
    )


HEARTBEAT_SECONDS = 2.0
MIN_HEARTBEAT_SECONDS = 0.2
STREAM_SECONDS = 300.0


async def _feed(ctx: StsContext, cursor: int, heartbeat: float) -> AsyncIterator[bytes]:
    """SSE: backlog after ``cursor``, then entries as they are published, heartbeats between.

    Each entry's ``id`` is its sequence number, so a client that reconnects with
    ``Last-Event-ID`` (or ``after``) resumes exactly where it stopped. A heartbeat carries
    the cursor and the server time: subscribers use it to know their view is current.
    """
    started = ctx.now()
    while ctx.now() - started < STREAM_SECONDS:
        generation = ctx.store.revocation_generation()
        entries = await ctx.store.revocations_after(cursor, now=ctx.now(), limit=1000)
        for entry in entries:
            cursor = entry.seq
            yield f"id: {entry.seq}\nevent: revocation\ndata: {json.dumps(entry.as_json())}\n\n".encode()
        if len(entries) == 1000:
            continue
        ctx.policy.refresh()  # so an idle STS still announces a policy set changed on disk
        beat = {"cursor": cursor, "time": ctx.now(), "policy_version": ctx.policy.version}
        yield f"event: heartbeat\ndata: {json.dumps(beat)}\n\n".encode()
        await ctx.store.wait_for_revocations(since=generation, timeout=heartbeat)


async def _subscribed(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``tether_feed_subscribers`` counts a stream from its first byte until it ends or the client goes away."""
    FEED_SUBSCRIBERS.inc()
    try:
        async for chunk in stream:
            yield chunk
    finally:
        FEED_SUBSCRIBERS.dec()


@endpoint(resource=False)
async def revocations_stream_endpoint(request: Request) -> Response:
    ctx = context(request)
    raw = request.headers.get("last-event-id") or request.query_params.get("after", "0")
    if not raw.isdigit() or len(raw) > 18:
        raise InvalidRequest("`after` / Last-Event-ID must be a non-negative integer")
    try:
        heartbeat = float(request.query_params.get("heartbeat", HEARTBEAT_SECONDS))
    except ValueError as exc:
        raise InvalidRequest("`heartbeat` must be a number of seconds") from exc
    if math.isnan(heartbeat):
        raise InvalidRequest("`heartbeat` must be a number of seconds")
    heartbeat = min(HEARTBEAT_SECONDS, max(MIN_HEARTBEAT_SECONDS, heartbeat))
    await ctx.store.ping()
    return StreamingResponse(
        _subscribed(_feed(ctx, int(raw), heartbeat)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@endpoint(resource=False)
async def policies_endpoint(request: Request) -> Response:
    """The policy set in force, for resource servers and gateways that take policies from the STS.

    The heartbeat of the revocation stream carries ``policy_version``, so subscribers
    fetch this again as soon as the STS loads a new set (push, not polling).
    """
    ctx = context(request)
    ctx.policy.refresh()
    current = ctx.policy.current
    if not ctx.settings.publish_policies or current is None:
        raise NotFoundError("policies are not published")
    etag = f'"{current.version}"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    body = {"version": current.version, "mode": ctx.policy.mode, "files": dict(current.sources)}
    return JSONResponse(body, headers={"ETag": etag, "Cache-Control": "no-cache"})
