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
from storekit import EVENT, NOW, chain_ok, run, run_replicas, task, token

from tether.store.errors import AlreadySpent, Blocked, ParentRevoked, StoreUnavailable
from tether.store.protocol import Store
from tether.store.records import BlockKind

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


async def _blocked_by(conn: psycopg.AsyncConnection[Any], pids: set[int]) -> set[int]:
    """The backends waiting for a lock one of ``pids`` holds (or is queued for first)."""
    cur = await conn.execute("SELECT pid FROM pg_stat_activity WHERE pg_blocking_pids(pid) && %s::int[]", (sorted(pids),))
    return {int(r[0]) for r in await cur.fetchall()}


def test_a_batch_holding_two_parents_of_one_lineage_never_deadlocks_with_its_revocation(tmp_path: Path) -> None:
    """A batch issues from a token and from its child (two hops of one agent, ordinary traffic) while
    an operator revokes the tree. The revocation locks the root, then the tree below it; the batch
    locked its parents in index order, the child first: each waited for the other, and PostgreSQL
    ended one as a deadlock victim (the revocation failed, or every issuance of the batch was a 503).
    Both must complete, and nothing below the revoked root may stay valid."""

    async def body(a: Store, b: Store) -> None:
        t = task(max_tokens=100)
        await a.create_task(t, EVENT)
        root = dataclasses.replace(token(t.id), jti="b-root")
        child = dataclasses.replace(token(t.id, parent=root.jti), jti="a-child")
        for issued in (root, child):
            await a.issue_token(issued, now=NOW, spends=[], audit=EVENT)
        # the child comes first both in the index (its jti sorts first) and in the table (the root's
        # row is rewritten after it), whichever plan reads the batch's parents
        await _sql(a, "UPDATE tokens SET exp = exp WHERE jti = 'b-root'")

        # another session holds the root for a moment, so that the revocation is first in line for it
        async with (
            await psycopg.AsyncConnection.connect(_dsn(a), autocommit=True) as holder,
            await psycopg.AsyncConnection.connect(_dsn(a), autocommit=True) as watch,
        ):
            await holder.execute("BEGIN")
            await holder.execute("SELECT 1 FROM tokens WHERE jti = %s FOR UPDATE", (root.jti,))
            holder_pid = holder.info.backend_pid
            revoke = asyncio.create_task(b.revoke_tree(root.jti, now=NOW, audit=EVENT))
            while not (revoker := await _blocked_by(watch, {holder_pid})):
                assert not revoke.done(), revoke
                await asyncio.sleep(0.01)
            hops = asyncio.ensure_future(
                asyncio.gather(
                    a.issue_token(token(t.id, parent=child.jti), now=NOW, spends=[], audit=EVENT),
                    a.issue_token(token(t.id, parent=root.jti), now=NOW, spends=[], audit=EVENT),
                    return_exceptions=True,
                )
            )
            while not hops.done() and not (await _blocked_by(watch, {holder_pid, *revoker})) - revoker:
                await asyncio.sleep(0.01)
            await holder.execute("COMMIT")
            revoked = await asyncio.gather(revoke, return_exceptions=True)
            outcomes = await hops

        assert not isinstance(revoked[0], BaseException), revoked
        assert not [o for o in outcomes if isinstance(o, StoreUnavailable)], outcomes
        assert all(o is None or isinstance(o, ParentRevoked) for o in outcomes), outcomes
        assert isinstance(outcomes[1], ParentRevoked), "the root was revoked before its hop could be issued"
        live = [x.jti for x in await a.task_tokens(t.id, limit=100) if x.revoked_at is None]
        assert live == [], "every token below the revoked root is revoked"
        assert await chain_ok(a) == 1 + 2 + 1 + sum(o is None for o in outcomes)

    _run(tmp_path, body)


@pytest.mark.parametrize("table", ["spent", "tokens"])
def test_a_batch_whose_backend_is_killed_fails_closed_and_the_next_batch_is_served(tmp_path: Path, table: str) -> None:
    """``pg_terminate_backend`` while a batch is in flight (in its first round trip, inserting the
    marks, or in its second, inserting the tokens): every caller of the batch gets ``StoreUnavailable``
    (none is left waiting), nothing of the batch is committed, and once the store reconnects the next
    batch is issued."""

    async def body(store: Store) -> None:
        t = task(max_tokens=100)
        await store.create_task(t, EVENT)
        before = await chain_ok(store)
        # the trigger says which backend runs it (setval is not transactional) and sleeps there
        await _sql(
            store,
            "CREATE SEQUENCE sleeper",
            "CREATE FUNCTION sleep_here() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN PERFORM setval('sleeper', pg_backend_pid()); PERFORM pg_sleep(30); RETURN NEW; END $$",
            f"CREATE TRIGGER sleep_here BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION sleep_here()",
        )
        issued = [token(t.id) for _ in range(5)]
        batch = asyncio.ensure_future(
            asyncio.gather(
                *(store.issue_token(x, now=NOW, spends=[(f"k-{i}", UNTIL)], audit=EVENT) for i, x in enumerate(issued)),
                return_exceptions=True,
            )
        )
        async with await psycopg.AsyncConnection.connect(_dsn(store), autocommit=True) as watch:
            while True:
                row = await (await watch.execute("SELECT last_value, is_called FROM sleeper")).fetchone()
                if row is not None and row[1]:
                    break
                assert not batch.done(), batch
                await asyncio.sleep(0.01)
            await watch.execute("SELECT pg_terminate_backend(%s)", (int(row[0]),))
            await watch.execute(f"DROP TRIGGER sleep_here ON {table}".encode())
        outcomes = await asyncio.wait_for(batch, timeout=60)
        assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes

        for _ in range(600):  # the circuit opened on the lost connection; a probe closes it again
            try:
                await store.ping()
                break
            except StoreUnavailable:
                await asyncio.sleep(0.05)
        assert await chain_ok(store) == before, "nothing of the killed batch was committed"
        assert [await store.get_token(x.jti) for x in issued] == [None] * 5
        assert not [i for i in range(5) if await store.spent(f"k-{i}", now=NOW)]
        stored = await store.get_task(t.id)
        assert stored is not None and stored.tokens_issued == 0

        again = await asyncio.gather(
            *(store.issue_token(token(t.id), now=NOW, spends=[(f"k-{i}", UNTIL)], audit=EVENT) for i in range(5))
        )
        assert again == [None] * 5, "the next batch is served, and the marks of the killed one are free"
        stored = await store.get_task(t.id)
        assert stored is not None and stored.tokens_issued == 5
        assert await chain_ok(store) == before + 5

    run("postgres", tmp_path, body)


