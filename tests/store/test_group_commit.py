"""Group commit: issuances that arrive together share one transaction, and each keeps its own fate.

Both backends batch the issuances a process has queued (SQLite: ``Database.run_batched``;
PostgreSQL: ``tether.store.postgres.issue.IssueQueue``). A batch mixing every refusal with
accepted issuances must refuse each alone, in ``Store.issue_token``'s order, leave nothing of a
refused one behind (its identity marks unspent, no count, no token, no audit record), and
commit the others with one intact audit chain.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from storekit import BACKENDS, EVENT, NOW, chain_ok, race, run, task, token

from tether.model import Task, TaskState
from tether.store.errors import AlreadySpent, Blocked, CapReached, ParentRevoked, Replayed, TaskNotActive
from tether.store.protocol import Store
from tether.store.records import BlockKind, IssuedToken

UNTIL = int(NOW) + 600


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _count_transactions(store: Store) -> list[int]:
    """PostgreSQL: count the connections the store's issuance queue takes (one per batch)."""
    from tether.store.postgres.issue import IssueQueue
    from tether.store.postgres.store import PostgresRedisStore

    assert isinstance(store, PostgresRedisStore)
    taken = [0]
    connect = store._conn

    @contextlib.asynccontextmanager
    async def counted() -> AsyncIterator[Any]:
        taken[0] += 1
        async with connect() as conn:
            yield conn

    store._issues = IssueQueue(counted)
    return taken


async def _refusals_ahead(store: Store) -> tuple[Task, Task, IssuedToken]:
    """A task with a cap of 3 and one token taken (then revoked), a completed task, a blocked subject."""
    capped, ended = task(max_tokens=3), task()
    await store.create_task(capped, EVENT)
    await store.create_task(ended, EVENT)
    revoked = token(capped.id)
    await store.issue_token(revoked, now=NOW, spends=[], audit=EVENT)  # one of capped's 3
    await store.revoke_tree(revoked.jti, now=NOW, audit=EVENT)
    await store.end_task(ended.id, TaskState.COMPLETED, now=NOW, audit=EVENT)
    await store.block(BlockKind.SUBJECT, "user:eve", now=NOW, audit=EVENT)
    return capped, ended, revoked


