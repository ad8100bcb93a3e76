"""The two backends answer alike where they used to differ (issue 12, "the two stores agree").

Each choice is written in ``store/protocol.py`` and pinned here on SQLite and on
PostgreSQL + Redis: a refused issuance leaves its DPoP proof spent and its identity mark
unspent; a block on a token's subject or client refuses it; lists come in code-point
order; counter windows are fixed; a database error is ``StoreUnavailable``.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import pytest
from storekit import AGENT, BACKENDS, EVENT, NOW, run, task, task_and_token, token

from tether.model import Task, TaskState
from tether.store.errors import AlreadySpent, Blocked, CapReached, Conflict, ParentRevoked, StoreUnavailable, TaskNotActive
from tether.store.protocol import Store
from tether.store.records import BlockKind, IssuedToken

EVE = "user:eve"


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _live_task(now: float, **fields: object) -> Task:
    """A task alive at the real time ``now`` (Redis expires replay marks by its own clock)."""
    return task(created_at=int(now), expires_at=int(now) + 900, **fields)


async def _refusing(store: Store, refusal: str, t: Task, now: float) -> tuple[IssuedToken, list[str], list[str]]:
    """Make the next issuance on ``t`` refuse with ``refusal``: its token, spent identity marks, principals."""
    until = int(now) + 600
    if refusal == "already_spent":
        assert await store.spend("used-" + t.id, until=until, now=now)
        return token(t.id), ["used-" + t.id], []
    if refusal == "parent_revoked":
        parent = token(t.id)
        await store.issue_token(parent, now=now, spends=[], audit=EVENT)
        await store.revoke_tree(parent.jti, now=now, audit=EVENT)
        return token(t.id, parent=parent.jti), [], []
    if refusal == "blocked":
        await store.block(BlockKind.SUBJECT, EVE, now=now, audit=EVENT)
        return token(t.id), [], [EVE]
    if refusal == "task_not_active":
        await store.end_task(t.id, TaskState.COMPLETED, now=now, audit=EVENT)
        return token(t.id), [], []
    await store.issue_token(token(t.id), now=now, spends=[], audit=EVENT)  # cap_reached: max_tokens is 1
    return token(t.id), [], []


REFUSALS = {
    "already_spent": AlreadySpent,
    "parent_revoked": ParentRevoked,
    "blocked": Blocked,
    "task_not_active": TaskNotActive,
    "cap_reached": CapReached,
}


@pytest.mark.parametrize("refusal", list(REFUSALS))
def test_DPOP_12_refused_issuance_leaves_the_proof_spent_and_the_identity_mark_unspent(
    kind: str, refusal: str, tmp_path: Path
) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        until = int(now) + 600
        t = _live_task(now, max_tokens=1 if refusal == "cap_reached" else 10)
        await store.create_task(t, EVENT)
        refused, used, principals = await _refusing(store, refusal, t, now)
        before = await store.get_task(t.id)
        proof, mark = "proof-" + secrets.token_hex(8), "mark-" + secrets.token_hex(8)
        spends = [(mark, until), *((u, until) for u in used)]  # the fresh mark first: its spend is undone
        with pytest.raises(REFUSALS[refusal]):
            await store.issue_token(refused, now=now, spends=spends, audit=EVENT, replay=(proof, until), principals=principals)
        assert not await store.first_use(proof, until=until, now=now), "the refused issuance's proof can be used again"
        assert await store.spend(mark, until=until, now=now), "the refused issuance kept its identity mark spent"
        assert await store.get_token(refused.jti) is None
        assert await store.get_task(t.id) == before, "the refused issuance changed the task"

    run(kind, tmp_path, body)


def test_DPOP_12_issued_token_spends_its_proof_and_its_identity_mark(kind: str, tmp_path: Path) -> None:
    """The positive control of the test above, on the same fixture without a refusal."""

    async def body(store: Store) -> None:
        now = time.time()
        until = int(now) + 600
        t = _live_task(now, max_tokens=2)
        await store.create_task(t, EVENT)
        issued = token(t.id)
        await store.issue_token(issued, now=now, spends=[("mark", until)], audit=EVENT, replay=("proof", until),
                                principals=[AGENT])  # fmt: skip
        assert not await store.first_use("proof", until=until, now=now)
        assert not await store.spend("mark", until=until, now=now)
        assert await store.get_token(issued.jti) == issued
        stored = await store.get_task(t.id)
        assert stored is not None and stored.tokens_issued == 1

    run(kind, tmp_path, body)


@pytest.mark.parametrize("field", ["sub", "client_id"])
def test_a_blocked_token_subject_or_client_is_refused_though_not_among_principals(
    kind: str, field: str, tmp_path: Path
) -> None:
    async def body(store: Store) -> None:
        t = task()
        await store.create_task(t, EVENT)
        blocked = "spiffe://t/blocked"
        await store.block(BlockKind.AGENT, blocked, now=NOW, audit=EVENT)
        refused = token(t.id, sub=blocked, client_id=AGENT) if field == "sub" else token(t.id, client_id=blocked)
        with pytest.raises(Blocked):
            await store.issue_token(refused, now=NOW, spends=[], audit=EVENT, principals=[AGENT])
        assert await store.get_token(refused.jti) is None
        allowed = token(t.id)  # control: same task and principals, neither field blocked
        await store.issue_token(allowed, now=NOW, spends=[], audit=EVENT, principals=[AGENT])
        assert await store.get_token(allowed.jti) == allowed

    run(kind, tmp_path, body)


def test_refusals_are_checked_in_the_protocol_order(kind: str, tmp_path: Path) -> None:
    """One issuance that fails every check reports spends, then parent, then blocks, then the task."""

    async def body(store: Store) -> None:
        t, parent = await task_and_token(store)
        await store.revoke_tree(parent.jti, now=NOW, audit=EVENT)
        assert await store.spend("used", until=int(NOW) + 600, now=NOW)
        await store.block(BlockKind.SUBJECT, EVE, now=NOW, audit=EVENT)
        await store.end_task(t.id, TaskState.CANCELLED, now=NOW, audit=EVENT)
        attempts: list[tuple[IssuedToken, list[tuple[str, int]], list[str], type[Conflict]]] = [
            (token(t.id, parent=parent.jti), [("used", int(NOW) + 600)], [EVE], AlreadySpent),
            (token(t.id, parent=parent.jti), [], [EVE], ParentRevoked),
            (token(t.id), [], [EVE], Blocked),
            (token(t.id), [], [], TaskNotActive),
        ]
        for issued, spends, principals, error in attempts:
            with pytest.raises(error):
                await store.issue_token(issued, now=NOW, spends=spends, audit=EVENT, principals=principals)

    run(kind, tmp_path, body)


def test_lookup_and_create_task_see_a_block_on_any_principal_or_the_tasks_agent_or_subject(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        t = task(agent="spiffe://t/a1", on_behalf_of="user:bob")
        await store.create_task(t, EVENT)
        assert not (await store.lookup(task_id=t.id, jti=None, principals=["user:carol"])).blocked
        await store.block(BlockKind.SUBJECT, "user:bob", now=NOW, audit=EVENT)
        assert (await store.lookup(task_id=t.id, jti=None, principals=[])).blocked, "the task's subject is blocked"
        assert (await store.lookup(task_id=None, jti=None, principals=["", "user:bob"])).blocked, "any principal"
        with pytest.raises(Blocked):
            await store.create_task(task(on_behalf_of="user:bob"), EVENT)
        with pytest.raises(Blocked):  # a block names a principal whatever its kind
            await store.create_task(task(agent="user:bob"), EVENT)
        other = task(agent="spiffe://t/a2")
        await store.create_task(other, EVENT)
        await store.block(BlockKind.AGENT, "spiffe://t/a2", now=NOW, audit=EVENT)
        assert (await store.lookup(task_id=other.id, jti=None, principals=["user:carol"])).blocked, "the task's agent"
        assert not (await store.lookup(task_id="tsk_missing", jti=None, principals=["user:carol"])).blocked

    run(kind, tmp_path, body)


async def _linguistic_collation(store: Store) -> None:
    """On PostgreSQL, sort ids and names as a database created with a non-C locale (en_US.UTF-8, a common default) would."""
    from tether.store.postgres.store import PostgresRedisStore

    if isinstance(store, PostgresRedisStore):
        async with store.pool.connection() as conn:
            for table, column in (("tasks", "id"), ("vault", "name")):
                await conn.execute(f'ALTER TABLE {table} ALTER COLUMN {column} TYPE TEXT COLLATE "und-x-icu"')


def test_lists_come_in_code_point_order_whatever_the_database_collation(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        await _linguistic_collation(store)
        ids = ["tsk_a", "tsk_B", "tsk_-c"]  # a linguistic collation sorts these -c, a, B
        for task_id in ids:
            await store.create_task(task(id=task_id, agent="spiffe://t/list"), EVENT)
        listed = await store.list_tasks(state=TaskState.ACTIVE, agent="spiffe://t/list", now=NOW, limit=10)
        assert [t.id for t in listed] == sorted(ids)
        assert await store.block(BlockKind.AGENT, "spiffe://t/list", now=NOW, audit=EVENT) == sorted(ids)
        expiring = ["tsk_d", "tsk_E", "tsk_-f"]
        for task_id in expiring:
            await store.create_task(task(id=task_id, expires_at=int(NOW) + 10), EVENT)
        assert await store.expire_tasks(now=NOW + 11) == sorted(expiring)
        for name in ("a", "B", "-c"):
            await store.vault_put(name, b"sealed", version=1, now=NOW, audit=EVENT)
        assert [e.name for e in await store.vault_list()] == ["-c", "B", "a"]

    run(kind, tmp_path, body)


def test_revoke_tree_returns_and_publishes_in_jti_order(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        t, root = await task_and_token(store)
        for _ in range(6):
            await store.issue_token(token(t.id, parent=root.jti), now=NOW, spends=[], audit=EVENT)
        revoked = await store.revoke_tree(root.jti, now=NOW, audit=EVENT)
        assert len(revoked) == 7 and revoked == sorted(revoked)
        assert [e.value for e in await store.revocations_after(0, now=NOW, limit=10)] == revoked

    run(kind, tmp_path, body)


def test_counter_window_is_fixed_by_the_call_that_starts_it(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        end = int(now) + 2
        assert await store.count("w", until=end, now=now) == 1
        assert await store.count("w", until=end + 60, now=now) == 2
        await asyncio.sleep(max(0.0, end + 0.1 - time.time()))  # Redis ends a window by its own clock
        later = time.time()
        assert await store.count("w", until=int(later) + 60, now=later) == 1, "a later `until` stretched the window"
        assert await store.count("w", until=int(later) + 90, now=later) == 2

    run(kind, tmp_path, body)


def test_a_database_error_is_store_unavailable(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        t = task(purpose="first")
        await store.create_task(t, EVENT)
        with pytest.raises(StoreUnavailable):
            await store.create_task(task(id=t.id, purpose="second"), EVENT)  # a duplicate key
        assert await store.get_task(t.id) == t
        chained = await store.audit_records(after=0, limit=10)
        assert len(chained) == 1, "the failed write left an audit record"

    run(kind, tmp_path, body)
