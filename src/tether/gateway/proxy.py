"""Forwarding one call upstream: inject, stream both ways within caps, scrub, never follow redirects.

Upstream errors become 502 (unreachable, malformed) or 504 (timeout) with a fixed description:
with query injection the request URL holds the secret, and an exception message can carry it.
Every call runs against the route's ``max_call_seconds`` from its arrival (the head must also
fit in ``timeout``; the body relay is ``tether.gateway.relay``). The client is aiohttp's, for
its CPU cost per call (``tether bench --only gateway``); the URL is passed pre-encoded, exactly
as the strict path check accepted it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp.compression_utils import HAS_BROTLI, HAS_ZSTD
from yarl import URL

from tether.errors import OAuthError
from tether.gateway.inject import Injection, encodings, forward_headers, inject, response_headers, strip_query
from tether.gateway.routes import GatewayRoute
from tether.gateway.scrub import Scrubber, scrub_headers

__all__ = ["BadGateway", "Forwarded", "GatewayTimeout", "PayloadTooLarge", "check_length", "forward", "limited",
           "upstream_client"]  # fmt: skip

#: Bodies with a declared length up to this (and no content coding) are read whole and sent
#: with a length: no chunked framing and no streaming machinery for the typical small answer.
SMALL_BODY = 64 * 1024

#: The content codings aiohttp decodes before the scrubber sees the body. It decodes only a
#: single ``Content-Encoding`` value spelt exactly so; anything else would reach the agent
#: still compressed, where the scrubber cannot find an echoed secret.
DECODED = frozenset({"gzip", "deflate"} | ({"br"} if HAS_BROTLI else set()) | ({"zstd"} if HAS_ZSTD else set()))


def upstream_client(limit: int) -> aiohttp.ClientSession:
    """One route's upstream client (create it inside the serving loop), at most ``limit``
    connections: no redirects, no proxies from the environment, and no cookie jar. Its pool
    serves every task and agent on the route, so a cookie an upstream sets for one call must
    never be replayed on another's."""
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        connector=aiohttp.TCPConnector(limit=limit, ttl_dns_cache=60),
        skip_auto_headers=("User-Agent",),
    )


class BadGateway(OAuthError):
    error = "bad_gateway"
    status = 502


class GatewayTimeout(OAuthError):
    error = "gateway_timeout"
    status = 504


class PayloadTooLarge(OAuthError):
    error = "request_too_large"
    status = 413


@dataclass
class Forwarded:
    """An upstream response being relayed; ``body`` streams scrubbed bytes and counts them."""

    status: int
    headers: list[tuple[str, str]]
    body: AsyncGenerator[bytes, None]
    response: aiohttp.ClientResponse
    #: the call's deadline, on the event loop's clock
    deadline: float
    scrubbed: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    truncated: bool = False
    #: why the body stopped short: ``size`` (the route's cap), ``upstream`` (it failed),
    #: ``deadline`` (``max_call_seconds`` passed) or ``client`` (the agent went away)
    cut: str | None = None
    #: the upstream body was read to its end
    complete: bool = False
    stats: dict[str, int] = field(default_factory=dict)
    #: the whole scrubbed body when it was small enough to read at once (else ``body`` streams)
    content: bytes | None = None

    def stop(self, cut: str) -> None:
        self.truncated = True
        self.cut = self.cut or cut

    async def aclose(self) -> None:
        """Finish the upstream side, whatever happened to the relay: a half-read connection is
        closed, never returned to the pool (the stream may have been abandoned before or while
        it ran, and an abandoned generator is only finalised by the garbage collector)."""
        await self.body.aclose()
        if not self.complete:
            self.response.close()
            self.stop("client")


def check_length(content_length: int | None, route: GatewayRoute) -> None:
    """A declared request body over the route's cap is refused (413) before any of it is read."""
    if content_length is not None and content_length > route.max_request_bytes:
        raise PayloadTooLarge(f"request body exceeds {route.max_request_bytes} bytes")


