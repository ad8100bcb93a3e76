"""Small formatters the page templates call (passed in as values: ``web.render`` owns the Jinja environment)."""

from __future__ import annotations

import datetime as dt
from typing import Any

__all__ = ["FORMATS", "duration", "when"]


def when(ts: float | int | None) -> str:
    """An epoch time as UTC ``YYYY-MM-DD HH:MM:SS`` (empty for none)."""
    if ts is None:
        return ""
    try:
        return dt.datetime.fromtimestamp(float(ts), dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return str(ts)


def duration(seconds: float | int | None) -> str:
    """A short human duration: ``45 s``, ``12 min``, ``3 h``, ``2 d``."""
    if seconds is None:
        return ""
    value = max(0.0, float(seconds))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if value >= size:
            return f"{int(value // size)} {unit}"
    return f"{int(value)} s"


FORMATS: dict[str, Any] = {"when": when, "duration": duration}
