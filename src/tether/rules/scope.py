"""RFC 6749 §3.3 scope syntax and the attenuation subset rule (RFC 8693 §5).

A scope is a set of scope-tokens; ``scope-token = 1*( %x21 / %x23-5B / %x5D-7E )``. Widening
is refused with ``invalid_scope`` naming what was asked for beyond the parent, never silently
narrowed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tether.errors import InvalidRequest, InvalidScope

__all__ = ["MAX_SCOPE_TOKENS", "check_subset", "format_scope", "parse_scope", "parse_scope_list"]

_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}")
MAX_SCOPE_TOKENS = 64


def parse_scope(value: str) -> frozenset[str]:
    """Parse a space-delimited ``scope`` parameter; tokens are case-sensitive (§3.3)."""
    if value != value.strip(" ") or "  " in value:
        raise InvalidScope("scope must be single-space delimited")
    return parse_scope_list(value.split(" ") if value else [])


def parse_scope_list(tokens: Iterable[str]) -> frozenset[str]:
    """Validate individual scope-tokens (e.g. from a JSON list or repeated CLI flags)."""
    out = set()
    for token in tokens:
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            raise InvalidScope(f"invalid scope token `{token!s:.40}`")
        out.add(token)
    if len(out) > MAX_SCOPE_TOKENS:
        raise InvalidRequest(f"at most {MAX_SCOPE_TOKENS} scope tokens are allowed")
    return frozenset(out)


def check_subset(requested: frozenset[str], allowed: frozenset[str], *, what: str = "the subject token") -> None:
    """Refuse any requested scope not already held (a child's scope ⊆ its parent's)."""
    extra = requested - allowed
    if extra:
        raise InvalidScope(f"scope `{' '.join(sorted(extra))}` exceeds {what}")


def format_scope(scopes: Iterable[str]) -> str:
    return " ".join(sorted(scopes))
