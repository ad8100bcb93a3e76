"""``/``: the overview: tasks by state, exchanges per second, refusals by error, latest alerts, health.

Every figure comes from a bounded read: ``count_tasks`` (one grouped query), ``audit_counts``
over the records since a point found by ``monitor.cursor.seq_before`` (a few indexed reads),
at most ``SCAN`` records examined; the newest alerts; the store's shared health check; and the
revocation feed's newest entry found by binary search over ``revocations_after``. Refusals
nobody proved to own are written as one record and then a counted summary per interval
(``audit.anonymous``): a summary stands for ``detail.aggregated`` refusals, so it is counted as
that many, not as one.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tether.audit.chain import AuditRecord
from tether.console.pages.fmt import FORMATS, task_href
from tether.console.pages.shown import plain
from tether.console.web import Human, context, page, render
from tether.model import TaskState
from tether.monitor.cursor import head_seq, seq_before
from tether.store.protocol import Store
from tether.store.records import Revocation
from tether.web.forms import Form

__all__ = ["ROUTES", "FeedHead", "Refusals", "count_refusals", "feed_head", "overview"]

#: the most audit records one overview reads for its rates (the page stays fast on a busy chain)
SCAN = 10_000
_PAGE = 1000
MINUTE, QUARTER = 60.0, 900.0


@dataclass(frozen=True)
class FeedHead:
    """The revocation feed's newest entry still in force (``None``: nothing revoked is still live)."""

    newest: Revocation | None
    age: float | None


@dataclass(frozen=True)
class Refusals:
    """Refusals by wire error since a point, and whether the window had more records than were read."""

    by_error: list[tuple[str, int]]
    total: int
    partial: bool


async def feed_head(store: Store, *, now: float) -> FeedHead:
    """The newest live feed entry: whether any entry exists after ``n`` is monotonic in ``n``, so a
    binary search finds it in a few indexed reads (the feed itself can hold many thousands)."""

    async def after(n: int) -> Revocation | None:
        found = await store.revocations_after(n, now=now, limit=1)
        return found[0] if found else None

    first = await after(0)
    if first is None:
        return FeedHead(None, None)
    # invariant: an entry exists after ``low`` and none after ``high``
    low, high = first.seq - 1, max(first.seq, 1)
    while await after(high) is not None:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if await after(middle) is not None:
            low = middle
        else:
            high = middle
    newest = await after(low) or first  # the one entry after ``low`` and not after ``high``
    return FeedHead(newest, max(0.0, now - newest.at))


#: badge classes by severity: a stored severity names no CSS class of its own (WEB-03)
_SEVERITY = {"critical": "severity-critical", "high": "severity-high", "medium": "severity-medium", "low": "severity-low",
             "info": "severity-info"}  # fmt: skip


def _alert(record: AuditRecord) -> dict[str, object]:
    """An alert record as the overview shows it: stored text with control characters visible (``shown.plain``)."""
    detail = record.detail
    severity = plain(detail.get("severity"), limit=20)
    return {
        "ts": record.ts, "severity": severity, "severity_class": _SEVERITY.get(severity.lower(), ""),
        "detector": plain(detail.get("detector"), limit=80), "reason": plain(detail.get("reason")),
        "agent": plain(detail.get("agent") or record.principal, limit=200), "task": plain(record.task, limit=80),
        "task_href": task_href(record.task),
    }  # fmt: skip


def _summary_extra(record: AuditRecord) -> int:
    """How many refusals beyond one this record stands for (an anonymous refusals' summary)."""
    counted = record.detail.get("aggregated")
    if record.outcome != "refused" or not isinstance(counted, int) or isinstance(counted, bool) or counted < 1:
        return 0
    return counted - 1


async def count_refusals(store: Store, *, after: int, head: int) -> Refusals:
    """Refusals by error over the records after ``after`` (at most ``SCAN`` of the newest)."""
    start = max(after, head - SCAN)
    counts = await store.audit_counts(after=start, scan=SCAN)
    by_error: dict[str, int] = {}
    for (_kind, outcome, error), n in counts.items():
        if outcome == "refused":
            by_error[error or "unspecified"] = by_error.get(error or "unspecified", 0) + n
    if by_error:  # summaries: add what each stands for beyond its own record
        cursor, read = start, 0
        while read < SCAN:
            records = await store.audit_records(after=cursor, limit=min(_PAGE, SCAN - read))
            if not records:
                break
            for record in records:
                extra = _summary_extra(record)
                if extra:
                    key = record.error or "unspecified"
                    by_error[key] = by_error.get(key, 0) + extra
            cursor, read = records[-1].seq, read + len(records)
    ranked = sorted(by_error.items(), key=lambda item: (-item[1], item[0]))
    return Refusals(ranked, sum(by_error.values()), partial=start > after)


@page("view")
async def overview(request: Request, human: Human, form: Form | None) -> Response:
    """The figures an operator checks first, each linking to the page behind it."""
    ctx = context(request)
    now = ctx.now()
    try:
        await ctx.health()
        store_ok = True
    except Exception:  # noqa: BLE001 - any failure of the shared check means "failing", shown as such
        store_ok = False
    if not store_ok:
        return render(request, "overview.html", {"title": "Overview", "store_ok": False}, status=503, human=human)
    store = ctx.store
    counts = await store.count_tasks(now=now)
    head = await head_seq(store)
    minute = await seq_before(store, now - MINUTE, head=head)
    quarter = await seq_before(store, now - QUARTER, head=head)
    recent = await store.audit_counts(after=max(minute, head - SCAN), scan=SCAN)
    issued = sum(n for (kind, outcome, _), n in recent.items() if kind == "token.issued" and outcome == "ok")
    refusals = await count_refusals(store, after=quarter, head=head)
    alerts = [_alert(r) for r in (await store.search_audit(kind="alert.raised", limit=5)).records]
    feed = await feed_head(store, now=now)
    states = [(state.value, counts.get(state, 0)) for state in TaskState]
    return render(request, "overview.html", {
        **FORMATS, "title": "Overview", "store_ok": True, "live": counts.get(TaskState.ACTIVE, 0), "states": states,
        "rate": issued / MINUTE, "issued": issued, "rate_partial": head - minute > SCAN, "refusals": refusals,
        "alerts": alerts, "feed": feed, "now": now,
    }, human=human)  # fmt: skip


ROUTES: list[BaseRoute] = [Route("/", overview, methods=["GET"])]
