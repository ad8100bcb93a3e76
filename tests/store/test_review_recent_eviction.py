"""Review of ``tether.store.recent``: the cost of remembering a record once the memory is full.

``RecentAudit`` is written on every issuance of a busy process and is full after its first
``SIZE`` records (about a minute); from then on each ``add`` also drops the oldest. A dict
evicted with ``del d[next(iter(d))]`` scans from the front of its entry table over every slot
already deleted (CPython compacts them only when it resizes), so in steady state each add
walks thousands of dead slots: 11-18 µs per record here, against well under 1 µs while the
memory is not yet full — several times the 2 % of an exchange the memory was added to save, and
invisible to any benchmark of fewer than ``SIZE`` records.

Timing on shared cores, so a ratio between two sizes of the same structure with a wide margin
(about 30x measured before the fix, about 1x after; the test allows 4x), best of three.
"""

from __future__ import annotations

import time

from storekit import NOW

from tether.audit.chain import AuditEvent, AuditRecord, link
from tether.store.recent import SIZE, RecentAudit

_ADDS = 30_000


def _records(count: int) -> list[AuditRecord]:
    event = AuditEvent(kind="token.issued", outcome="ok")
    return [link(event, seq=seq, ts=NOW, prev="0" * 64) for seq in range(1, count + 1)]


def _steady_add_seconds(size: int, records: list[AuditRecord]) -> float:
    """Seconds per ``add`` of one record into a full ``RecentAudit(size)``, best of three."""
    best = float("inf")
    for _ in range(3):
        recent = RecentAudit(size=size)
        recent.add(records[:size])
        start = time.perf_counter()
        for record in records[size : size + _ADDS]:
            recent.add((record,))
        best = min(best, time.perf_counter() - start)
        assert len(recent) == size
    return best / _ADDS


def test_adding_to_a_full_memory_costs_what_adding_to_a_small_one_does() -> None:
    records = _records(SIZE + _ADDS)
    small = _steady_add_seconds(16, records)
    full = _steady_add_seconds(SIZE, records)
    assert full < 4 * small, f"{full * 1e6:.2f} µs per add at SIZE against {small * 1e6:.2f} µs at 16"


def test_the_memory_still_keeps_exactly_the_newest_records() -> None:
    records = _records(40)
    recent = RecentAudit(size=8)
    for record in records:
        recent.add((record,))
    recent.add(records[35:37])  # added again: still one entry each, and nothing newer dropped for them
    assert len(recent) == 8
    assert [r.seq for r in recent.run(after=32, limit=100)] == list(range(33, 41))
    assert recent.run(after=31, limit=100) == []
