"""Method overrides in form bodies: read and refused before anything is forwarded.

Rack's ``MethodOverride`` (Rails, Sinatra), Laravel and Symfony take ``_method`` from the
fields of a urlencoded or multipart body. So such a body is read whole first (within
``max_request_bytes`` and ``timeout``), its field names are judged by the query rule
(``tether.gateway.overrides``) and the bytes read are forwarded unchanged; any other body,
JSON included, streams through unread. The media type ends at the first ``;`` or ``,``
(RFC 9110 §8.3.1; Rack and PHP stop at ``,`` too). Multipart names count in each spelling a
parser decodes (RFC 2231 ``name*`` included); a content-coded form cannot be judged: refused.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Sequence
from email.message import Message
from email.utils import collapse_rfc2231_value
from urllib.parse import unquote

from starlette.requests import ClientDisconnect, Request

from tether.errors import InvalidRequest
from tether.gateway.overrides import check_fields, field_names
from tether.gateway.proxy import PayloadTooLarge, check_length
from tether.gateway.routes import GatewayRoute
from tether.streams import read_at_most

__all__ = ["declared_length", "form_kind", "multipart_names", "read_form"]

URLENCODED = "application/x-www-form-urlencoded"
_MEDIA_END = re.compile(r"[;,]")
#: a Content-Disposition field anywhere in the body, with its folded continuation lines
_DISPOSITION = re.compile(rb"^[ \t]*content-disposition[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)", re.I | re.M)
#: ``name``, ``name*``, ``name*0``, ``name*0*`` parameters, quoted or not
_NAME_PARAM = re.compile(r"""(?:^|[;,\s])name(?:\*?\d*)\*?\s*=\s*("(?:[^"\\]|\\.)*"?|[^;,\s]*)""", re.I)
_ESCAPED = re.compile(r"\\(.)")


def declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


def form_kind(content_types: Sequence[str]) -> str | None:
    """``urlencoded``, ``multipart`` or None (not a form): how an upstream framework reads the body."""
    media = {_MEDIA_END.split(value, maxsplit=1)[0].strip().lower() for value in content_types}
    if len(media) > 1:
        raise InvalidRequest("conflicting Content-Type fields", debug=f"content types {sorted(media)!r:.200}")
    if not media:  # sent as application/octet-stream
        return None
    kind = media.pop()
    if kind in (URLENCODED, ""):
        return "urlencoded"
    return "multipart" if kind.startswith("multipart/") else None


def multipart_names(body: bytes) -> Iterator[str]:
    """Every field name a multipart parser could find in ``body``, in every spelling it could decode."""
    for match in _DISPOSITION.finditer(body):
        value = re.sub(r"\r?\n[ \t]", " ", match.group(1).decode("latin-1")).strip()
        header = Message()
        header["content-disposition"] = value
        for key, param in header.get_params(header="content-disposition", failobj=[]):
            if key.lower() == "name":  # continuations joined, RFC 2231 decoded
                yield collapse_rfc2231_value(param)
        for raw in _NAME_PARAM.findall(value):
            yield _ESCAPED.sub(r"\1", raw[1:].removesuffix('"')) if raw.startswith('"') else raw


def _names(kind: str, body: bytes) -> Iterator[str]:
    if kind == "urlencoded":
        yield from field_names(body.decode("latin-1"))
        return
    for name in multipart_names(body):
        yield name
        yield unquote(name)


async def read_form(request: Request, route: GatewayRoute, deadline: float) -> bytes | None:
    """The body of a form request, read and checked (to be forwarded as read); None for any other body."""
    kind = form_kind(request.headers.getlist("content-type"))
    if kind is None:
        return None
    codings = {c.strip().lower() for value in request.headers.getlist("content-encoding") for c in value.split(",")}
    if codings - {"", "identity"}:
        raise InvalidRequest("a form body may not be content-coded", debug=f"content-encoding {sorted(codings)!r:.100}")
    check_length(declared_length(request), route)
    try:
        async with asyncio.timeout_at(min(deadline, asyncio.get_running_loop().time() + route.timeout)):
            body = await read_at_most(request.stream(), route.max_request_bytes, lambda: _too_large(route))
    except TimeoutError:
        raise InvalidRequest("the request body did not arrive in time", debug=f"route {route.name}: form body") from None
    except ClientDisconnect:
        raise InvalidRequest("the request body was cut short", debug=f"route {route.name}: form body") from None
    check_fields(_names(kind, body), "form field")
    return body


def _too_large(route: GatewayRoute) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body exceeds {route.max_request_bytes} bytes")