async def limited(body: AsyncIterator[bytes], limit: int, counter: dict[str, int]) -> AsyncIterator[bytes]:
    """``body`` counted into ``counter["bytes_in"]``; 413 once it passes ``limit``."""
    async for chunk in body:
        counter["bytes_in"] = counter.get("bytes_in", 0) + len(chunk)
        if counter["bytes_in"] > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        yield chunk


async def forward(
    client: aiohttp.ClientSession,
    route: GatewayRoute,
    *,
    method: str,
    path: str,
    query: str,
    headers: list[tuple[str, str]],
    body: AsyncIterator[bytes] | bytes,
    content_length: int | None,
    secret: str,
    deadline: float,
    also: tuple[str, ...] = (),
) -> Forwarded:
    """``body`` streams through, or is bytes already read (and checked: ``tether.gateway.forms``).
    ``also``: other values scrubbed from the answer like ``secret`` (an OAuth route's client secret
    and refresh token, which the upstream never needs to see but might echo)."""
    counter: dict[str, int] = {}
    if isinstance(body, bytes):
        content_length = counter["bytes_in"] = len(body)
    check_length(content_length, route)
    upstream_headers, qs = inject(route.injection, secret, forward_headers(headers, route.injection),
                                  strip_query(query, route.injection))  # fmt: skip
    upstream_headers = [(n, v) for n, v in upstream_headers if n.lower() != "accept-encoding"]
    upstream_headers.append(("Accept-Encoding", "identity"))
    data: bytes | AsyncIterator[bytes] | None = None
    if method not in ("GET", "HEAD", "OPTIONS") or content_length:
        data = body if isinstance(body, bytes) else limited(body, route.max_request_bytes, counter)
    url = URL(route.upstream + path + (f"?{qs}" if qs else ""), encoded=True)
    timeout = aiohttp.ClientTimeout(total=None, connect=route.timeout, sock_read=route.timeout)
    try:
        # per-read timeouts alone let an upstream that trickles its head hold the call for
        # ever: sending the request and receiving the response head share one deadline
        async with asyncio.timeout_at(min(deadline, asyncio.get_running_loop().time() + route.timeout)):
            response = await client.request(
                method,
                url,
                headers=upstream_headers,
                data=data,
                allow_redirects=False,
                timeout=timeout,
            )
    except PayloadTooLarge:
        raise
    except TimeoutError:
        raise GatewayTimeout("upstream did not answer in time", debug=f"route {route.name}: timeout") from None
    except (aiohttp.ClientError, ValueError, OSError) as exc:
        if counter.get("bytes_in", 0) > route.max_request_bytes:
            raise PayloadTooLarge(f"request body exceeds {route.max_request_bytes} bytes") from None
        raise BadGateway("upstream unreachable", debug=f"route {route.name}: {type(exc).__name__}") from None
    _check_coding(response, route.name)
    needles = _needles(secret, route.injection, also)
    length = response.headers.get("content-length")
    declared = int(length) if length is not None and length.isdigit() else None
    if declared is not None and declared > route.max_response_bytes:
        response.close()
        raise BadGateway("upstream response exceeds the route's size cap", debug=f"route {route.name}: {length} bytes")
    raw_headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in response.raw_headers]
    cleaned, header_hits = scrub_headers(response_headers(raw_headers), needles)
    cleaned = [(n, v) for n, v in cleaned if n.lower() != "content-encoding"]
    forwarded = Forwarded(status=response.status, headers=cleaned, body=_empty(), response=response, deadline=deadline)
    forwarded.scrubbed = header_hits
    forwarded.stats = counter
    coded = response.headers.get("content-encoding", "identity").lower() != "identity"
    if declared is not None and declared <= SMALL_BODY and not coded:
        await _read_whole(forwarded, Scrubber(needles), route.name)
    else:  # decoded while streamed, so the size cap holds for what a compressed body expands to
        forwarded.body = _relay(forwarded, Scrubber(needles), route.max_response_bytes)
    return forwarded


