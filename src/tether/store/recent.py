"""The audit records this process appended, kept after their transaction committed.

The monitor follows the head of the chain; on a busy STS nearly every record it reads is one
this process has just written, so reading it back means a query and a decode of a record whose
fields are already in memory (about 2 % of an exchange's CPU). ``Store.audit_tail`` serves a
run of consecutive records from here and falls back to the store at the first ``seq`` this
process did not write (another replica's, or one written outside the hot paths).

Sound because both backends give the chain's ``seq`` in commit order (SQLite's single writer;
PostgreSQL's ``audit_head`` row, locked until commit): a record is added only once its
transaction committed, so a run starting at ``after + 1`` is exactly what the store would
return, and a record missing here is read from the store as before. Nothing read from the
store is trusted more for it: these are the records this process hashed itself.

Only what the reader has not read yet is kept: nothing until it first reads (a process whose
monitor is off keeps nothing), then the records after its last position, at most ``SIZE``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from tether.audit.chain import AuditRecord

__all__ = ["SIZE", "RecentAudit"]

#: a few seconds of one busy process's records between two polls (about 3 KB each); beyond
#: that the oldest are dropped and read from the store
SIZE = 4096


class RecentAudit:
    """Records by ``seq`` for one reader that moves forward (``run``).

    The order of arrival is a deque beside the dict, so dropping the oldest never scans the
    dict: ``del d[next(iter(d))]`` walks every slot the dict already deleted until it resizes
    (thousands per call once full — found in review).
    """

    def __init__(self, size: int = SIZE) -> None:
        self._size = size
        self._records: dict[int, AuditRecord] = {}
        self._order: deque[int] = deque()  # the keys of ``_records``, oldest first
        self._reading = False

    def add(self, records: Iterable[AuditRecord]) -> None:
        """Remember records whose transaction has committed (once a reader has asked for any)."""
        if not self._reading:
            return
        kept, order = self._records, self._order
        for record in records:
            if record.seq not in kept:
                order.append(record.seq)
            kept[record.seq] = record
        while len(order) > self._size:
            del kept[order.popleft()]

    def run(self, *, after: int, limit: int) -> list[AuditRecord]:
        """The records ``after + 1``, ``after + 2``, … held here, up to ``limit``; empty at the first
        gap. What is at or before ``after`` is dropped: the reader has it."""
        self._reading = True
        kept, order = self._records, self._order
        while order and order[0] <= after:
            del kept[order.popleft()]
        found: list[AuditRecord] = []
        seq = after + 1
        while len(found) < limit and (record := kept.get(seq)) is not None:
            found.append(record)
            seq += 1
        return found

    def __len__(self) -> int:
        return len(self._records)