def test_a_statement_failing_mid_batch_fails_the_whole_batch_and_the_next_is_served(tmp_path: Path) -> None:
    """A write the database rejects (here a ``jti`` already recorded) aborts the batch's transaction:
    every caller gets ``StoreUnavailable``, none of the batch's marks, counts, tokens or records
    remain, and the next batch commits."""

    async def body(store: Store) -> None:
        t = task(max_tokens=100)
        await store.create_task(t, EVENT)
        taken = token(t.id)
        await store.issue_token(taken, now=NOW, spends=[], audit=EVENT)
        before = await chain_ok(store)
        batch = [token(t.id), dataclasses.replace(token(t.id), jti=taken.jti), token(t.id)]
        outcomes = await asyncio.gather(
            *(store.issue_token(x, now=NOW, spends=[(f"m-{i}", UNTIL)], audit=EVENT) for i, x in enumerate(batch)),
            return_exceptions=True,
        )
        assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
        assert await chain_ok(store) == before
        assert await store.get_token(batch[0].jti) is None and await store.get_token(batch[2].jti) is None
        assert not [i for i in range(3) if await store.spent(f"m-{i}", now=NOW)]
        stored = await store.get_task(t.id)
        assert stored is not None and stored.tokens_issued == 1
        await asyncio.gather(*(store.issue_token(batch[i], now=NOW, spends=[(f"m-{i}", UNTIL)], audit=EVENT) for i in (0, 2)))
        assert await chain_ok(store) == before + 2

    run("postgres", tmp_path, body)


def test_a_token_issued_while_its_principal_is_blocked_is_refused_or_revoked(tmp_path: Path) -> None:
    """The kill switch and an issuance for the blocked principal, at the same moment on two replicas.
    The principal is the token's client (an actor hopping on another agent's task, or a token with no
    task): no task row orders the two. The block had inserted its row and revoked that client's
    tokens, and was about to commit; the batch read the blocks before that commit, and committed its
    token after it: a token for a blocked principal, never revoked. Whichever commits first, the
    token must be refused (``Blocked``) or revoked."""
    blocked = "spiffe://t/actor-x"

    async def body(a: Store, b: Store) -> None:
        t = task(max_tokens=100)
        await a.create_task(t, EVENT)
        async with (
            await psycopg.AsyncConnection.connect(_dsn(a), autocommit=True) as holder,
            await psycopg.AsyncConnection.connect(_dsn(a), autocommit=True) as watch,
        ):
            # another session holds the audit head: the block waits there, everything but its commit done
            await holder.execute("BEGIN")
            await holder.execute("SELECT 1 FROM audit_head WHERE id = 1 FOR UPDATE")
            holder_pid = holder.info.backend_pid
            kill = asyncio.create_task(b.block(BlockKind.AGENT, blocked, now=NOW, audit=EVENT))
            while not (blocker := await _blocked_by(watch, {holder_pid})):
                assert not kill.done(), kill
                await asyncio.sleep(0.01)
            issued = token(t.id, client_id=blocked)
            issue = asyncio.ensure_future(a.issue_token(issued, now=NOW, spends=[], audit=EVENT, principals=[blocked]))
            while not issue.done() and not (await _blocked_by(watch, {holder_pid, *blocker})) - blocker:
                await asyncio.sleep(0.01)
            await holder.execute("COMMIT")
            await kill
            outcome = (await asyncio.gather(issue, return_exceptions=True))[0]

        stored = await a.get_token(issued.jti)
        if outcome is None:
            assert stored is not None and stored.revoked_at is not None, "issued for a blocked principal, and not revoked"
        else:
            assert isinstance(outcome, Blocked), outcome
            assert stored is None
        assert (await a.lookup(task_id=None, jti=None, principals=[blocked])).blocked

    _run(tmp_path, body)
