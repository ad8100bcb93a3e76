"""Route allowlists: ``METHOD /path/pattern`` rules, matched against the exact path forwarded.

A ``*`` segment matches one path segment, a final ``**`` one or more; the rest is literal.
The path is judged in the form it will be forwarded in, and ambiguous forms are refused,
never normalised: dot or empty segments, backslashes, ``;`` parameters (``..;/`` traverses
on some servers), control characters. Escapes (RFC 3986 §2.1) are allowlisted too: only one
for a printable ASCII character with no literal spelling in a segment passes (``%3F``,
``%23``). So ``%25`` (decoded twice, ``%252e`` is ``.``), encoded separators, whitespace,
non-ASCII bytes (a fullwidth dot NFKC turns into ``.``) and malformed escapes are refused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["AllowRule", "PathRefused", "check_path", "is_allowed", "parse_rule"]

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,=:@%-]*")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_MALFORMED_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
#: The bytes an escape may stand for: printable ASCII with no literal spelling in a segment.
_ESCAPABLE = frozenset(b for b in range(0x21, 0x7F) if not (chr(b).isalnum() or chr(b) in "-._~/\\;%"))
_PATTERN_SEGMENT = re.compile(r"\*\*|\*|[A-Za-z0-9._~!$&'()+,=:@-]+")


class PathRefused(ValueError):
    """The path is not in a form tether will forward."""


@dataclass(frozen=True)
class AllowRule:
    method: str
    segments: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.method} /{'/'.join(self.segments)}"


def parse_rule(text: str) -> AllowRule:
    """``"GET /v1/contacts/*"`` → rule; raises ``ValueError`` for anything else."""
    method, _, path = text.strip().partition(" ")
    if method not in _METHODS:
        raise ValueError(f"method `{method}` is not one of {', '.join(sorted(_METHODS))}")
    if not path.startswith("/") or " " in path:
        raise ValueError("pattern must be `METHOD /path`")
    segments = tuple(path[1:].split("/")) if path != "/" else ()
    for index, segment in enumerate(segments):
        if not _PATTERN_SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise ValueError(f"pattern segment `{segment}` is not allowed")
        if segment == "**" and index != len(segments) - 1:
            raise ValueError("`**` may only end a pattern")
    return AllowRule(method, segments)


def _ambiguous_escape(path: str) -> bool:
    """A malformed escape, or one that stands for a byte outside ``_ESCAPABLE`` (see the module docstring)."""
    if "%" not in path:
        return False
    if _MALFORMED_ESCAPE.search(path):
        return True
    return any(int(match.group(1), 16) not in _ESCAPABLE for match in _ESCAPE.finditer(path))


def check_path(path: str) -> tuple[str, ...]:
    """The segments of a forwardable path, or ``PathRefused``.

    Escapes are allowed only for printable ASCII that cannot appear literally, so the path
    the allowlist and the ``call`` policy see is the one the upstream will decode to.
    """
    if not path.startswith("/") or len(path) > 2048 or not path.isascii() or not path.isprintable():
        raise PathRefused("path must be printable ascii starting with /")
    if "\\" in path or _ambiguous_escape(path):
        raise PathRefused("path contains an ambiguous encoding")
    if path == "/":
        return ()
    segments = tuple(path[1:].split("/"))
    for segment in segments:
        if segment in ("", ".", "..") or not _SEGMENT.fullmatch(segment):
            raise PathRefused("path contains an empty, dot or malformed segment")
    return segments


def _matches(rule: AllowRule, segments: tuple[str, ...]) -> bool:
    pattern = rule.segments
    if pattern and pattern[-1] == "**":
        head = pattern[:-1]
        return len(segments) > len(head) and all(p in ("*", s) for p, s in zip(head, segments, strict=False))
    return len(pattern) == len(segments) and all(p in ("*", s) for p, s in zip(pattern, segments, strict=True))


def is_allowed(rules: Sequence[AllowRule], method: str, segments: tuple[str, ...]) -> bool:
    return any(rule.method == method and _matches(rule, segments) for rule in rules)
