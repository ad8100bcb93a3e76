"""SQLite runs statements inline, but never blocks the event loop on another process's write lock."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from tether.audit.chain import AuditEvent
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
