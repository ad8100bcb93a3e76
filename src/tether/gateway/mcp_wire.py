"""The MCP gateway's JSON-RPC wire, below the SDK: the POST body read whole and judged strictly first.

A JSON member name given twice is ambiguous: Python's parser (the SDK's) keeps the last, another
parser the first, so what Cedar judged and what the tool receives could differ (SECURITY
MCP-15). The body is therefore read whole (up to the SDK's own limit), parsed strictly
(``tether.rules.jws.strict_json_loads``: no repeated member, no NaN) and, if it passes, handed to
the SDK unchanged (``tether.streams.replay_body``). Malformed JSON is left to the SDK, which answers its parse error.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TypeGuard

from starlette.responses import JSONResponse, Response

from tether.rules.jws import JWSError, strict_json_loads
from tether.streams import read_at_most

__all__ = ["Ambiguous", "BodyTooLarge", "ambiguity", "read_body", "rpc_error"]


class BodyTooLarge(Exception):
    pass


@dataclass(frozen=True)
class Ambiguous:
    """A body that is JSON only to a lenient parser: why, and what it seemed to ask (for the answer and audit)."""

    reason: str
    ident: str | int | None
    method: str
    tool: str | None


async def read_body(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The whole body; ``BodyTooLarge`` past ``limit`` bytes."""
    return await read_at_most(chunks, limit, lambda: BodyTooLarge(f"request body over {limit} bytes"))


def ambiguity(body: bytes) -> Ambiguous | None:
    """Why ``body`` must be refused as ambiguous JSON, or None (strict JSON, or not JSON at all)."""
    try:
        strict_json_loads(body)
        return None
    except JWSError as exc:
        try:
            loose = json.loads(body)
        except (ValueError, RecursionError):
            return None  # not JSON at all: the SDK answers its parse error
        reason = str(exc)
    message = loose if isinstance(loose, dict) else {}
    ident = message.get("id")
    method = message.get("method")
    params = message.get("params")
    name = params.get("name") if isinstance(params, dict) else None
    return Ambiguous(
        reason=reason,
        ident=ident if (isinstance(ident, int) and not isinstance(ident, bool)) or _utf8(ident) else None,
        method=method[:64] if _utf8(method) else "POST",
        tool=name[:128] if _utf8(name) else None,
    )


def _utf8(value: object) -> TypeGuard[str]:
    """A string the answer (UTF-8 JSON) and the audit can carry: the loose parse that reads an
    ambiguous body keeps lone surrogate escapes (``"\\ud800"``), which cannot be encoded."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def rpc_error(ident: str | int | None, code: int, message: str, status: int, data: object = None) -> Response:
    """A JSON-RPC 2.0 error answer (§5.1) with an HTTP status, as the SDK answers its own refusals."""
    error: dict[str, object] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return JSONResponse({"jsonrpc": "2.0", "id": ident, "error": error}, status_code=status)
