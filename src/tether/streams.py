"""Reading a streamed body into memory with a cap, so a peer cannot make tether buffer without bound."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

__all__ = ["read_at_most"]


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
