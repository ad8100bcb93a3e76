"""One MCP message as a protected server must judge it before the server sees it — JSON-RPC 2.0 framing.

The MCP streamable HTTP transport (MCP spec 2025-11-25 and 2026-07-28 "Transports") POSTs one
JSON-RPC message per request. Tether reads it *before* the MCP server does, so the two must
agree on what the message says: it is parsed strictly (UTF-8, duplicate member names refused,
no NaN; MCP-15), so no second parser (the SDK's pydantic, a gateway's) can read a different
``method`` or tool ``name`` from the same bytes. Batches (JSON arrays) are refused: MCP
2025-06-18 removed batching, and one body must be one decision.

Refusals at this layer are JSON-RPC error objects (JSON-RPC 2.0 §5.1) with the HTTP status the
MCP SDKs map their codes to (parse, invalid request and invalid params → 400), so an SDK client
surfaces them as an ``MCPError`` instead of a transport failure.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tether.rules.jws import JWSError, strict_json_loads

__all__ = [
    "ACCESS_DENIED",
    "HEADER_MISMATCH",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "PARSE_ERROR",
    "JsonRpcRefusal",
    "Message",
    "error_body",
    "header_value",
    "parse_message",
]

#: JSON-RPC 2.0 §5.1
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
#: MCP 2026-07-28 ``HEADER_MISMATCH``: an ``Mcp-Method``/``Mcp-Name`` header disagrees with the body (MCP-11)
HEADER_MISMATCH = -32020
#: tether's refusal of a tool call by policy (implementation-defined server range -32000..-32019)
ACCESS_DENIED = -32003

_HTTP_STATUS = {PARSE_ERROR: 400, INVALID_REQUEST: 400, INVALID_PARAMS: 400, HEADER_MISMATCH: 400}
_B64_SENTINEL = re.compile(r"=\?base64\?(?P<payload>.*)\?=")

RequestId = str | int


class JsonRpcRefusal(Exception):
    """A message refused before the MCP server sees it, rendered as a JSON-RPC error."""

    def __init__(
        self, code: int, message: str, *, request_id: RequestId | None = None, data: Any = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.data = data
        self.status = status if status is not None else _HTTP_STATUS.get(code, 200)

    def body(self) -> bytes:
        return error_body(self.request_id, self.code, self.message, self.data)


def error_body(request_id: RequestId | None, code: int, message: str, data: Any = None) -> bytes:
    """A JSON-RPC error response; ``id`` is null when the request's id could not be read (§5)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Message:
    """A decoded JSON-RPC message: a request (``id`` present), a notification, or a response."""

    body: Mapping[str, Any]
    method: str | None
    request_id: RequestId | None
    is_request: bool

    @property
    def params(self) -> object:
        return self.body.get("params")


def _request_id(value: object) -> RequestId | None:
    """The id to echo in an error: a string or integer (JSON-RPC §4), else null."""
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    return None


def parse_message(body: bytes) -> Message:
    """Decode one POSTed JSON-RPC message strictly, or raise ``JsonRpcRefusal``."""
    try:
        decoded = strict_json_loads(body)
    except JWSError as exc:  # not UTF-8, not JSON, a duplicate member name, NaN, or nesting Python cannot parse
        raise JsonRpcRefusal(PARSE_ERROR, f"Parse error: the body is not strict JSON ({exc})") from None
    if isinstance(decoded, list):
        raise JsonRpcRefusal(INVALID_REQUEST, "JSON-RPC batches are not accepted: send one message per request")
    if not isinstance(decoded, dict):
        raise JsonRpcRefusal(INVALID_REQUEST, "the body must be one JSON-RPC message object")
    request_id = _request_id(decoded.get("id"))
    if decoded.get("jsonrpc") != "2.0":
        raise JsonRpcRefusal(INVALID_REQUEST, 'a JSON-RPC message must say "jsonrpc": "2.0"', request_id=request_id)
    method = decoded.get("method")
    if "method" in decoded and not isinstance(method, str):
        raise JsonRpcRefusal(INVALID_REQUEST, "the JSON-RPC method must be a string", request_id=request_id)
    is_request = isinstance(method, str) and "id" in decoded
    if is_request and request_id is None:
        raise JsonRpcRefusal(INVALID_REQUEST, "a JSON-RPC request id must be a string or an integer")
    return Message(
        body=decoded, method=method if isinstance(method, str) else None, request_id=request_id, is_request=is_request
    )


def header_value(value: str | None) -> str | None:
    """An ``Mcp-Name`` header's value: verbatim, or the UTF-8 inside ``=?base64?...?=``
    (MCP 2026-07-28 "Standard headers"); None for a malformed encoding, which then matches nothing."""
    if value is None:
        return None
    match = _B64_SENTINEL.fullmatch(value)
    if match is None:
        return value
    payload = match.group("payload")
    try:
        decoded = base64.b64decode(payload, validate=True)
        if base64.b64encode(decoded).decode("ascii") != payload:
            return None
        return decoded.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