def _check_coding(response: aiohttp.ClientResponse, route: str) -> None:
    """Refuse (502) a body the scrubber would see still coded.

    ``Content-Encoding``: ``x-gzip``, ``compress``, a list such as ``gzip, identity``, a
    repeated header, or ``br``/``zstd`` without their decoder. ``Transfer-Encoding``: anything
    but one ``chunked`` — aiohttp removes the chunk framing and nothing else, so ``gzip,
    chunked`` (or ``gzip`` alone, or ``gzip`` and ``chunked`` as two fields) would reach the
    agent compressed; ``identity`` is no transfer coding (RFC 9112 §7) and ``chunked`` applies
    once (§6.1), so lists with them are framing that parsers disagree on. The gateway asks for
    ``identity``: this is a misbehaving upstream.
    """
    content = response.headers.getall("content-encoding", [])
    transfer = response.headers.getall("transfer-encoding", [])
    if _one_of(content, DECODED | {"identity"}) and _one_of(transfer, frozenset({"chunked"})):
        return
    response.close()
    shown = f"content-encoding {', '.join(content)[:64]!r}, transfer-encoding {', '.join(transfer)[:64]!r}"
    raise BadGateway("upstream response uses a coding the gateway cannot inspect", debug=f"route {route}: {shown}")


def _one_of(values: list[str], allowed: frozenset[str]) -> bool:
    """No field, or exactly one whose value is one of ``allowed`` (names are case-insensitive)."""
    return not values or (len(values) == 1 and values[0].isascii() and values[0].strip().lower() in allowed)


async def _read_whole(forwarded: Forwarded, scrubber: Scrubber, route: str) -> None:
    try:
        async with asyncio.timeout_at(forwarded.deadline):  # a body trickled byte by byte included
            raw = await forwarded.response.read()
    except TimeoutError:
        forwarded.response.close()
        raise GatewayTimeout("upstream did not answer in time", debug=f"route {route}: body timeout") from None
    except (aiohttp.ClientError, OSError) as exc:
        forwarded.response.close()
        raise BadGateway("upstream response was cut short", debug=f"route {route}: {type(exc).__name__}") from None
    forwarded.response.release()
    forwarded.complete = True
    forwarded.content = scrubber.feed(raw) + scrubber.flush()
    forwarded.bytes_out = len(raw)
    forwarded.scrubbed += scrubber.hits
    forwarded.bytes_in = forwarded.stats.get("bytes_in", 0)


@functools.lru_cache(maxsize=64)
def _needles(secret: str, injection: Injection, also: tuple[str, ...] = ()) -> tuple[bytes, ...]:
    forms = set(encodings(secret, injection)).union(*(encodings(value, injection) for value in also))
    return tuple(sorted(forms, key=len, reverse=True))


async def _empty() -> AsyncGenerator[bytes, None]:
    if False:  # pragma: no cover - an async generator that yields nothing
        yield b""


async def _relay(forwarded: Forwarded, scrubber: Scrubber, limit: int) -> AsyncGenerator[bytes, None]:
    try:
        async for chunk in forwarded.response.content.iter_any():
            forwarded.bytes_out += len(chunk)
            if forwarded.bytes_out > limit:
                forwarded.stop("size")
                break
            out = scrubber.feed(chunk)
            if out:
                yield out
        tail = scrubber.flush()
        if tail and not forwarded.truncated:
            yield tail
        forwarded.complete = not forwarded.truncated
    except (aiohttp.ClientError, OSError, TimeoutError, asyncio.IncompleteReadError):
        forwarded.stop("upstream")
    finally:
        forwarded.scrubbed += scrubber.hits
        forwarded.bytes_in = forwarded.stats.get("bytes_in", 0)
        if forwarded.complete:
            forwarded.response.release()
        else:  # a half-read connection must not go back to the pool
            forwarded.response.close()
