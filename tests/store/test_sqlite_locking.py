"""SQLite runs statements inline, but never blocks the event loop on another process's write lock."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from tether.audit.chain import AuditEvent
from tether.metrics import REGISTRY
from tether.store.errors import StoreUnavailable
from tether.store.sqlite import db
from tether.store.sqlite.store import SqliteStore


def test_a_write_lock_held_elsewhere_is_waited_for_off_the_event_loop(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "tether.db")
    other = sqlite3.connect(tmp_path / "tether.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    release = threading.Timer(0.3, lambda: other.execute("COMMIT"))

    async def scenario() -> tuple[int, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        beat = asyncio.create_task(ticker())
        release.start()
        record = await store.append_audit(AuditEvent(kind="test", outcome="ok"), now=1.0)
        beat.cancel()
        return record.seq, ticks

    try:
        seq, ticks = asyncio.run(scenario())
    finally:
        release.join()
        other.close()
        store.close()
    assert seq == 1, "the write completed once the lock was released"
    assert ticks >= 5, "the event loop kept running while the write waited for the lock"


def test_the_wal_is_checkpointed_and_stays_bounded_under_a_steady_writer(tmp_path: Path) -> None:
    """The worker thread copies pages in the background and the inline connection's raised
    auto-checkpoint rewinds the WAL, so it is reused instead of growing with every commit:
    12,000 audit appends with no checkpoint at all leave a WAL of about 54 MB."""
    store = SqliteStore.open(tmp_path / "tether.db")

    async def scenario() -> int:
        for i in range(12_000):
            await store.append_audit(AuditEvent(kind="test", outcome="ok", detail={"i": i}), now=float(i))
        conn = store._db._connect(5)  # the event loop thread's inline connection
        return int(conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])

    try:
        autocheckpoint = asyncio.run(scenario())
        store._db._executor.submit(lambda: None).result()  # let a queued checkpoint finish
        wal = (tmp_path / "tether.db-wal").stat().st_size
        records = asyncio.run(store.audit_records(after=0, limit=20_000))
    finally:
        store.close()
    assert autocheckpoint > 1000  # raised: most of the copying happens off the request path
    assert len(records) == 12_000
    assert 0 < wal < 24 * 1024 * 1024, f"WAL grew to {wal} bytes"


def _waits(outcome: str) -> float:
    return REGISTRY.get_sample_value("tether_store_lock_waits_total", {"outcome": outcome}) or 0.0


def test_a_group_commit_finding_the_lock_held_waits_on_the_loop_and_gathers_the_writes_behind_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tether serve --workers N``: a batch whose ``BEGIN`` finds another process writing stays open
    on the event loop (never asleep in SQLite's busy handler), the writes that arrive meanwhile join
    it, and it commits on the loop once the lock is free — counted as ``deferred``, not moved."""
    monkeypatch.setattr(db, "_LOOP_WAIT_S", 60.0)  # however slow this machine, the batch is not moved here
    store = SqliteStore.open(tmp_path / "tether.db")
    other = sqlite3.connect(tmp_path / "tether.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    deferred, moved = _waits("deferred"), _waits("moved_batch")

    async def scenario() -> tuple[list[int], int]:
        first = asyncio.create_task(store.append_audit(AuditEvent(kind="test", outcome="ok", detail={"i": 0}), now=1.0))
        while _waits("deferred") == deferred:  # until the batch has found the lock held
            await asyncio.sleep(0)
        behind = [
            asyncio.create_task(store.append_audit(AuditEvent(kind="test", outcome="ok", detail={"i": i}), now=1.0))
            for i in range(1, 10)
        ]
        await asyncio.sleep(0.01)  # the loop runs on while the batch waits
        waiting = len(store._db._local.batch)
        assert not first.done()
        other.execute("COMMIT")
        records = await asyncio.gather(first, *behind)
        return [r.seq for r in records], waiting

    try:
        seqs, waiting = asyncio.run(scenario())
    finally:
        other.close()
        store.close()
    assert seqs == list(range(1, 11)), "every write committed, in order"
    assert waiting == 10, "the writes that arrived while the batch waited joined it"
    assert _waits("deferred") > deferred
    assert _waits("moved_batch") == moved, "committed on the event loop, not handed to the worker thread"


def test_a_group_commit_kept_waiting_moves_to_the_worker_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long transaction in another process: after ``_LOOP_WAIT_S`` the batch waits on the worker
    thread instead (its busy timeout, not the loop's retries), and commits when the lock is free."""
    monkeypatch.setattr(db, "_LOOP_WAIT_S", 0.0)
    store = SqliteStore.open(tmp_path / "tether.db")
    other = sqlite3.connect(tmp_path / "tether.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    moved = _waits("moved_batch")

    async def scenario() -> int:
        write = asyncio.create_task(store.append_audit(AuditEvent(kind="test", outcome="ok"), now=1.0))
        while _waits("moved_batch") == moved:
            await asyncio.sleep(0)
        assert not write.done()
        other.execute("COMMIT")
        return (await write).seq

    try:
        seq = asyncio.run(scenario())
    finally:
        other.close()
        store.close()
    assert seq == 1
    assert _waits("moved_batch") == moved + 1


def test_a_group_commit_still_waiting_when_the_store_closes_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "_LOOP_WAIT_S", 60.0)
    store = SqliteStore.open(tmp_path / "tether.db")
    other = sqlite3.connect(tmp_path / "tether.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    deferred = _waits("deferred")

    async def scenario() -> None:
        write = asyncio.create_task(store.append_audit(AuditEvent(kind="test", outcome="ok"), now=1.0))
        while _waits("deferred") == deferred:
            await asyncio.sleep(0)
        store.close()
        with pytest.raises(StoreUnavailable):
            await write
        await asyncio.sleep(0.01)  # the retry already scheduled finds nothing to do

    try:
        asyncio.run(scenario())
    finally:
        other.execute("ROLLBACK")
        other.close()
