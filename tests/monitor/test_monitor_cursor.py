"""Finding the head of the chain and the start of the last minutes with a few indexed reads."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tether.audit.chain import AuditEvent, AuditRecord
from tether.monitor.cursor import head_seq, seq_before
from tether.store.sqlite.store import SqliteStore

T0 = 1_700_000_000.0


class CountingStore:
    """The real store, counting how many reads the search needs."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.reads = 0

    async def audit_records(self, *, after: int, limit: int) -> list[AuditRecord]:
        self.reads += 1
        return await self.store.audit_records(after=after, limit=limit)


@pytest.mark.parametrize("count", [0, 1, 2, 3, 64, 65, 1000])
def test_head_seq_finds_the_newest_record(tmp_path: Path, count: int) -> None:
    async def main() -> None:
        store = SqliteStore.open(tmp_path / "tether.db")
        try:
            for i in range(count):
                await store.append_audit(AuditEvent(kind="x", outcome="ok"), now=T0 + i)
            counting = CountingStore(store)
            assert await head_seq(counting) == count
            assert counting.reads <= 2 * max(1, count).bit_length() + 2
        finally:
            store.close()

    asyncio.run(main())


def test_seq_before_splits_the_chain_by_time(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteStore.open(tmp_path / "tether.db")
        try:
            assert await seq_before(store, T0) == 0
            for i in range(100):
                await store.append_audit(AuditEvent(kind="x", outcome="ok"), now=T0 + i)  # seq i+1 at T0+i
            assert await seq_before(store, T0 - 5) == 0
            assert await seq_before(store, T0) == 0
            assert await seq_before(store, T0 + 0.5) == 1
            assert await seq_before(store, T0 + 40) == 40
            assert await seq_before(store, T0 + 99) == 99
            assert await seq_before(store, T0 + 500) == 100
            after = await store.audit_records(after=await seq_before(store, T0 + 40), limit=1000)
            assert all(r.ts >= T0 + 40 for r in after) and len(after) == 60
        finally:
            store.close()

    asyncio.run(main())
