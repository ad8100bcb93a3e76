"""Positions in the audit chain found with a few indexed reads, not a scan of the log.

``Store.audit_records(after=n, limit=1)`` is an index lookup on ``seq``, and whether it
returns anything is monotonic in ``n`` — so the head is found by exponential then binary
search. The same search over ``ts`` finds where the last minutes begin (``tether alerts
--since``, rebuilding the risk board); ``ts`` is monotonic up to the clock differences of
replicas, which callers absorb by filtering on ``ts`` again.
"""

from __future__ import annotations

from typing import Protocol

from tether.audit.chain import AuditRecord

__all__ = ["head_seq", "seq_before"]


class AuditReader(Protocol):
    async def audit_records(self, *, after: int, limit: int) -> list[AuditRecord]: ...


async def _next(store: AuditReader, after: int) -> AuditRecord | None:
    page = await store.audit_records(after=after, limit=1)
    return page[0] if page else None


async def head_seq(store: AuditReader) -> int:
    """The ``seq`` of the newest record (0 for an empty chain)."""
    if await _next(store, 0) is None:
        return 0
    low, high = 0, 1  # a record exists after ``low``; find a ``high`` after which none does
    while await _next(store, high) is not None:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if await _next(store, middle) is not None:
            low = middle
        else:
            high = middle
    return high


async def seq_before(store: AuditReader, ts: float, *, head: int | None = None) -> int:
    """The ``seq`` of the last record before ``ts`` (0 if none): reading after it yields the records since ``ts``."""
    high = await head_seq(store) if head is None else head

    async def before(n: int) -> AuditRecord | None:
        record = await _next(store, n - 1)  # the first record at or after ``n``
        return record if record is not None and record.ts < ts else None

    if high == 0:
        return 0
    last = await before(high)
    if last is not None:
        return last.seq
    low = 0  # invariant: ``low`` is 0 or its record is before ``ts``; ``high``'s record is not
    while high - low > 1:
        middle = (low + high) // 2
        if await before(middle) is not None:
            low = middle
        else:
            high = middle
    found = await before(low) if low > 0 else None
    return found.seq if found is not None else 0
