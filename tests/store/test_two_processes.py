"""Two processes issuing on one task at once (``tether serve --workers 2`` on one store): nothing is
lost, nothing is counted twice, both are served, and the audit chain stays one chain.

On SQLite the processes take turns at the file's write lock — a group commit that finds it held
waits on its event loop and gathers later writes (``tether.store.sqlite.db``); on PostgreSQL
their group commits queue on the task row and ``audit_head``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from storekit import BACKENDS, EVENT, NOW, chain_ok, task

from services import REDIS_URL, drop_schema, new_schema, require_postgres_and_redis, schema_dsn
from tether.store.protocol import Store
from tether.store.sqlite.store import SqliteStore

WRITER = Path(__file__).resolve().parent / "store_writer.py"
PER_PROCESS = 300


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _writers(kind: str, target: str, task_id: str) -> list[dict[str, object]]:
    processes = [
        subprocess.Popen(
            [sys.executable, str(WRITER), kind, target, task_id, str(PER_PROCESS), f"w{n}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    try:
        for process in processes:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        for process in processes:  # both are open and waiting: start them together
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=120)[0] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert [p.returncode for p in processes] == [0, 0], outputs
    return [json.loads(out.strip().splitlines()[-1]) for out in outputs]


async def _open(kind: str, target: str) -> Store:
    if kind == "sqlite":
        return SqliteStore.open(Path(target))
    from tether.store.postgres.store import PostgresRedisStore

    return await PostgresRedisStore.open(target, REDIS_URL, prefix=target.rsplit("%3D", 1)[1], migrate=True)


def _with_store(kind: str, target: str, body: Callable[[Store], Awaitable[None]]) -> None:
    async def main() -> None:
        store = await _open(kind, target)
        try:
            await body(store)
        finally:
            await store.aclose()

    asyncio.run(main())


def test_two_processes_issue_on_one_task_and_nothing_is_lost(kind: str, tmp_path: Path) -> None:
    t = task(max_tokens=10 * PER_PROCESS)
    schema = ""
    if kind == "sqlite":
        target = str(tmp_path / "tether.db")
    else:
        require_postgres_and_redis()
        schema = new_schema()
        target = schema_dsn(schema)

    async def setup(store: Store) -> None:
        await store.create_task(t, EVENT)

    async def check(store: Store) -> None:
        stored = await store.get_task(t.id)
        assert stored is not None and stored.tokens_issued == 2 * PER_PROCESS
        assert len(await store.task_tokens(t.id, limit=10 * PER_PROCESS)) == 2 * PER_PROCESS
        assert await chain_ok(store) == 1 + 2 * PER_PROCESS
        for n in range(2):  # the marks of both processes were spent
            assert all([await store.spent(f"w{n}-{i}", now=NOW) for i in range(0, PER_PROCESS, 37)])

    try:
        _with_store(kind, target, setup)
        results = _writers(kind, target, t.id)
        assert [r["issued"] for r in results] == [PER_PROCESS, PER_PROCESS]
        _with_store(kind, target, check)
    finally:
        if schema:
            drop_schema(schema)
