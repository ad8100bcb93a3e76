"""Bounded responses from a streamable-HTTP upstream: each message is capped as it is read.

MCP "Transports" §Streamable HTTP: the server answers a POST with one JSON body
(``application/json``) or an SSE stream (``text/event-stream``) of messages. The SDK reads a
JSON body whole (``response.aread()``), so an upstream could make the gateway buffer and parse
any amount for a tool result the route's ``max_result_bytes`` then refuses (review finding F1).
``ResponseCap`` installs ``httpx2`` event hooks on the upstream's client (so they apply whatever
transport or proxy the client routes through) that wrap every response's byte stream:

* a JSON (or any non-SSE) body may hold at most ``limit`` bytes in all;
* an SSE stream may hold at most ``limit`` bytes per event (counted from the last blank line,
  HTML "Server-sent events" §9.2.5: an empty line dispatches the event), never in all, since one
  stream legitimately carries many messages. The SDK's own ``max_sse_event_size`` is set to the
  same limit as a second bound; this one counts raw bytes, so it trips first and is counted;
* a content coding is refused: ``Accept-Encoding: identity`` is sent (RFC 9110 §12.5.3), since a
  compressed body can decode to a thousand times its size and the bound is on what is held.

Over the limit the stream raises ``ResponseTooLarge``, an ``httpx2.SSEError`` and an
``httpx2.StreamError`` both, which is what the SDK turns into an error answer for the pending
request (instead of a hang), and ``overflows`` is counted so ``tether.mcp.upstream`` can report
the call as too large.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import httpx2

__all__ = ["ResponseCap", "ResponseTooLarge"]

#: the end of an SSE event: two line ends in a row (CRLF, LF or CR), where a lone CRLF is one
_EVENT_END = re.compile(rb"\n[\r\n]|\r\r|\r\n[\r\n]")


class ResponseTooLarge(httpx2.SSEError, httpx2.StreamError):
    """An upstream response (or SSE event) went over the byte limit, or came compressed; reading stopped."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


def _events(tail: bytes, chunk: bytes, held: int) -> tuple[int, int, bytes]:
    """Scan one chunk of an SSE stream: the largest event (in bytes) it ends or extends, the size
    of the event still open after it, and the tail to carry over (an event end may straddle chunks).

    ``held`` is the size of the event open before the chunk; ``tail`` the last bytes before it,
    already counted."""
    window = tail + chunk
    fresh = len(tail)  # where the chunk's bytes start in the window
    biggest = held
    opened: int | None = None  # where the open event started, once an end is seen in this chunk
    for end in _EVENT_END.finditer(window):
        if end.end() <= fresh:
            continue  # an end wholly in the tail was seen with the previous chunk
        size = held + max(0, end.start() - fresh) if opened is None else end.start() - opened
        biggest = max(biggest, size)
        opened = end.end()
    held = held + len(chunk) if opened is None else len(window) - opened
    return max(biggest, held), held, window[-2:]


class _CappedStream(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, cap: ResponseCap, *, per_event: bool, refusal: str | None) -> None:
        self._inner = inner
        self._cap = cap
        self._per_event = per_event
        self._refusal = refusal

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._refusal is not None:
            raise ResponseTooLarge(self._refusal)
        limit = self._cap.limit
        held = 0  # bytes of the body (or of the current SSE event) so far
        tail = b""  # the last bytes of the previous chunk: an event end may straddle two chunks
        stream = self._inner.__aiter__()
        try:
            async for chunk in stream:
                if self._per_event:
                    biggest, held, tail = _events(tail, chunk, held)
                else:
                    biggest = held = held + len(chunk)
                if biggest > limit:
                    self._cap.overflows += 1
                    raise ResponseTooLarge(f"a message of more than {limit} bytes")
                yield chunk
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    async def aclose(self) -> None:
        await self._inner.aclose()


class ResponseCap:
    """Byte limits for one upstream client's responses; ``hooks`` goes to ``httpx2.AsyncClient(event_hooks=...)``."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the response limit must be positive")
        self.limit = limit
        #: responses (or SSE events) refused for size
        self.overflows = 0

    @property
    def hooks(self) -> dict[str, list[Callable[[Any], Coroutine[Any, Any, None]]]]:
        return {"request": [self._on_request], "response": [self._on_response]}

    async def _on_request(self, request: httpx2.Request) -> None:
        request.headers["Accept-Encoding"] = "identity"

    async def _on_response(self, response: httpx2.Response) -> None:
        stream = response.stream
        if not isinstance(stream, httpx2.AsyncByteStream):
            return  # already read (not a streamed body): nothing more can arrive
        coding = response.headers.get("content-encoding", "identity").strip().lower()
        refusal = None if coding in ("", "identity") else "a compressed response (asked for identity)"
        per_event = response.headers.get("content-type", "").lower().startswith("text/event-stream")
        response.stream = _CappedStream(stream, self, per_event=per_event, refusal=refusal)
