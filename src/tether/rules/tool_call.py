"""What one MCP ``tools/call`` asks for, in the forms policy, audit and refusals need — pure.

A tool call is authorized per request (MCP authorization spec 2026-07-28; tether DESIGN
"request-time policy"): Cedar sees the tool's name and its arguments, the audit records the
name and a digest of the arguments (never the arguments: they may carry data the agent read),
and the scope convention ``tool:<name>`` lets a deployment authorize tools without Cedar.

* ``canonical_json`` is the RFC 8785 (JCS) serialization for the JSON an MCP client can send:
  object members sorted by UTF-16 code units, no insignificant whitespace, strings escaped as
  ECMAScript's ``JSON.stringify`` does, numbers as ECMAScript prints them; NaN and infinities
  are not JSON and are refused. The digest of a call is SHA-256 over it (base64url, no
  padding), so the same arguments digest the same whatever the client's key order.
* ``argument_tags`` is how Cedar sees the arguments: an entity whose tags are the top-level
  argument names, each a ``String`` (a string argument as itself, anything else as its
  canonical JSON), so ``context.arguments.getTag("path") like "/shared/*"`` needs no schema
  per tool.
* Arguments are capped (``max_bytes`` of canonical JSON, ``MAX_DEPTH`` of nesting) and a call
  over the cap is refused with a clear error, never truncated: a policy must see all of what
  the tool will receive.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

__all__ = [
    "DEFAULT_MAX_ARGUMENT_BYTES",
    "DEFAULT_SCOPE_PREFIX",
    "MAX_DEPTH",
    "ToolCall",
    "ToolCallError",
    "argument_tags",
    "canonical_json",
    "digest",
    "json_text_argument",
    "json_text_refusal",
    "missing_tool_scope",
    "parse_tool_call",
    "valid_tool_name",
]

#: canonical JSON bytes of one call's arguments that policy will look at
DEFAULT_MAX_ARGUMENT_BYTES = 16 * 1024
#: nesting of objects and arrays inside the arguments
MAX_DEPTH = 32
#: the scope that grants one tool without Cedar: ``tool:<name>``
DEFAULT_SCOPE_PREFIX = "tool:"
#: the largest integer every JSON implementation reads exactly (RFC 7493 §2.2)
MAX_SAFE_INTEGER = 2**53 - 1
#: MCP tool names (MCP spec "Tool names": 1-128 of A-Z a-z 0-9 _ - . /)
MAX_TOOL_NAME = 128
_TOOL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-./")


class ToolCallError(ValueError):
    """A ``tools/call`` that cannot be judged: refused as the request it is (JSON-RPC invalid params)."""


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: Mapping[str, Any]
    canonical: str
    digest: str

    @property
    def size(self) -> int:
        return len(self.canonical.encode())


def _number(value: int | float) -> str:
    """ECMAScript Number::toString for a finite number (RFC 8785 §3.2.2.3)."""
    if isinstance(value, bool):
        raise TypeError("bool is not a number")
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            # RFC 7493 §2.2: beyond ±(2**53 - 1) an integer is not interoperable. Its canonical form
            # would be the rounded double while a Python tool receives the exact value, so a policy
            # on a numeric id could be passed with one number and the tool run on another.
            raise ToolCallError("arguments hold an integer beyond ±(2**53 - 1) (RFC 7493 §2.2); send it as a string")
        return str(value)
    if not math.isfinite(value):
        raise ToolCallError("arguments hold NaN or an infinity, which JSON cannot carry")
    if value == 0:
        return "0"
    text = repr(value)  # shortest round-trip digits, as ECMAScript uses
    if value.is_integer() and abs(value) < 1e21:
        return format(Decimal(text), "f").split(".")[0]
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    exp = int(exponent)
    if -7 < exp < 21:  # ECMAScript writes these in positional notation, with the same digits
        return format(Decimal(text), "f")
    mantissa = mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa
    return f"{mantissa}e{'+' if exp > 0 else '-'}{abs(exp)}"


def _text(value: str) -> str:
    """``value`` if it is Unicode text: a lone surrogate (which ``\\ud800`` in JSON can carry) is not
    (I-JSON, RFC 7493 §2.1, which RFC 8785 §3.1 requires), and could not be hashed or sorted."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ToolCallError("arguments hold a lone surrogate, which is not Unicode text") from None
    return value


def _string(value: str) -> str:
    return json.dumps(_text(value), ensure_ascii=False)


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be")