def test_a_batch_refuses_each_issuance_alone_and_commits_the_rest(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        capped, ended, revoked = await _refusals_ahead(store)
        assert await store.spend("used", until=UNTIL, now=NOW)
        before = await chain_ok(store)
        taken = _count_transactions(store) if kind == "postgres" else [1]

        issued = [token(capped.id) for _ in range(8)]
        calls: list[tuple[str, Any]] = [
            ("ok", store.issue_token(issued[0], now=NOW, spends=[("m-ok", UNTIL)], audit=EVENT)),
            ("spent", store.issue_token(issued[1], now=NOW, spends=[("m-fresh", UNTIL), ("used", UNTIL)], audit=EVENT)),
            ("twice", store.issue_token(issued[2], now=NOW, spends=[("m-twice", UNTIL), ("m-twice", UNTIL)], audit=EVENT)),
            (
                "parent",
                store.issue_token(token(capped.id, parent=revoked.jti), now=NOW, spends=[("m-parent", UNTIL)], audit=EVENT),
            ),
            (
                "blocked",
                store.issue_token(issued[3], now=NOW, spends=[("m-blocked", UNTIL)], audit=EVENT, principals=["user:eve"]),
            ),
            ("ended", store.issue_token(token(ended.id), now=NOW, spends=[("m-ended", UNTIL)], audit=EVENT)),
            ("unknown", store.issue_token(token(task().id), now=NOW, spends=[], audit=EVENT)),
            ("ok", store.issue_token(issued[4], now=NOW, spends=[], audit=EVENT)),
            ("cap", store.issue_token(issued[5], now=NOW, spends=[("m-cap", UNTIL)], audit=EVENT)),
        ]
        results = await asyncio.gather(*(call for _, call in calls), return_exceptions=True)
        outcome = dict(zip(range(len(calls)), results, strict=True))
        assert outcome[0] is None and outcome[7] is None
        assert isinstance(outcome[1], AlreadySpent) and str(outcome[1]) == "used"
        assert isinstance(outcome[2], AlreadySpent) and str(outcome[2]) == "m-twice"
        assert isinstance(outcome[3], ParentRevoked)
        assert isinstance(outcome[4], Blocked)
        assert isinstance(outcome[5], TaskNotActive) and str(outcome[5]) == "completed"
        assert isinstance(outcome[6], TaskNotActive) and str(outcome[6]) == "unknown"
        assert isinstance(outcome[8], CapReached), "the refused issuances took no slot: the third accepted one hits the cap"
        assert taken == [1], "the nine issuances went into one transaction"

        stored = await store.get_task(capped.id)
        assert stored is not None and stored.tokens_issued == 3
        assert [await store.get_token(t.jti) is not None for t in issued[:6]] == [True, False, False, False, True, False]
        assert await chain_ok(store) == before + 2
        # the marks of the refused issuances are unspent again; the accepted one's is spent
        for mark in ("m-fresh", "m-twice", "m-parent", "m-blocked", "m-ended", "m-cap"):
            assert not await store.spent(mark, now=NOW), mark
        assert await store.spent("m-ok", now=NOW)

    run(kind, tmp_path, body)


def test_a_batch_of_hops_refuses_each_alone_and_keeps_every_checked_proof_spent(kind: str, tmp_path: Path) -> None:
    """Hop issuances (a DPoP proof's replay mark, no identity marks) refuse before their first
    write, so SQLite runs them without savepoints: a refused one still leaves nothing behind but
    its spent proof, and a replayed proof is refused before anything else (SECURITY DPOP-05)."""

    async def body(store: Store) -> None:
        capped, ended, revoked = await _refusals_ahead(store)
        parent = token(capped.id)
        await store.issue_token(parent, now=NOW, spends=[], audit=EVENT)  # two of capped's 3
        assert await store.first_use("proof-used", until=UNTIL, now=NOW)
        before = await chain_ok(store)

        hops = [token(capped.id, parent=parent.jti) for _ in range(7)]
        hops[2] = token(capped.id, parent=revoked.jti)
        hops[4] = token(ended.id, parent=parent.jti)
        hops[5] = token(task().id, parent=parent.jti)
        principals: list[list[str]] = [[], [], [], ["user:eve"], [], [], []]
        proofs = ["proof-0", "proof-used", "proof-2", "proof-3", "proof-4", "proof-5", "proof-6"]
        results = await asyncio.gather(
            *(
                store.issue_token(hop, now=NOW, spends=[], audit=EVENT, replay=(proof, UNTIL), principals=who)
                for hop, proof, who in zip(hops, proofs, principals, strict=True)
            ),
            return_exceptions=True,
        )
        assert results[0] is None, "the first hop takes the third slot"
        assert isinstance(results[1], Replayed) and str(results[1]) == "proof-used"
        assert isinstance(results[2], ParentRevoked)
        assert isinstance(results[3], Blocked)
        assert isinstance(results[4], TaskNotActive) and str(results[4]) == "completed"
        assert isinstance(results[5], TaskNotActive) and str(results[5]) == "unknown"
        assert isinstance(results[6], CapReached), "the refused hops took no slot; the cap of 3 is reached"
        stored = await store.get_task(capped.id)
        assert stored is not None and stored.tokens_issued == 3
        assert [await store.get_token(h.jti) is not None for h in hops] == [True] + [False] * 6
        assert await chain_ok(store) == before + 1, "one audit record: the accepted hop's"
        for proof in proofs:  # every checked proof stays spent, refused or not (RFC 9449 §11.1)
            assert not await store.first_use(proof, until=UNTIL, now=NOW), proof

    run(kind, tmp_path, body)


def test_issuances_spending_one_mark_never_share_a_batch(kind: str, tmp_path: Path) -> None:
    """The first of them wins, the others are refused in later batches, and nothing else is lost."""

    async def body(store: Store) -> None:
        t = task(max_tokens=100)
        await store.create_task(t, EVENT)
        results = await race(
            30,
            lambda i: store.issue_token(token(t.id), now=NOW, spends=[("same" if i % 3 == 0 else f"s{i}", UNTIL)], audit=EVENT),
        )
        assert results[0] is None
        assert all(isinstance(r, AlreadySpent) for i, r in enumerate(results) if i % 3 == 0 and i > 0)
        assert all(r is None for i, r in enumerate(results) if i % 3 != 0)
        stored = await store.get_task(t.id)
        assert stored is not None and stored.tokens_issued == 21
        assert await chain_ok(store) == 1 + 21

    run(kind, tmp_path, body)


@pytest.mark.postgres
@pytest.mark.redis
def test_postgres_issuances_queued_while_a_batch_commits_go_into_the_next(tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        t = task(max_tokens=1000)
        await store.create_task(t, EVENT)
        taken = _count_transactions(store)
        first = await race(40, lambda i: store.issue_token(token(t.id), now=NOW, spends=[], audit=EVENT))
        assert first == [None] * 40 and taken == [1]

        async def wave(n: int) -> list[Any]:
            await asyncio.sleep(0.001 * n)  # arriving while earlier batches are being written
            return await race(10, lambda i: store.issue_token(token(t.id), now=NOW, spends=[], audit=EVENT))

        waves = await asyncio.gather(*(wave(n) for n in range(10)))
        assert all(r is None for w in waves for r in w)
        assert 2 <= taken[0] <= 11, "later arrivals were batched, never one transaction each"
        stored = await store.get_task(t.id)
        assert stored is not None and stored.tokens_issued == 140
        assert await chain_ok(store) == 1 + 140

    run("postgres", tmp_path, body)


@pytest.mark.postgres
@pytest.mark.redis
def test_postgres_batches_issue_for_at_most_max_batch_tasks_tasks_each(tmp_path: Path) -> None:
    """Each task in a batch takes a shared advisory lock, a slot of PostgreSQL's lock table:
    issuances for more tasks than ``MAX_BATCH_TASKS`` arriving together take more transactions."""
    from tether.store.postgres.issue import MAX_BATCH_TASKS

    async def body(store: Store) -> None:
        tasks = [task() for _ in range(MAX_BATCH_TASKS + 6)]
        for t in tasks:
            await store.create_task(t, EVENT)
        taken = _count_transactions(store)
        calls = [store.issue_token(token(t.id), now=NOW, spends=[], audit=EVENT) for t in tasks]
        calls += [store.issue_token(token(tasks[0].id), now=NOW, spends=[], audit=EVENT) for _ in range(3)]
        assert await asyncio.gather(*calls) == [None] * (len(tasks) + 3)
        assert taken == [2], "64 tasks in the first transaction (the repeats of the first task with them), 6 in the next"
        for t in tasks:
            stored = await store.get_task(t.id)
            assert stored is not None and stored.tokens_issued == (4 if t is tasks[0] else 1)
        assert await chain_ok(store) == len(tasks) + len(tasks) + 3

    run("postgres", tmp_path, body)
