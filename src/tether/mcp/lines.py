"""How many bytes one message from an upstream may take, and a linear, bounded line splitter.

The gateway refuses a tool result larger than the route's ``max_result_bytes``
(``tether.gateway.mcp_results``), but that check runs on the decoded result: before it, the
whole message has been read, parsed and copied. An upstream (or an agent allowed one ordinary
read tool on a large file) can therefore make the gateway buffer and parse any amount of data
for a result it then refuses (review finding F1). The transports bound each message *as it is
read* instead, so no more than ``message_limit(max_result_bytes)`` bytes of one message are
ever held.

The limit is generous on purpose, so that it never refuses a result the cap would accept: the
cap counts the result as compact UTF-8 JSON, while an upstream may legally escape every
character (RFC 8259 §7: ``\\u0041`` is six bytes for the one byte of ``A``; Python's ``json``
escapes all non-ASCII text, Go's encoder ``<``, ``>`` and ``&``), so the wire form of an
acceptable result can be up to six times its counted size, plus the JSON-RPC envelope. A floor
keeps listings (``tools/list`` pages, the handshake) usable on routes with a tiny result cap.
Whatever passes this bound is still measured exactly by the gateway afterwards.

``LineReader`` splits the newline-delimited JSON-RPC stream of the stdio transport (MCP
"Transports" §stdio: messages are delimited by newlines and contain none) in time linear in
the bytes read: it appends to a ``bytearray`` and only scans bytes it has not scanned before
(the SDK's reader re-joins and re-splits a growing ``str`` for every chunk, which is quadratic).
"""

from __future__ import annotations

__all__ = ["ENVELOPE_BYTES", "ESCAPE_FACTOR", "MIN_MESSAGE_BYTES", "LineReader", "LineTooLong", "message_limit"]

#: worst-case growth of a JSON string's bytes by escaping (one byte to ``\\uXXXX``; RFC 8259 §7)
ESCAPE_FACTOR = 6
#: room for the JSON-RPC envelope and an upstream's whitespace around the result
ENVELOPE_BYTES = 64 * 1024
#: no route's messages are capped below this (the handshake and ``tools/list`` pages are not results)
MIN_MESSAGE_BYTES = 4 * 1024 * 1024


def message_limit(max_result_bytes: int) -> int:
    """The most bytes one message from an upstream may take on a route capping results at ``max_result_bytes``."""
    return max(MIN_MESSAGE_BYTES, ESCAPE_FACTOR * max_result_bytes + ENVELOPE_BYTES)


class LineTooLong(ValueError):
    """A line (a message) exceeded the limit; ``size`` is how many of its bytes were seen when it was refused."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"a message of more than {limit} bytes ({size} seen)")
        self.size = size
        self.limit = limit


class LineReader:
    """Splits a byte stream into lines of at most ``limit`` bytes (the ``\\n`` excluded).

    ``feed`` returns the lines a chunk completes and raises ``LineTooLong`` as soon as a line,
    complete or not, is longer than the limit: nothing after that is trusted (the stream has lost
    its framing), so the reader stays failed. ``end`` returns the unterminated rest at end of
    stream, if any. At most ``limit`` plus one chunk is ever held."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the line limit must be positive")
        self.limit = limit
        self._buffer = bytearray()
        self._failed: LineTooLong | None = None

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._failed is not None:
            raise self._failed
        scanned = len(self._buffer)  # what is buffered holds no newline: never scan it again
        self._buffer += chunk
        lines: list[bytes] = []
        start = 0
        while (end := self._buffer.find(b"\n", scanned)) >= 0:
            if end - start > self.limit:
                self._fail(end - start)
            lines.append(bytes(self._buffer[start:end]))
            start = scanned = end + 1
        del self._buffer[:start]
        if len(self._buffer) > self.limit:
            self._fail(len(self._buffer))
        return lines

    def end(self) -> bytes | None:
        """The last line if the stream ended without a newline after it (None if it ended cleanly)."""
        if self._failed is not None or not self._buffer:
            return None
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest

    def _fail(self, size: int) -> None:
        self._buffer = bytearray()  # release it now: the reader is done
        self._failed = LineTooLong(size, self.limit)
        raise self._failed
