"""``Store.audit_tail``: the monitor's read of the chain's head, partly from this process's memory.

It must return exactly the page ``audit_records`` returns, on both backends, whoever wrote the
records (this store, another replica, a write outside the hot paths), and only records whose
transaction committed; ``audit_records`` — what verifiers read — keeps reading the store.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from pathlib import Path

import pytest
from storekit import BACKENDS, EVENT, NOW, run_replicas, task, token

from tether.audit.chain import AuditEvent, AuditRecord, link
from tether.store.errors import CapReached
from tether.store.protocol import Store
from tether.store.recent import RecentAudit


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _record(seq: int) -> AuditRecord:
    return link(AuditEvent(kind="k", outcome="ok"), seq=seq, ts=NOW, prev="0" * 64)


def _reading(size: int = 100) -> RecentAudit:
    recent = RecentAudit(size=size)
    assert recent.run(after=0, limit=1) == []  # a reader has asked: from now on records are kept
    return recent


def test_recent_serves_a_run_from_after_plus_one_and_stops_at_the_first_gap() -> None:
    recent = _reading()
    recent.add(_record(s) for s in (3, 4, 5, 7, 8))
    assert recent.run(after=2, limit=0) == []
    assert [r.seq for r in recent.run(after=2, limit=2)] == [3, 4]
    assert [r.seq for r in recent.run(after=2, limit=10)] == [3, 4, 5]
    assert recent.run(after=5, limit=10) == [], "6 was written elsewhere: the store answers"
    assert [r.seq for r in recent.run(after=6, limit=10)] == [7, 8]
    assert recent.run(after=8, limit=10) == []


def test_recent_keeps_nothing_until_a_reader_asks() -> None:
    """A process whose monitor is off holds no records."""
    recent = RecentAudit(size=100)
    recent.add(_record(s) for s in range(1, 51))
    assert len(recent) == 0
    assert recent.run(after=0, limit=10) == []
    recent.add(_record(s) for s in range(51, 54))
    assert [r.seq for r in recent.run(after=50, limit=10)] == [51, 52, 53]


def test_recent_drops_what_the_reader_has_read_and_the_oldest_past_its_size() -> None:
    recent = _reading(size=4)
    recent.add(_record(s) for s in range(1, 11))
    assert len(recent) == 4, "the oldest dropped past the size"
    assert recent.run(after=5, limit=10) == []
    assert [r.seq for r in recent.run(after=6, limit=2)] == [7, 8]
    assert len(recent) == 4, "7 and 8 are only dropped once the reader moves past them"
    assert [r.seq for r in recent.run(after=8, limit=10)] == [9, 10]
    assert len(recent) == 2
    recent.add([_record(9), _record(11)])  # 9 again: one entry still
    assert len(recent) == 3
    assert recent.run(after=10, limit=10) == [_record(11)] and len(recent) == 1


def test_recent_stays_bounded_when_the_reader_stalls() -> None:
    recent = _reading(size=64)
    for seq in range(1, 20_001):
        recent.add((_record(seq),) if seq % 1000 else (_record(seq), _record(seq - 500)))
        assert len(recent) <= 64
    assert [r.seq for r in recent.run(after=19_990, limit=100)] == list(range(19_991, 20_001))


async def _tail_equals_records(store: Store, head: int) -> None:
    for after, limit in itertools.product(range(head + 2), (1, 2, 3, 5, 100)):
        tail = await store.audit_tail(after=after, limit=limit)
        stored = await store.audit_records(after=after, limit=limit)
        assert tail == stored, (after, limit)


def test_audit_tail_is_the_stored_page_whoever_wrote_the_records(kind: str, tmp_path: Path) -> None:
    async def body(stores: list[Store]) -> None:
        ours, other = stores
        for store in stores:  # each starts following the (empty) chain, as a monitor does
            assert await store.audit_tail(after=0, limit=10) == []
        t = task(max_tokens=3)
        await ours.create_task(t, EVENT)  # not on the hot path: read from the store
        for writer in (ours, ours, other, ours, other, other, ours):
            await writer.append_audit(AuditEvent(kind="k", outcome="ok", principal=str(id(writer))), now=NOW)
        results = await asyncio.gather(
            *(ours.issue_token(token(t.id), now=NOW, spends=[], audit=EVENT) for _ in range(4)), return_exceptions=True
        )
        assert sum(isinstance(r, CapReached) for r in results) == 1, "a refused issuance appends nothing"
        await other.issue_token(token(None), now=NOW, spends=[], audit=EVENT)
        head = 1 + 7 + 3 + 1
        assert len(await ours.audit_records(after=0, limit=100)) == head
        assert len(ours.recent) == 4 + 3, "ours holds exactly the records it appended and saw committed"
        assert len(other.recent) == 3 + 1
        await _tail_equals_records(ours, head)
        await _tail_equals_records(other, head)

    run_replicas(kind, tmp_path, 2, body)


def test_a_stored_record_changed_after_the_write_is_what_verifiers_read(tmp_path: Path) -> None:
    """A database writer's edit is read by ``audit_records`` (the checkpoint writer and ``tether
    audit verify`` see the hash no longer matches); the monitor keeps what was written."""

    async def body(stores: list[Store]) -> None:
        (store,) = stores
        assert await store.audit_tail(after=0, limit=10) == []
        written = await store.append_audit(AuditEvent(kind="token.refused", outcome="refused", principal="a"), now=NOW)
        with sqlite3.connect(tmp_path / "tether.db") as conn:
            conn.execute("UPDATE audit SET principal = 'b' WHERE seq = ?", (written.seq,))
        (stored,) = await store.audit_records(after=0, limit=10)
        assert stored.principal == "b" and stored.hash == written.hash
        (tailed,) = await store.audit_tail(after=0, limit=10)
        assert tailed == written and tailed.principal == "a"

    run_replicas("sqlite", tmp_path, 1, body)
