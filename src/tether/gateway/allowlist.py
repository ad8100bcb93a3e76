"""Route allowlists: ``METHOD /path/pattern`` rules, matched against the exact path forwarded.

A pattern segment ``*`` matches exactly one path segment and a final ``**`` matches the
rest (one or more segments); everything else matches literally. The path an agent
sends is checked in the same form it will be forwarded in, and ambiguous forms are
refused outright rather than normalised: dot-segments, empty segments, backslashes,
encoded ``/``, ``\\`` or ``.``, escapes of characters that have a plain spelling, ``;``
path parameters (``..;/`` is a traversal to some servers) and control characters —
the classic proxy-allowlist bypasses. So what was allowed is exactly what the upstream
receives and decodes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

__all__ = ["AllowRule", "PathRefused", "check_path", "is_allowed", "parse_rule"]

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,=:@%-]*")
_BAD_ESCAPES = re.compile(r"%(2[fF]|5[cC]|2[eE]|00)")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
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


def _escapes_unreserved(path: str) -> bool:
    """An escape that decodes to an unreserved character has a plain spelling (RFC 3986 §2.3)."""
    for match in _ESCAPE.finditer(path):
        char = chr(int(match.group(1), 16))
        if char.isascii() and (char.isalnum() or char in "-._~"):
            return True
    return False


def _decodes_cleanly(path: str) -> bool:
    """Every ``%`` starts a two-hex-digit escape and the decoded bytes are valid UTF-8.

    Refuses ``%zz``, a trailing ``%``, IIS-style ``%u002e`` and overlong forms such as
    ``%c0%ae`` (a dot to lenient decoders) — each one a different path to some server.
    """
    if "%" not in path:
        return True
    if re.search(r"%(?![0-9A-Fa-f]{2})", path):
        return False
    try:
        unquote_to_bytes(path).decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        return False
    return True


def check_path(path: str) -> tuple[str, ...]:
    """The segments of a forwardable path, or ``PathRefused``.

    Escapes are allowed only where a character cannot appear literally, so the path the
    allowlist and the ``call`` policy see is the one the upstream will decode to.
    """
    if not path.startswith("/") or len(path) > 2048 or not path.isascii() or not path.isprintable():
        raise PathRefused("path must be printable ascii starting with /")
    if "\\" in path or not _decodes_cleanly(path) or _BAD_ESCAPES.search(path) or _escapes_unreserved(path):
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
