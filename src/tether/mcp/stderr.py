"""A stdio upstream's stderr, logged line by line, redacted, escaped and rate-limited.

The MCP stdio transport leaves stderr to the server for logging (MCP "Transports" §stdio);
the gateway must not pass it through to its own stderr, where a server could write whole
fake log lines, nor drop it, since it is how an operator learns why a server fails
(SECURITY.md MCP-14: "their stderr is logged redacted"). Each line becomes one record of the
``tether.mcp`` logger naming the route, with tokens and registered secrets redacted
(``tether.logs.redact``), control characters escaped and the length capped; at most
``LINES_PER_WINDOW`` lines per ``WINDOW`` seconds are logged, the rest counted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import IO, Any

from tether.logs import redact

__all__ = ["LINES_PER_WINDOW", "MAX_LINE", "WINDOW", "StderrLog", "close_stderr_log", "open_stderr_log"]

log = logging.getLogger("tether.mcp")

MAX_LINE = 500
LINES_PER_WINDOW = 50
WINDOW = 10.0
_MAX_BUFFER = 64 * 1024


def _escaped(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").rstrip("\r")
    if not text.isprintable():
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return text[:MAX_LINE]


class StderrLog(asyncio.Protocol):
    """Reads the pipe's bytes; logs each complete line (and a final partial one at EOF)."""

    def __init__(self, route: str) -> None:
        self.route = route
        self._buffer = b""
        self._window_start = time.monotonic()
        self._logged = 0
        self._dropped = 0
        #: lines seen (for tests and diagnostics)
        self.lines = 0
        #: set when the pipe is closed (every writer gone, or the transport closed)
        self.closed = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._line(line)
        if len(self._buffer) > _MAX_BUFFER:  # a "line" without end: log what there is
            self._line(self._buffer)
            self._buffer = b""

    def connection_lost(self, exc: Exception | None) -> None:
        if self._buffer:
            self._line(self._buffer)
            self._buffer = b""
        self._flush_dropped()
        self.closed.set()

    def _line(self, raw: bytes) -> None:
        self.lines += 1
        now = time.monotonic()
        if now - self._window_start >= WINDOW:
            self._flush_dropped()
            self._window_start, self._logged = now, 0
        if self._logged >= LINES_PER_WINDOW:
            self._dropped += 1
            return
        self._logged += 1
        log.info("MCP upstream %s stderr: %s", self.route, redact(_escaped(raw)))

    def _flush_dropped(self) -> None:
        if self._dropped:
            log.info("MCP upstream %s stderr: %d more line(s) not logged", self.route, self._dropped)
            self._dropped = 0


async def open_stderr_log(route: str) -> tuple[IO[str], asyncio.ReadTransport, StderrLog]:
    """A pipe: its write end (to hand the process as stderr, then close) and the reading side."""
    read_fd, write_fd = os.pipe()
    writer = os.fdopen(write_fd, "w")
    reader: Any = os.fdopen(read_fd, "rb", buffering=0)
    try:
        transport, protocol = await asyncio.get_running_loop().connect_read_pipe(lambda: StderrLog(route), reader)
    except BaseException:
        writer.close()
        reader.close()
        raise
    return writer, transport, protocol


#: seconds to wait, once the process is gone, for the rest of what it wrote
_DRAIN = 1.0


async def close_stderr_log(writer: IO[str], transport: asyncio.ReadTransport, protocol: StderrLog) -> None:
    """Close our write end (if still open), read what is left for a moment, then close the pipe."""
    writer.close()
    try:
        await asyncio.wait_for(protocol.closed.wait(), _DRAIN)
    except TimeoutError:  # a descendant still holds the pipe open: stop reading it
        log.info("MCP upstream %s: its stderr stays open after it stopped; no longer read", protocol.route)
    finally:
        transport.close()
