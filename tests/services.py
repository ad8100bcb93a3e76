"""PostgreSQL and Redis for the tests: the machine's servers, one schema and key prefix per deployment.

With ``CI=true`` an unreachable server FAILS the tests that need it — never a silent skip.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

if TYPE_CHECKING:
    from tether.config import Config
    from tether.store.protocol import Store

PG_HOST = os.environ.get("TETHER_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TETHER_TEST_PG_PORT", "5432"))
PG_DB = os.environ.get("TETHER_TEST_PG_DB", "test")
REDIS_URL = os.environ.get("TETHER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require_postgres_and_redis() -> None:
    redis_host, redis_port = REDIS_URL.split("//", 1)[1].split("/", 1)[0].split(":")
    missing = [name for name, ok in (("PostgreSQL", _reachable(PG_HOST, PG_PORT)),
                                     ("Redis", _reachable(redis_host, int(redis_port)))) if not ok]  # fmt: skip
    if missing:
        message = f"{' and '.join(missing)} not reachable on this machine"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + " (CI=true: the scale-out tests may not be skipped)")
        pytest.skip(message)


def base_dsn(port: int | None = None, host: str | None = None) -> str:
    return f"postgresql://{host or PG_HOST}:{port or PG_PORT}/{PG_DB}"


def new_schema() -> str:
    return "t_" + secrets.token_hex(6)


def schema_dsn(schema: str, *, port: int | None = None, host: str | None = None) -> str:
    return f"{base_dsn(port, host)}?options=-csearch_path%3D{schema}"


def drop_schema(schema: str) -> None:
    try:
        with psycopg.connect(base_dsn(), autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    except psycopg.Error:
        pass


def postgres_toml(schema: str, prefix: str) -> str:
    return f'\n[postgres]\ndsn = "{schema_dsn(schema)}"\n\n[redis]\nurl = "{REDIS_URL}"\nprefix = "{prefix}"\n'


#: how many times this process asked which store the suite runs on: ``conftest.py`` holds a
#: test marked ``store_independent`` to never asking, in its setup or its body
store_choices = 0


def use_postgres() -> bool:
    """The whole STS suite runs on PostgreSQL + Redis when ``TETHER_TEST_STORE=postgres``.

    Every deployment that follows ``TETHER_TEST_STORE`` asks here, and is counted."""
    global store_choices
    store_choices += 1
    return os.environ.get("TETHER_TEST_STORE", "sqlite") == "postgres"


def store_sql(config: Config, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Run raw SQL (``?`` placeholders) against a deployment's store, SQLite file or PostgreSQL schema.

    Tests use it to play an attacker with database access (tampering with the audit chain).
    """
    import sqlite3

    if config.store == "postgres":
        with psycopg.connect(config.postgres.dsn, autocommit=True, connect_timeout=3) as conn:
            cur = conn.execute(sql.replace("?", "%s"), params)
            return list(cur.fetchall()) if cur.description else []
    path = config.data_dir / "tether.db"
    with sqlite3.connect(path) as lite:
        rows = lite.execute(sql, params).fetchall()
    lite.close()
    return [tuple(r) for r in rows]


@contextlib.asynccontextmanager
async def open_stores(
    directory: Path, count: int = 1, *, kind: str | None = None, schema: str | None = None
) -> AsyncIterator[list[Store]]:
    """``count`` handles on one fresh store, as separate processes (or replicas) hold them.

    ``kind`` is ``sqlite`` (one file in ``directory``) or ``postgres`` (PostgreSQL + Redis:
    a new schema and key prefix, dropped afterwards); by default the suite's (``TETHER_TEST_STORE``).
    """
    from tether.store.sqlite.store import SqliteStore

    if (kind or ("postgres" if use_postgres() else "sqlite")) == "sqlite":
        lites: list[Store] = [SqliteStore.open(directory / "tether.db") for _ in range(count)]
        try:
            yield lites
        finally:
            for lite in lites:
                await lite.aclose()
        return
    from tether.store.postgres.store import PostgresRedisStore

    require_postgres_and_redis()
    schema = schema or new_schema()
    handles: list[Store] = []
    try:
        for i in range(count):
            handles.append(await PostgresRedisStore.open(schema_dsn(schema), REDIS_URL, prefix=schema, migrate=i == 0))
        yield handles
    finally:
        for handle in handles:
            await handle.aclose()
        drop_schema(schema)


Writer = Callable[[str, tuple[Any, ...]], None]


@contextlib.asynccontextmanager
async def tampering(directory: Path, kind: str) -> AsyncIterator[tuple[Store, Writer]]:
    """A fresh store and a raw SQL writer (``?`` placeholders) on the same database: the writer plays
    someone with database access but no master key."""
    import sqlite3

    schema = new_schema() if kind == "postgres" else None

    def write(sql: str, params: tuple[Any, ...]) -> None:
        if schema is not None:
            with psycopg.connect(schema_dsn(schema), autocommit=True) as conn:
                conn.execute(sql.replace("?", "%s"), params)
            return
        with sqlite3.connect(directory / "tether.db") as lite:
            lite.execute(sql, params)
        lite.close()

    async with open_stores(directory, kind=kind, schema=schema) as (store,):
        yield store, write


def run_tampered(kind: str, directory: Path, body: Callable[[Store, Writer], Awaitable[None]]) -> None:
    """Run ``body(store, sql)`` on a fresh store of ``kind`` with its raw SQL writer (``tampering``)."""
    import asyncio

    async def main() -> None:
        async with tampering(directory, kind) as (store, sql):
            await body(store, sql)

    asyncio.run(main())


async def ended_task(store: Store, *, agent: str = "spiffe://t/agent") -> str:
    """Create and complete a task through ``store``: it publishes one revocation feed entry naming it."""
    from tether.audit.chain import AuditEvent
    from tether.model import Task, TaskState

    now = int(time.time())
    task = Task(id="tsk_" + secrets.token_hex(6), agent=agent, audiences=("https://a.example",),
                scopes=frozenset({"read"}), created_at=now, expires_at=now + 900, max_depth=3, max_tokens=10)  # fmt: skip
    event = AuditEvent(kind="test", outcome="ok")
    await store.create_task(task, event)
    await store.end_task(task.id, TaskState.COMPLETED, now=time.time(), audit=event)
    return task.id
