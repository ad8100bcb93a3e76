"""How the records and approvals pages show values from the store (SECURITY WEB-03).

Agent ids, purposes, alert reasons, audit details and approval views are attacker-chosen text.
Jinja2 autoescaping makes them inert HTML; these helpers also make them *visible* as what they
are: control and format characters (bidi overrides such as U+202E, zero-width joiners, escape
codes) are shown as ``\\u202e`` instead of reordering or hiding what a human reads (the
"Trojan Source" trick, CVE-2021-42574), and long values are cut with an ellipsis. They also
read and check the pages' query parameters: a bad one is ``invalid_request`` (a 400 page), never a 500.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request

from tether.errors import InvalidRequest

__all__ = ["compact", "int_param", "plain", "text_param", "when"]

_MAX_PARAM = 512
_DIGITS = re.compile(r"[0-9]{1,18}")


def plain(value: object, *, limit: int = 300) -> str:
    """``value`` as text a human can read as is: control/format characters escaped, cut at ``limit``."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    out = []
    for char in text[: limit + 1]:
        if unicodedata.category(char) in ("Cc", "Cf", "Co", "Cs", "Zl", "Zp") and char != " ":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    shown = "".join(out)
    return shown[:limit] + "…" if len(shown) > limit else shown


def compact(value: Any, *, limit: int = 300) -> str:
    """Compact JSON with every non-ASCII character escaped (so bidi controls show as ``\\u202e``), cut at ``limit``."""
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    except (TypeError, ValueError, RecursionError):
        text = "(not JSON)"
    return text[:limit] + "…" if len(text) > limit else text


def when(ts: float | int | None) -> str:
    """A UTC timestamp a human reads (``2026-12-07 15:03:28Z``)."""
    if ts is None:
        return ""
    try:
        return dt.datetime.fromtimestamp(float(ts), dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return "?"


def int_param(request: Request, name: str, *, low: int = 1, high: int = 2**62) -> int | None:
    """An optional integer query parameter within ``[low, high]``; anything else is a 400."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise InvalidRequest(f"`{name}` must be a whole number from {low} to {high}")
    return int(raw)


def text_param(request: Request, name: str, *, limit: int = _MAX_PARAM, pattern: re.Pattern[str] | None = None) -> str | None:
    """An optional text query parameter: printable, at most ``limit`` characters, matching ``pattern``."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    raw = raw.strip()
    if not raw:
        return None
    if len(raw) > limit or not raw.isprintable() or (pattern is not None and not pattern.fullmatch(raw)):
        raise InvalidRequest(f"`{name}` is not a valid value")
    return raw


def fields(detail: Mapping[str, Any], *names: str) -> dict[str, str]:
    """``plain`` text of some fields of a detail mapping (missing ones are empty)."""
    return {name: plain(detail.get(name)) if not isinstance(detail.get(name), dict | list) else compact(detail.get(name))
            for name in names}  # fmt: skip
