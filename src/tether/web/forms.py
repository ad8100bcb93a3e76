"""Strict request bodies: bounded size, UTF-8, no repeated parameters (RFC 6749 §3.2).

RFC 6749 §3.2 says parameters sent without a value are treated as omitted and a parameter
must not be included more than once; RFC 8693 §2.1 and RFC 8707 §2 let ``resource`` and
``audience`` repeat, so those come back as lists.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from tether.errors import InvalidRequest
from tether.rules.jws import JWSError, strict_json_loads
from tether.streams import read_at_most

__all__ = ["MAX_BODY", "Form", "read_body", "read_form", "read_json"]

MAX_BODY = 64 * 1024


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
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise InvalidRequest(f"request body must be at most {limit} bytes")
    return await read_at_most(request.stream(), limit, lambda: InvalidRequest(f"request body must be at most {limit} bytes"))


async def read_form(request: Request, *, repeatable: Collection[str] = ()) -> Form:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise InvalidRequest("content type must be application/x-www-form-urlencoded")
    body = await read_body(request)
    try:
        text = body.decode("utf-8", errors="strict")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text), errors="strict", max_num_fields=64)
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
