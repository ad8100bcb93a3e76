"""Review of the PostgreSQL group commit (``tether.store.postgres.issue``) as an outsider attacks it.

Two replicas (two stores on one database, as two processes of ``tether serve --workers`` or two
STS replicas) write batches at the same moment. Whatever the order in which requests reach them,
a mark is spent at most once, a revocation and the issuances under it never deadlock, and one
batch's failure is nobody else's: no innocent issuance gets a 503 because another request in its
batch shared a lock with another replica.

Real PostgreSQL throughout; where an interleaving has to be forced, it is forced with the
database's own means (a trigger that sleeps while a row is inserted, a session holding a row lock),
never by replacing the store's code.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from storekit import EVENT, NOW, chain_ok, run_replicas, task, token

from tether.store.errors import AlreadySpent, ParentRevoked, StoreUnavailable
from tether.store.protocol import Store

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

UNTIL = int(NOW) + 600


def _dsn(store: Store) -> str:
    from tether.store.postgres.store import PostgresRedisStore

    assert isinstance(store, PostgresRedisStore)
    return store.guard.dsn


async def _sql(store: Store, *statements: str) -> None:
    async with await psycopg.AsyncConnection.connect(_dsn(store), autocommit=True) as conn:
        for statement in statements:
            await conn.execute(statement.encode())


def _run(tmp_path: Path, body: Callable[[Store, Store], Awaitable[None]]) -> None:
    run_replicas("postgres", tmp_path, 2, lambda stores: body(stores[0], stores[1]))


def test_two_replicas_spending_the_same_marks_in_opposite_orders_never_deadlock(tmp_path: Path) -> None:
    """Replica A's batch spends ``x`` then ``y``, replica B's ``y`` then ``x`` (two requests replaying
    the same two workload tokens, arriving in a different order at each replica). Each mark is
    spent once; the others are refused as spent; the innocent issuance in each batch is issued.
    Inserting the marks in arrival order, each batch waited for the other's uncommitted mark and
    PostgreSQL ended one batch as a deadlock victim: every issuance in it, innocent or not, a 503."""

    async def body(a: Store, b: Store) -> None:
        t = task(max_tokens=100)
        await a.create_task(t, EVENT)
        # every mark takes a moment to insert: both batches have inserted their first before either
        # reaches its second, whatever the machine's speed
        await _sql(
            a,
            "CREATE FUNCTION slow_spend() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN PERFORM pg_sleep(0.3); RETURN NEW; END $$",
            "CREATE TRIGGER slow_spend BEFORE INSERT ON spent FOR EACH ROW EXECUTE FUNCTION slow_spend()",
        )

        def issue(store: Store, mark: str) -> Awaitable[None]:
            return store.issue_token(token(t.id), now=NOW, spends=[(mark, UNTIL)], audit=EVENT)

        first, second = await asyncio.gather(
            asyncio.gather(issue(a, "x"), issue(a, "y"), issue(a, "z-a"), return_exceptions=True),
            asyncio.gather(issue(b, "y"), issue(b, "x"), issue(b, "z-b"), return_exceptions=True),
        )
        outcomes: list[Any] = [*first, *second]
        assert not [o for o in outcomes if isinstance(o, StoreUnavailable)], outcomes
        assert first[2] is None and second[2] is None, "the innocent issuance of each batch was issued"
        assert sum(o is None for o in (first[0], second[1])) == 1, "x was spent exactly once"
        assert sum(o is None for o in (first[1], second[0])) == 1, "y was spent exactly once"
        assert sum(isinstance(o, AlreadySpent) for o in outcomes) == 2
        stored = await a.get_task(t.id)
        assert stored is not None and stored.tokens_issued == 4
        assert await chain_ok(a) == 1 + 4

    _run(tmp_path, body)
