"""Method and URL overrides: what an agent may not add to make the upstream run another call.

The allowlist and the Cedar ``call`` policy judge the request line, but frameworks and
proxies also read a method or URL from headers (``X-HTTP-Method-Override``,
``X-Original-URL``) and parameters (``_method``), under names that vary and fold case and
``_``/``-``. So the rule is on the words of a name (split at anything but letters and digits):
such headers are dropped; such query parameters and form fields refuse the call, since
dropping one would forward another URL than the one judged. ``url`` and ``path`` are data in
a query; ``method`` is not (``?method=photos.delete`` selects the operation on RPC APIs).
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
