"""Filter a ``tools/list`` answer down to the tools the caller may call (MCP spec "Tools: Listing Tools").

An agent should not be shown tools it will be refused: a listed tool is an invitation, and a
model plans with what it sees. The answer is rewritten on its way out, whatever the server:
as one ``application/json`` body, or inside a ``text/event-stream`` (SSE, WHATWG HTML §9.2),
where only the event whose data is the JSON-RPC response to that request is rewritten and
every other event passes byte for byte. Both are bounded: an answer or an event larger than
the cap is replaced by a JSON-RPC error, never passed unfiltered (fail closed).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tether.mcp.messages import INTERNAL_ERROR, RequestId, error_body

__all__ = ["DEFAULT_MAX_LISTING_BYTES", "FilterError", "SseRewriter", "filter_json", "filter_response"]

#: the largest ``tools/list`` answer (or SSE event) tether buffers to filter
DEFAULT_MAX_LISTING_BYTES = 4 * 1024 * 1024

#: decides whether a tool (by name) may be shown; raises ``FilterError`` when it cannot decide
Visible = Callable[[str], bool]
#: which JSON-RPC responses to filter: the one to this request id, or (``None``) any listing
Target = RequestId | None


class FilterError(Exception):
    """The listing cannot be filtered (too large, unparsable, policy unavailable): it is withheld."""


def _is_listing(message: object, target: Target) -> bool:
    if not isinstance(message, dict) or "result" not in message or "method" in message:
        return False
    if target is not None and message.get("id") != target:
        return False
    result = message["result"]
    return isinstance(result, dict) and isinstance(result.get("tools"), list)


def filter_response(message: dict[str, Any], visible: Visible) -> dict[str, Any]:
    """The JSON-RPC response with ``result.tools`` holding only the visible tools.

    A tool entry without a string ``name`` is dropped: nothing can authorize it."""
    result = dict(message["result"])
    result["tools"] = [
        tool
        for tool in result["tools"]
        if isinstance(tool, dict) and isinstance(tool.get("name"), str) and visible(tool["name"])
    ]
    return {**message, "result": result}


def _withheld(request_id: object, reason: str) -> bytes:
    rid = request_id if isinstance(request_id, str | int) and not isinstance(request_id, bool) else None
    return error_body(rid, INTERNAL_ERROR, f"tools/list answer withheld: {reason}")


def filter_json(body: bytes, visible: Visible, target: Target) -> bytes:
    """Filter one ``application/json`` answer; anything else than a listing passes unchanged."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return _withheld(target, "the server's answer is not JSON")
    if not _is_listing(message, target):
        return body
    try:
        return json.dumps(filter_response(message, visible), separators=(",", ":")).encode()
    except FilterError as exc:
        return _withheld(message.get("id"), str(exc))


class SseRewriter:
    """Incremental SSE pass-through that rewrites the listing event (WHATWG HTML §9.2.6 framing).

    ``feed`` takes response body chunks and returns the bytes to send now; an event is held
    only until its terminating blank line (at most ``limit`` bytes, else it is replaced by an
    error event). Lines may end in CRLF, LF or CR."""

    def __init__(self, visible: Visible, target: Target, *, limit: int = DEFAULT_MAX_LISTING_BYTES) -> None:
        self.visible = visible
        self.target = target
        self.limit = limit
        self._pending = b""
        #: raw bytes and lines of the event being read
        self._event_raw = bytearray()
        self._event_lines: list[bytes] = []
        self.failed = False

    def feed(self, chunk: bytes, *, final: bool = False) -> bytes:
        if self.failed:
            return b""
        out = bytearray()
        data = self._pending + chunk
        start = 0
        while True:
            end, after = _line_end(data, start, final=final)
            if end < 0:
                break
            line = data[start:end]
            self._event_raw += data[start:after]
            start = after
            if line:
                self._event_lines.append(line)
            else:
                out += self._finish_event()
        self._pending = data[start:]
        if len(self._event_raw) + len(self._pending) > self.limit:
            self.failed = True
            return bytes(out) + _sse_error(self.target, f"an event exceeds {self.limit} bytes")
        return bytes(out)

    def close(self) -> bytes:
        """The bytes still held when the stream ends (an unterminated event is not dispatched by SSE)."""
        out = self.feed(b"", final=True)  # a CR that ended the last chunk ended its line
        if self.failed:
            return out
        rest = bytes(self._event_raw) + self._pending
        if self._event_lines and self._data_is_listing():
            return out  # an unterminated listing event: never passed unfiltered
        return out + rest

    def _data_is_listing(self) -> bool:
        data = _event_data(self._event_lines)
        if data is None:
            return False
        try:
            return _is_listing(json.loads(data), self.target)
        except (ValueError, RecursionError):
            return False

    def _finish_event(self) -> bytes:
        raw, lines = bytes(self._event_raw), self._event_lines
        self._event_raw, self._event_lines = bytearray(), []
        data = _event_data(lines)
        if data is None:
            return raw
        try:
            message = json.loads(data)
        except (ValueError, RecursionError):
            return raw
        if not _is_listing(message, self.target):
            return raw
        try:
            rewritten = json.dumps(filter_response(message, self.visible), separators=(",", ":"))
        except FilterError as exc:
            return _sse_error(message.get("id"), str(exc))
        kept = [line for line in lines if not line.startswith(b"data")]
        return b"".join(line + b"\r\n" for line in kept) + b"data: " + rewritten.encode() + b"\r\n\r\n"


def _line_end(data: bytes, start: int, *, final: bool = False) -> tuple[int, int]:
    """(end of the line's content, start of the next line) or (-1, -1) while incomplete."""
    cr = data.find(b"\r", start)
    lf = data.find(b"\n", start)
    if cr < 0 and lf < 0:
        return -1, -1
    if cr < 0 or (0 <= lf < cr):
        return lf, lf + 1
    if cr + 1 == len(data) and not final:
        return -1, -1  # a CR at the end of a chunk may be the first half of CRLF
    return cr, cr + 2 if data[cr + 1 : cr + 2] == b"\n" else cr + 1


def _event_data(lines: list[bytes]) -> str | None:
    """The event's data (its ``data`` fields joined by LF), or None if it has none."""
    values = []
    for line in lines:
        if line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        if name != b"data":
            continue
        values.append(value[1:] if value.startswith(b" ") else value)
    if not values:
        return None
    try:
        return b"\n".join(values).decode("utf-8")
    except UnicodeDecodeError:
        return None


def _sse_error(request_id: object, reason: str) -> bytes:
    return b"event: message\r\ndata: " + _withheld(request_id, reason) + b"\r\n\r\n"
