"""The STS checkpoint writer (``tether.sts.checkpoints``) on a real store, time passed in explicitly.

It signs after ``checkpoint_every`` records or ``checkpoint_seconds`` with at least one new
record, never on an idle log, re-signs as soon as the key rotates, finds the head of an
existing chain after a restart, and two replicas on one chain write one checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services import REDIS_URL, drop_schema, new_schema, require_postgres_and_redis, schema_dsn
from tether.audit.chain import AuditEvent, AuditRecord
from tether.audit.checkpoint import CHECKPOINT_KIND
from tether.audit.export import verify_export
from tether.keys.keyring import KeyRing, SigningKey, generate_key, public_jwk
from tether.store.protocol import Store
from tether.store.sqlite.store import SqliteStore
from tether.sts.checkpoints import CLAIM_SECONDS, AuditCheckpoints

ISS = "https://sts.example"
BACKENDS = ["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.redis])]


def signing_key() -> SigningKey:
    private = generate_key("ES256")
    jwk = public_jwk(private, "ES256")
    return SigningKey(kid=jwk["kid"], alg="ES256", private=private, public=type(private).import_key(jwk), jwk=jwk,
                      retired_at=None, not_after=None)  # fmt: skip


@dataclass
class Chain:
    """A store on one chain, and the database under it for playing an attacker with write access."""

    store: Store
    path: Path
    schema: str | None

    def sql(self, statement: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """Run raw SQL (``?`` placeholders) on the SQLite file or the PostgreSQL schema."""
        if self.schema is not None:
            import psycopg

            with psycopg.connect(schema_dsn(self.schema), autocommit=True) as conn:
                cur = conn.execute(statement.replace("?", "%s"), params)
                return list(cur.fetchall()) if cur.description else []
        with contextlib.closing(sqlite3.connect(self.path)) as lite, lite:
            return list(lite.execute(statement, params).fetchall())

    def sql_many(self, statement: str, rows: list[tuple[object, ...]]) -> None:
        """Run one statement for each row of parameters, in one transaction."""
        if self.schema is not None:
            import psycopg

            with psycopg.connect(schema_dsn(self.schema)) as conn, conn.cursor() as cur:
                cur.executemany(statement.replace("?", "%s"), rows)
            return
        with contextlib.closing(sqlite3.connect(self.path)) as lite, lite:
            lite.executemany(statement, rows)


def run_chain(kind: str, tmp_path: Path, body: Callable[[Chain], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        path = tmp_path / "tether.db"
        if kind == "sqlite":
            store: Store = SqliteStore.open(path)
            schema = None
        else:
            from tether.store.postgres.store import PostgresRedisStore

            require_postgres_and_redis()
            schema = new_schema()
            store = await PostgresRedisStore.open(schema_dsn(schema), REDIS_URL, prefix=schema, migrate=True, max_size=4)
        try:
            return await body(Chain(store, path, schema))
        finally:
            await store.aclose()
            if schema is not None:
                drop_schema(schema)

    return asyncio.run(main())


def run(kind: str, tmp_path: Path, body: Callable[[Store], Awaitable[Any]]) -> Any:
    return run_chain(kind, tmp_path, lambda chain: body(chain.store))


async def add(store: Store, n: int, *, now: float) -> None:
    for i in range(n):
        await store.append_audit(AuditEvent(kind="token.issued", outcome="ok", jti=f"j{i}"), now=now)


async def rows(store: Store) -> list[dict[str, Any]]:
    return [r.as_json() for r in await store.audit_records(after=0, limit=10_000)]


async def checkpoints(store: Store) -> list[AuditRecord]:
    return [r for r in await store.audit_records(after=0, limit=10_000) if r.kind == CHECKPOINT_KIND]


@pytest.mark.parametrize("kind", BACKENDS)
def test_checkpoint_after_every_n_records(kind: str, tmp_path: Path, now: float) -> None:
    key = signing_key()
    ring = KeyRing([key])

    async def body(store: Store) -> None:
        writer = AuditCheckpoints(every=3, seconds=3600)
        await add(store, 2, now=now)
        assert await writer.tick(store, ring, issuer=ISS, now=now) is None
        await add(store, 1, now=now)
        record = await writer.tick(store, ring, issuer=ISS, now=now + 1)
        assert record is not None and record.kind == CHECKPOINT_KIND and record.seq == 4
        assert (record.detail["seq"], record.ts) == (3, now + 1)
        assert await writer.tick(store, ring, issuer=ISS, now=now + 2) is None  # its own record is not "new"
        await add(store, 3, now=now)
        assert (await writer.tick(store, ring, issuer=ISS, now=now + 3)) is not None
        report = verify_export(await rows(store), keys={key.kid: key.public}, issuer=ISS)
        assert (report.records, report.checkpoints, report.signed_through, report.unsigned) == (8, 2, 7, 0)

    run(kind, tmp_path, body)


@pytest.mark.parametrize("kind", BACKENDS)
def test_checkpoint_after_t_seconds_with_a_new_record_only(kind: str, tmp_path: Path, now: float) -> None:
    ring = KeyRing([signing_key()])

    async def body(store: Store) -> None:
        writer = AuditCheckpoints(every=1000, seconds=60)
        assert await writer.tick(store, ring, issuer=ISS, now=now) is None  # empty log
        await add(store, 1, now=now)
        assert await writer.tick(store, ring, issuer=ISS, now=now + 59) is None
        first = await writer.tick(store, ring, issuer=ISS, now=now + 60)
        assert first is not None and first.detail["seq"] == 1
        # an idle log is never re-signed, however long it stays idle
        assert await writer.tick(store, ring, issuer=ISS, now=now + 10_000) is None
        await add(store, 1, now=now)
        second = await writer.tick(store, ring, issuer=ISS, now=now + 10_001)  # 60 s since the last checkpoint
        assert second is not None and second.detail["seq"] == 3
        assert [c.seq for c in await checkpoints(store)] == [2, 4]

    run(kind, tmp_path, body)


@pytest.mark.parametrize("kind", BACKENDS)
def test_key_rotation_re_signs_at_once_so_the_current_jwks_verifies_everything(kind: str, tmp_path: Path, now: float) -> None:
    old, new = signing_key(), signing_key()
    old_retired = dataclasses.replace(old, retired_at=1)

    async def body(store: Store) -> None:
        writer = AuditCheckpoints(every=2, seconds=3600)
        await add(store, 2, now=now)
        assert await writer.tick(store, KeyRing([old]), issuer=ISS, now=now) is not None
        assert await writer.tick(store, KeyRing([old]), issuer=ISS, now=now + 1) is None
        # rotation: no new record, yet the newest checkpoint must be signed by the new key
        resigned = await writer.tick(store, KeyRing([new, old_retired]), issuer=ISS, now=now + 2)
        assert resigned is not None and resigned.detail["seq"] == 3  # it covers the old checkpoint record
        assert await writer.tick(store, KeyRing([new, old_retired]), issuer=ISS, now=now + 3) is None
        # once the old key has left the JWKS, the log still verifies with the current one alone
        report = verify_export(await rows(store), keys={new.kid: new.public}, issuer=ISS)
        assert (report.signed_through, report.checkpoints, report.superseded, report.unsigned) == (3, 1, 1, 0)

    run(kind, tmp_path, body)


@pytest.mark.parametrize("kind", BACKENDS)
def test_two_replicas_write_one_checkpoint(kind: str, tmp_path: Path, now: float) -> None:
    ring = KeyRing([signing_key()])

    async def body(store: Store) -> None:
        a, b = AuditCheckpoints(every=5, seconds=3600), AuditCheckpoints(every=5, seconds=3600)
        await add(store, 5, now=now)
        written = await asyncio.gather(*(w.tick(store, ring, issuer=ISS, now=now) for w in (a, b)))
        assert sum(r is not None for r in written) == 1
        assert [await w.tick(store, ring, issuer=ISS, now=now + 1) for w in (a, b)] == [None, None]
        assert len(await checkpoints(store)) == 1

    run(kind, tmp_path, body)


def test_a_claim_whose_winner_died_expires(tmp_path: Path, now: float) -> None:
    """SQLite only: Redis expires the claim in real time, which a test does not wait for."""
    ring = KeyRing([signing_key()])

    async def body(store: Store) -> None:
        writer = AuditCheckpoints(every=5, seconds=3600)
        await add(store, 5, now=now)
        assert await store.first_use("audit-checkpoint:after:0", until=int(now) + CLAIM_SECONDS, now=now)  # the winner
        assert await writer.tick(store, ring, issuer=ISS, now=now + 1) is None
        record = await writer.tick(store, ring, issuer=ISS, now=now + CLAIM_SECONDS)
        assert record is not None and record.detail["seq"] == 5

    run("sqlite", tmp_path, body)


@pytest.mark.parametrize("size", [1, 2, 7, 64, 65])
def test_restart_finds_the_head_and_signs_the_unsigned_tail(size: int, tmp_path: Path, now: float) -> None:
    ring = KeyRing([signing_key()])

    async def body(store: Store) -> None:
        await add(store, size, now=now)
        writer = AuditCheckpoints(every=1000, seconds=60)  # a fresh process on an existing chain
        assert await writer.tick(store, ring, issuer=ISS, now=now) is None
        record = await writer.tick(store, ring, issuer=ISS, now=now + 60)
        assert record is not None and record.detail["seq"] == size  # named the true head
        # restarted again, on a chain whose head is a checkpoint: nothing is due
        again = AuditCheckpoints(every=1000, seconds=60)
        assert await again.tick(store, ring, issuer=ISS, now=now + 10_000) is None

    run("sqlite", tmp_path, body)


def test_restart_long_after_the_last_record_signs_at_the_first_tick(tmp_path: Path, now: float) -> None:
    """The clock of an unsigned tail found at start-up runs from the head's own time, not from the restart."""
    ring = KeyRing([signing_key()])

    async def body(store: Store) -> None:
        await add(store, 3, now=now)
        writer = AuditCheckpoints(every=1000, seconds=60)
        record = await writer.tick(store, ring, issuer=ISS, now=now + 60)
        assert record is not None and record.detail["seq"] == 3

    run("sqlite", tmp_path, body)
