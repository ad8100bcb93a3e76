"""Reading a streamed body into memory with a cap, so a peer cannot make tether buffer without bound."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import Message, Receive

__all__ = ["read_at_most", "replay_body"]


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
