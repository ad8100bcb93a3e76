"""Small formatters the page templates call (passed in as values: ``web.render`` owns the Jinja environment)."""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import quote

__all__ = ["FORMATS", "duration", "task_href", "when"]


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


def task_href(task_id: object) -> str:
    """The link to a task's page, or ``""`` when its id cannot name one (SECURITY WEB-03).

    Ids come from the store (a database writer, an audit record's ``task``) and are not trusted.
    The server percent-decodes a path before routing, so no escaping keeps a ``/`` inside one
    segment: ``/tasks/t%2Fcancel%2Fconfirm`` routes as the cancel confirmation of task ``t``;
    ``.`` and ``..`` are resolved by the browser. Such an id gets no link (it is shown as text)."""
    if not isinstance(task_id, str) or not task_id or "/" in task_id or task_id in (".", "..") or len(task_id) > 200:
        return ""
    return "/tasks/" + quote(task_id, safe="")


FORMATS: dict[str, Any] = {"when": when, "duration": duration, "task_href": task_href}
