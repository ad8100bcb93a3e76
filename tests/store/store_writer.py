"""A separate process issuing tokens on one task, for the tests of several processes on one store.

    python store_writer.py sqlite PATH TASK COUNT NAME
    python store_writer.py postgres DSN TASK COUNT NAME   (Redis: ``services.REDIS_URL``, prefix: the schema)

It opens the store, prints ``ready``, waits for a line on stdin (so that both processes start
together), issues ``COUNT`` tokens 16 at a time (each spending a mark of its own), and prints one
JSON line: how many were issued, and the SQLite lock waits this process counted.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storekit import EVENT, NOW, token

from services import REDIS_URL
from tether.metrics import REGISTRY
from tether.store.protocol import Store

CONCURRENCY = 16


async def _open(kind: str, target: str) -> Store:
    if kind == "sqlite":
        from tether.store.sqlite.store import SqliteStore

        return SqliteStore.open(Path(target))
    from tether.store.postgres.store import PostgresRedisStore

    schema = target.rsplit("%3D", 1)[1]
    return await PostgresRedisStore.open(target, REDIS_URL, prefix=schema)


async def main(kind: str, target: str, task_id: str, count: int, name: str) -> None:
    store = await _open(kind, target)
    try:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        issued = 0
        for start in range(0, count, CONCURRENCY):
            batch = range(start, min(count, start + CONCURRENCY))
            await asyncio.gather(
                *(
                    store.issue_token(token(task_id), now=NOW, spends=[(f"{name}-{i}", int(NOW) + 600)], audit=EVENT)
                    for i in batch
                )
            )
            issued += len(batch)
    finally:
        await store.aclose()
    waits = {
        outcome: REGISTRY.get_sample_value("tether_store_lock_waits_total", {"outcome": outcome})
        for outcome in ("deferred", "moved_batch", "moved_statement")
    }
    print(json.dumps({"issued": issued, "lock_waits": waits}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]))