def canonical_json(value: Any, *, depth: int = 0) -> str:
    """RFC 8785 canonical JSON of ``value`` (dicts with string keys, lists, str, int, float, bool, None)."""
    if depth > MAX_DEPTH:
        raise ToolCallError(f"arguments nest deeper than {MAX_DEPTH} levels")
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(canonical_json(item, depth=depth + 1) for item in value) + "]"
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise ToolCallError("argument object keys must be strings")
        for key in value:
            _text(key)
        members = sorted(value.items(), key=lambda kv: _utf16_key(kv[0]))
        return "{" + ",".join(f"{_string(k)}:{canonical_json(v, depth=depth + 1)}" for k, v in members) + "}"
    raise ToolCallError(f"arguments hold a {type(value).__name__}, which is not JSON")


def digest(canonical: str) -> str:
    """SHA-256 of the canonical text, base64url without padding (as RFC 9449 ``ath``)."""
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def parse_tool_call(params: object, *, max_bytes: int = DEFAULT_MAX_ARGUMENT_BYTES) -> ToolCall:
    """The tool and arguments of ``tools/call`` params, checked and canonicalized.

    ``arguments`` may be absent (a tool without input) but, when present, must be an object
    (MCP ``CallToolRequestParams``); the name must be an MCP tool name."""
    if not isinstance(params, Mapping):
        raise ToolCallError("tools/call params must be an object")
    name = params.get("name")
    if not isinstance(name, str) or not name:
        raise ToolCallError("tools/call names no tool")
    if not valid_tool_name(name):
        raise ToolCallError("tools/call names a tool with an invalid name")
    arguments = params.get("arguments")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, Mapping):
        raise ToolCallError("tools/call arguments must be an object")
    canonical = canonical_json(arguments)
    if len(canonical.encode()) > max_bytes:
        raise ToolCallError(f"tools/call arguments exceed {max_bytes} bytes; the call is refused, not truncated")
    return ToolCall(name=name, arguments=arguments, canonical=canonical, digest=digest(canonical))


def _resolve(schema: Mapping[str, Any], node: object) -> Mapping[str, Any] | None:
    """A property schema with a local ``$ref`` (``#/$defs/X``, ``#/definitions/X``) followed once."""
    if not isinstance(node, Mapping):
        return None
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith(("#/$defs/", "#/definitions/")):
        section, _, name = ref[2:].partition("/")
        target = schema.get(section)
        found = target.get(name) if isinstance(target, Mapping) else None
        return found if isinstance(found, Mapping) else None
    return node


def _declares_string(schema: Mapping[str, Any], node: object) -> bool:
    prop = _resolve(schema, node)
    if prop is None:
        return False
    kind = prop.get("type")
    if kind == "string" or (isinstance(kind, list) and "string" in kind):
        return True
    branches = [b for key in ("anyOf", "oneOf") for b in (prop.get(key) or []) if isinstance(prop.get(key), list)]
    return any(_declares_string(schema, branch) for branch in branches)


def json_text_argument(arguments: Mapping[str, Any], schema: Mapping[str, Any] | None) -> str | None:
    """The name of an argument that is a string holding a JSON object or array, where the tool's
    input schema (``None``: unknown) does not declare that argument a string; else None.

    A server may decode such a string before the tool runs (the MCP Python SDK does, for every
    parameter not typed ``str``), so the tool would receive a structure whose text Cedar never
    saw (``"{\"k\": \"p\\u0061ss\"}"`` is ``{"k": "pass"}`` to the tool): the call is refused,
    the agent sends the value as JSON instead (MCP-15)."""
    properties = schema.get("properties") if isinstance(schema, Mapping) else None
    for name, value in arguments.items():
        if not isinstance(value, str) or value.lstrip(" \t\n\r")[:1] not in ("{", "["):
            continue
        try:
            decoded = json.loads(value)
        except (ValueError, RecursionError):
            continue
        if not isinstance(decoded, dict | list):
            continue
        declared = properties.get(name) if isinstance(properties, Mapping) else None
        if schema is None or not _declares_string(schema, declared):
            return name
    return None


def json_text_refusal(name: str) -> str:
    """The refusal's words for ``json_text_argument``: what the agent should send instead."""
    return (
        f"Invalid params: argument `{name[:64]}` is a string holding JSON, which the server may decode "
        "before the tool runs; send the value as JSON, not as text"
    )


def valid_tool_name(name: str) -> bool:
    """MCP tool names: 1-128 characters of A-Z a-z 0-9 ``_ - . /``."""
    return 0 < len(name) <= MAX_TOOL_NAME and set(name) <= _TOOL_CHARS


def argument_tags(arguments: Mapping[str, Any]) -> dict[str, str]:
    """Cedar tags for the arguments: strings as themselves, other values as canonical JSON."""
    return {k: v if isinstance(v, str) else canonical_json(v) for k, v in arguments.items()}


def missing_tool_scope(scopes: Collection[str], tool: str, prefix: str = DEFAULT_SCOPE_PREFIX) -> str | None:
    """The scope the token lacks for ``tool`` under the scope convention, or None if it holds it."""
    needed = prefix + tool
    return None if needed in scopes else needed
