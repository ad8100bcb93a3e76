"""Review of the SQLite group commit's wait for another process's write lock (``tether.store.sqlite.db``).

A write waits a bounded time for the lock and then fails closed (``StoreUnavailable``, a 503): never
longer because other writes were waiting before it, and never forever because a write raised
something that is not the database's answer. Real SQLite files, the lock held by a real second
connection (as another ``tether serve`` worker, or an operator's ``sqlite3`` shell, would hold it).
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from storekit import EVENT, NOW, task, token

from tether.audit.chain import AuditEvent
from tether.metrics import REGISTRY
from tether.store.errors import StoreUnavailable
from tether.store.sqlite import db
from tether.store.sqlite.store import SqliteStore


def _moved() -> float:
    return REGISTRY.get_sample_value("tether_store_lock_waits_total", {"outcome": "moved_batch"}) or 0.0


def test_writes_queued_behind_a_held_lock_are_refused_within_their_own_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another connection holds the write lock and does not let go. Each batch moved to the worker
    thread waited the whole busy timeout there, one after another: the 40th write waited 40 times as
    long as the first, and a lock held for minutes kept requests waiting for hours. Every write is
    refused once its own wait is over, so when the lock is released (here after several waits'
    worth of time) none is still waiting to commit."""
    monkeypatch.setattr(db, "_LOOP_WAIT_S", 0.0)  # straight to the worker thread
    monkeypatch.setattr(db, "_WORKER_BUSY_MS", 100)  # the bounded wait, short for the test
    store = SqliteStore.open(tmp_path / "tether.db")
    other = sqlite3.connect(tmp_path / "tether.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")

    async def scenario() -> list[object]:
        writes = []
        for i in range(40):  # 40 batches: each write arrives once the batch before it has moved
            moved = _moved()
            event = AuditEvent(kind="test", outcome="ok", detail={"i": i})
            writes.append(asyncio.ensure_future(store.append_audit(event, now=NOW)))
            while _moved() == moved:
                await asyncio.sleep(0.001)
        # ten waits' worth of time after the last arrived, the lock is released
        await asyncio.wait(writes, timeout=1.0)
        other.execute("COMMIT")
        return list(await asyncio.gather(*writes, return_exceptions=True))

    try:
        outcomes = asyncio.run(scenario())
        records = asyncio.run(store.audit_records(after=0, limit=100))
    finally:
        other.close()
        store.close()
    late = [i for i, o in enumerate(outcomes) if not isinstance(o, StoreUnavailable)]
    assert late == [], f"writes still waiting (then committed) long after their own wait was over: {late}"
    assert records == [], "no write waited past its own bound to commit after the lock was released"


def test_a_write_raising_an_unexpected_error_fails_its_batch_and_leaves_nobody_waiting(tmp_path: Path) -> None:
    """A write whose own code raises (here an audit detail the chain cannot encode) inside a batch
    committed on the event loop: the batch is rolled back and every caller in it gets an answer —
    before, the exception escaped the loop's callback and the batch's callers, innocent ones
    included, waited forever. The next batch commits."""
    store = SqliteStore.open(tmp_path / "tether.db")

    async def scenario() -> tuple[list[object], int]:
        t = task()
        await store.create_task(t, EVENT)
        innocent = token(t.id)
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                store.issue_token(innocent, now=NOW, spends=[("m", int(NOW) + 600)], audit=EVENT),
                store.append_audit(AuditEvent(kind="test", outcome="ok", detail={"bad": object()}), now=NOW),
                return_exceptions=True,
            ),
            timeout=20,
        )
        assert isinstance(outcomes[1], Exception)
        if outcomes[0] is not None:  # failed with its batch: nothing of it remains
            assert await store.get_token(innocent.jti) is None
            assert not await store.spent("m", now=NOW)
        again = await store.append_audit(AuditEvent(kind="test", outcome="ok"), now=NOW)
        return list(outcomes), again.seq

    try:
        _, seq = asyncio.run(scenario())
    finally:
        store.close()
    assert seq >= 2
