"""Kit for the store suites: a fresh store per test on each backend, and the tasks and tokens they use.

Each test gets a new SQLite file, or a new PostgreSQL schema and Redis key prefix.
``replicas`` opens several stores on that one database, as several STS replicas (or
processes sharing the SQLite file) would.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from services import REDIS_URL, drop_schema, new_schema, require_postgres_and_redis, schema_dsn
from tether.audit.chain import AuditEvent, first_broken
from tether.model import Task
from tether.store.errors import StoreUnavailable
from tether.store.protocol import Store
from tether.store.records import IssuedToken
from tether.store.sqlite.store import SqliteStore

NOW = 1_800_000_000.0
AGENT = "spiffe://t/agent"
BACKENDS = ["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.redis])]
EVENT = AuditEvent(kind="test", outcome="ok")


async def open_replicas(kind: str, tmp_path: Path, count: int) -> tuple[list[Store], Callable[[], Awaitable[None]]]:
    """``count`` stores on one fresh database (the first migrates it); and how to close them all."""
    stores: list[Store] = []
    if kind == "sqlite":
        stores = [SqliteStore.open(tmp_path / "tether.db") for _ in range(count)]
        schema = ""
    else:
        from tether.store.postgres.store import PostgresRedisStore

        require_postgres_and_redis()
        schema = new_schema()
        for i in range(count):
            dsn = schema_dsn(schema)
            stores.append(await PostgresRedisStore.open(dsn, REDIS_URL, prefix=schema, migrate=i == 0, max_size=20))

    async def close() -> None:
        for store in stores:
            await store.aclose()
        if schema:
            drop_schema(schema)

    return stores, close


def run_replicas(kind: str, tmp_path: Path, count: int, body: Callable[[list[Store]], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        stores, close = await open_replicas(kind, tmp_path, count)
        try:
            return await body(stores)
        finally:
            await close()

    return asyncio.run(main())


def run(kind: str, tmp_path: Path, body: Callable[[Store], Awaitable[Any]]) -> Any:
    return run_replicas(kind, tmp_path, 1, lambda stores: body(stores[0]))


def task(**fields: Any) -> Task:
    values: dict[str, Any] = {
        "id": "tsk_" + secrets.token_hex(6),
        "agent": AGENT,
        "audiences": ("https://a.example",),
        "scopes": frozenset({"read"}),
        "created_at": int(NOW),
        "expires_at": int(NOW) + 900,
        "max_depth": 3,
        "max_tokens": 100,
    }
    values.update(fields)
    return Task(**values)


def token(
    task_id: str | None,
    *,
    parent: str | None = None,
    exp: int | None = None,
    sub: str = AGENT,
    client_id: str | None = None,
) -> IssuedToken:
    return IssuedToken(
        jti=secrets.token_urlsafe(12),
        kind="hop",
        sub=sub,
        client_id=client_id or sub,
        aud="https://a.example",
        scope="read",
        jkt="k" * 43,
        iat=int(NOW),
        exp=exp or int(NOW) + 300,
        task_id=task_id,
        parent_jti=parent,
    )


async def task_and_token(store: Store, **fields: Any) -> tuple[Task, IssuedToken]:
    """A stored task (``fields`` override the defaults) and one token issued on it."""
    t = task(**fields)
    await store.create_task(t, EVENT)
    issued = token(t.id)
    await store.issue_token(issued, now=NOW, spends=[], audit=EVENT)
    return t, issued


async def chain_ok(store: Store) -> int:
    records = [r.as_json() for r in await store.audit_records(after=0, limit=100_000)]
    assert first_broken(records) is None
    return len(records)


async def race(n: int, make: Callable[[int], Awaitable[Any]]) -> list[BaseException | Any]:
    return list(await asyncio.gather(*(make(i) for i in range(n)), return_exceptions=True))


def upgrade_from(kind: str, tmp_path: Path, *, missing: dict[str, int], seed_sql: str,
                 use: Callable[[Store], Coroutine[Any, Any, None]]) -> set[str]:  # fmt: skip
    """A database at the schema before migration ``missing[kind]``, seeded with ``seed_sql``: the store
    refuses to serve it unmigrated, then migrates it in place and ``use`` runs against it. Returns the
    database's index names after the upgrade."""
    if kind == "sqlite":
        import sqlite3

        from tether.store.sqlite.db import migrations as sqlite_migrations

        path = tmp_path / "tether.db"
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version, sql in sqlite_migrations():
            if version >= missing["sqlite"]:
                break
            for statement in sql.split(";\n"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        conn.execute(seed_sql)
        conn.close()
        with pytest.raises(StoreUnavailable, match="run tether migrate"):
            SqliteStore.open(path, migrate_schema=False)
        store = SqliteStore.open(path)
        try:
            asyncio.run(use(store))
            query = "SELECT name FROM sqlite_master WHERE type = 'index'"
            return set(store._db.run_sync(lambda c: {r[0] for r in c.execute(query)}))
        finally:
            store.close()

    import psycopg

    from tether.store.postgres.store import PostgresRedisStore
    from tether.store.postgres.store import migrations as pg_migrations

    require_postgres_and_redis()
    schema = new_schema()

    async def upgrade() -> None:
        with pytest.raises(StoreUnavailable, match="run `tether migrate`"):
            await PostgresRedisStore.open(schema_dsn(schema), REDIS_URL, prefix=schema)
        pg_store = await PostgresRedisStore.open(schema_dsn(schema), REDIS_URL, prefix=schema, migrate=True)
        try:
            await use(pg_store)
        finally:
            await pg_store.aclose()

    try:
        with psycopg.connect(schema_dsn(schema), autocommit=True) as pg:
            pg.execute(f'CREATE SCHEMA "{schema}"')
            pg.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            for version, sql in pg_migrations():
                if version >= missing["postgres"]:
                    break
                pg.execute(sql.encode())
                pg.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
            pg.execute(seed_sql.encode())
        asyncio.run(upgrade())
        with psycopg.connect(schema_dsn(schema), autocommit=True) as pg:
            rows = pg.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s", (schema,)).fetchall()
            return {str(r[0]) for r in rows}
    finally:
        drop_schema(schema)
