"""Forwarding one call upstream: inject, stream both ways within caps, scrub, never follow redirects.

Upstream errors become 502 (unreachable, malformed) or 504 (timeout) with a fixed
description: an exception message can carry the request URL, and with query
injection that URL holds the secret, so no upstream error text is ever passed on or
logged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx

from tether.errors import OAuthError
from tether.gateway.inject import encodings, forward_headers, inject, response_headers, strip_query
from tether.gateway.routes import GatewayRoute
from tether.gateway.scrub import Scrubber, scrub_headers

__all__ = ["BadGateway", "Forwarded", "GatewayTimeout", "PayloadTooLarge", "forward"]


class BadGateway(OAuthError):
    error = "bad_gateway"
    status = 502
    rs_status = 502


class GatewayTimeout(OAuthError):
    error = "gateway_timeout"
    status = 504
    rs_status = 504


class PayloadTooLarge(OAuthError):
    error = "request_too_large"
    status = 413
    rs_status = 413


@dataclass
class Forwarded:
    """An upstream response being relayed; ``body`` streams scrubbed bytes and counts them."""

    status: int
    headers: list[tuple[str, str]]
    body: AsyncIterator[bytes]
    response: httpx.Response
    scrubbed: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    truncated: bool = False
    stats: dict[str, int] = field(default_factory=dict)


async def _limited(body: AsyncIterator[bytes], limit: int, counter: dict[str, int]) -> AsyncIterator[bytes]:
    async for chunk in body:
        counter["bytes_in"] = counter.get("bytes_in", 0) + len(chunk)
        if counter["bytes_in"] > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        yield chunk


async def forward(
    client: httpx.AsyncClient,
    route: GatewayRoute,
    *,
    method: str,
    path: str,
    query: str,
    headers: list[tuple[str, str]],
    body: AsyncIterator[bytes],
    content_length: int | None,
    secret: str,
) -> Forwarded:
    if content_length is not None and content_length > route.max_request_bytes:
        raise PayloadTooLarge(f"request body exceeds {route.max_request_bytes} bytes")
    upstream_headers, qs = inject(route.injection, secret, forward_headers(headers, route.injection),
                                  strip_query(query, route.injection))  # fmt: skip
    upstream_headers = [(n, v) for n, v in upstream_headers if n.lower() != "accept-encoding"]
    upstream_headers.append(("Accept-Encoding", "identity"))
    counter: dict[str, int] = {}
    has_body = method not in ("GET", "HEAD", "OPTIONS") or content_length
    request = client.build_request(
        method,
        route.upstream + path + (f"?{qs}" if qs else ""),
        headers=upstream_headers,
        content=_limited(body, route.max_request_bytes, counter) if has_body else None,
        timeout=route.timeout,
    )
    try:
        response = await client.send(request, stream=True, follow_redirects=False)
    except httpx.TimeoutException:
        raise GatewayTimeout("upstream did not answer in time", debug=f"route {route.name}: timeout") from None
    except httpx.HTTPError as exc:
        raise BadGateway("upstream unreachable", debug=f"route {route.name}: {type(exc).__name__}") from None
    needles = encodings(secret, route.injection)
    length = response.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > route.max_response_bytes:
        await response.aclose()
        raise BadGateway("upstream response exceeds the route's size cap", debug=f"route {route.name}: {length} bytes")
    cleaned, header_hits = scrub_headers(response_headers(response.headers.multi_items()), needles)
    cleaned = [(n, v) for n, v in cleaned if n.lower() != "content-encoding"]
    forwarded = Forwarded(status=response.status_code, headers=cleaned, body=_empty(), response=response)
    forwarded.scrubbed = header_hits
    forwarded.stats = counter
    forwarded.body = _relay(forwarded, Scrubber(needles), route.max_response_bytes)
    return forwarded


async def _empty() -> AsyncIterator[bytes]:
    if False:  # pragma: no cover - an async generator that yields nothing
        yield b""


async def _relay(forwarded: Forwarded, scrubber: Scrubber, limit: int) -> AsyncIterator[bytes]:
    try:
        async for chunk in forwarded.response.aiter_bytes():
            forwarded.bytes_out += len(chunk)
            if forwarded.bytes_out > limit:
                forwarded.truncated = True
                break
            out = scrubber.feed(chunk)
            if out:
                yield out
        tail = scrubber.flush()
        if tail and not forwarded.truncated:
            yield tail
    except httpx.HTTPError:
        forwarded.truncated = True
    finally:
        forwarded.scrubbed += scrubber.hits
        forwarded.bytes_in = forwarded.stats.get("bytes_in", 0)
        await forwarded.response.aclose()
