"""Strict request bodies: bounded size, UTF-8, no repeated parameters (RFC 6749 §3.2).

RFC 6749 §3.2 says parameters sent without a value are treated as omitted and a parameter
must not be included more than once; RFC 8693 §2.1 and RFC 8707 §2 let ``resource`` and
``audience`` repeat, so those come back as lists.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from typing import Any
from urllib.parse import unquote

from starlette.requests import ClientDisconnect, Request

from tether.errors import InvalidRequest
from tether.rules.jws import JWSError, strict_json_loads
from tether.streams import read_at_most

__all__ = ["MAX_BODY", "Form", "parse_pairs", "read_body", "read_form", "read_json"]

MAX_BODY = 64 * 1024
MAX_FIELDS = 64


def _unquote(text: str) -> str:
    """``application/x-www-form-urlencoded`` decoding of one name or value (WHATWG URL §5.1):
    ``+`` is a space, ``%XX`` a UTF-8 byte (strict). Most of a token request (JWTs, ids) has
    neither, and is returned as it is; the short ones that do (grant and token type URNs,
    resource URIs) repeat from request to request, and their decoding is memoised."""
    if "%" not in text and "+" not in text:
        return text
    if len(text) <= _MEMO_LENGTH:
        return _decode_short(text)
    return _decode(text)


_MEMO_LENGTH = 256


def _decode(text: str) -> str:
    return unquote(text.replace("+", " "), encoding="utf-8", errors="strict")


#: bounded in entries and in each entry's length; a failed decoding raises and is not kept
_decode_short = functools.lru_cache(maxsize=512)(_decode)


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """``urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text),
    errors="strict", max_num_fields=MAX_FIELDS)``, without its per-field overhead (the token
    endpoint's hot path): the same pairs, the same ``ValueError`` (a field without ``=``, an
    empty field, too many fields) and ``UnicodeDecodeError`` (a percent-escape that is not UTF-8)."""
    if not text:
        return []
    fields = text.split("&")
    if len(fields) > MAX_FIELDS:
        raise ValueError("Max number of fields exceeded")
    pairs = []
    for field in fields:
        name, equals, value = field.partition("=")
        if not equals:
            raise ValueError(f"bad query field: {field[:64]!r}")
        pairs.append((_unquote(name), _unquote(value)))
    return pairs


class Form:
    def __init__(self, values: dict[str, list[str]]) -> None:
        self._values = values

    def get(self, name: str) -> str | None:
        values = self._values.get(name)
        return values[0] if values else None

    def require(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise InvalidRequest(f"`{name}` is required")
        return value

    def all(self, name: str) -> list[str]:
        return list(self._values.get(name, []))


async def read_body(request: Request, *, limit: int = MAX_BODY) -> bytes:
    """The whole body, at most ``limit`` bytes. A client that hangs up before its body ends sent
    an incomplete request (RFC 9112 §8): refused like any malformed one (audited, counted), never
    an unexpected error — a traceback per cut connection would let any client fill the log."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise _too_large(limit)
    try:
        return await read_at_most(request.stream(), limit, lambda: _too_large(limit))
    except ClientDisconnect:
        raise InvalidRequest("the request body ended early", debug="client disconnected before its body ended") from None


def _too_large(limit: int) -> InvalidRequest:
    return InvalidRequest(f"request body must be at most {limit} bytes")


async def read_form(request: Request, *, repeatable: Collection[str] = ()) -> Form:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise InvalidRequest("content type must be application/x-www-form-urlencoded")
    body = await read_body(request)
    try:
        text = body.decode("utf-8", errors="strict")
        pairs = parse_pairs(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest("malformed form body") from exc
    values: dict[str, list[str]] = {}
    for name, value in pairs:
        if value == "":
            continue
        if name in values and name not in repeatable:
            raise InvalidRequest(f"`{name}` must not be repeated")
        values.setdefault(name, []).append(value)
    return Form(values)


async def read_json(request: Request) -> dict[str, Any]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise InvalidRequest("content type must be application/json")
    body = await read_body(request)
    try:
        value = strict_json_loads(body)
    except JWSError as exc:
        raise InvalidRequest(f"malformed json body: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidRequest("json body must be an object")
    return value
