"""Method and URL overrides: what an agent may not add to make the upstream run another call.

The allowlist and the Cedar ``call`` policy judge the request line. Frameworks and proxies
also read a method or a URL from elsewhere — ``X-HTTP-Method-Override: DELETE`` (Rails,
Express, ASP.NET, Google APIs), ``X-Original-URL`` / ``X-Rewrite-URL`` (IIS, Symfony),
``?_method=DELETE`` (Laravel, Express method-override) — so a judged ``GET /v1/customers``
could run as a ``DELETE`` or on another path. Names vary (``X-HTTP-Method``,
``X-Original-Method``, ``X-Override-URL``, ``X-Envoy-Original-Path``, ``_httpMethod``) and
servers fold case and treat ``_`` like ``-`` (CGI, PHP and Rack see ``X_HTTP_METHOD_OVERRIDE``
as the override), so the rule is on the words of a name, not a list of spellings.

A name is lower-cased and split into words at every character other than a letter or digit.

- **Headers** are dropped (like hop-by-hop ones) when a word contains ``method`` or
  ``override``, or ends in ``url``, ``uri`` or ``path``, or the name starts with
  ``x-forwarded-`` or ``x-original-`` (what a proxy in front of the upstream would set).
- **Query parameters** whose name has a word containing ``method`` or ``override`` refuse
  the call (400 ``invalid_request``). Dropping one would forward another URL than the one
  the agent asked for and the allowlist judged, and silently turn an intended ``DELETE``
  into a ``GET``; refusing tells the agent. ``url`` and ``path`` stay allowed in queries,
  where they are ordinary data; ``method`` does not — on RPC-style APIs (``?method=
  photos.delete``) it selects the operation, which the allowlist cannot see either. Fields
  are separated by ``;`` as well as ``&`` (Rack before 3.0 splits at both).
- **Form fields** (``tether.gateway.forms``) are judged by the same rule as query parameters.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator
from urllib.parse import unquote_plus

from tether.errors import InvalidRequest

__all__ = ["check_fields", "check_query", "field_names", "is_override_header"]

_WORD_BREAK = re.compile(r"[^a-z0-9]+")
_FIELD_BREAK = re.compile(r"[&;]")
_PROXY_PREFIXES = ("x-forwarded-", "x-original-")


def _words(name: str) -> list[str]:
    return [word for word in _WORD_BREAK.split(name.lower()) if word]


def _names_a_method(words: list[str]) -> bool:
    return any("method" in word or "override" in word for word in words)


@functools.lru_cache(maxsize=1024)  # header names repeat from call to call
def is_override_header(name: str) -> bool:
    """Whether a request header could carry another method or URL to the upstream (dropped)."""
    lowered = name.lower()
    words = _words(lowered)
    return (
        lowered.startswith(_PROXY_PREFIXES)
        or _names_a_method(words)
        or any(word.endswith(("url", "uri", "path")) for word in words)
    )


def field_names(text: str) -> Iterator[str]:
    """The decoded names of the fields of ``a=1&b=2`` (a query or a urlencoded body)."""
    for field in _FIELD_BREAK.split(text):
        name = field.split("=", 1)[0]
        if name:
            yield unquote_plus(name)


def check_fields(names: Iterable[str], where: str) -> None:
    """Refuse (400) when a ``where`` (``query parameter``, ``form field``) names a method override."""
    for name in names:
        if _names_a_method(_words(name)):
            raise InvalidRequest(
                f"{where}s may not override the method", debug=f"{where} `{name[:64]}` names a method override"
            )


def check_query(query: str) -> None:
    """Refuse a query that names a method override (``_method``, ``X-HTTP-Method-Override``, ...)."""
    check_fields(field_names(query), "query parameter")
