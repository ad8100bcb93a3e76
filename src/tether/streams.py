"""Reading a streamed body into memory with a cap, so a peer cannot make tether buffer without bound."""

from __future__ import annotations

import codecs
import re
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import Message, Receive

__all__ = ["lines_at_most", "read_at_most", "replay_body"]

#: what ends a line of a text/event-stream (WHATWG HTML §9.2.5: CRLF, LF or CR)
_LINE_END = re.compile("\r\n|\r|\n")


async def read_at_most(chunks: AsyncIterator[bytes], limit: int, too_large: Callable[[], Exception]) -> bytes:
    """The whole body, refused with ``too_large()`` as soon as it passes ``limit`` bytes
    (never more than ``limit`` plus one chunk is held)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise too_large()
        parts.append(chunk)
    return b"".join(parts)


async def lines_at_most(chunks: AsyncIterator[bytes], limit: int, too_long: Callable[[], Exception]) -> AsyncIterator[str]:
    """The UTF-8 lines of a stream (CRLF, LF or CR ends one), refused with ``too_long()`` as soon as
    one passes ``limit`` characters: ``httpx``'s ``aiter_lines`` buffers an unended line without bound."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    async for chunk in chunks:
        text = pending + decoder.decode(chunk)
        # a CR at the end may be the first half of a CRLF: judged with the next chunk
        held = "\r" if text.endswith("\r") else ""
        *lines, pending = _LINE_END.split(text[: len(text) - len(held)])
        for line in lines:
            if len(line) > limit:
                raise too_long()
            yield line
        pending += held
        if len(pending) > limit:
            raise too_long()
    tail = pending + decoder.decode(b"", final=True)  # no line end in it, but maybe the held CR
    if tail:
        yield tail.removesuffix("\r")


def replay_body(body: bytes, receive: Receive) -> Receive:
    """``receive`` for an ASGI app whose request body was already read (and judged): that body,
    unchanged, then the real channel (the client's disconnect)."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
