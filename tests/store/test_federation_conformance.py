"""Linked tasks (issue 19, FED-01): ``Store.link_task`` and ``Store.linked_tasks`` on every backend.

A federation peer's task opens one linked task here per agent while that task is active; later
tokens of the same peer task join it. The link, the task and the audit record are one step, and
concurrent links (several replicas) never open two tasks.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from storekit import BACKENDS, NOW, chain_ok, race, run, run_replicas, task, upgrade_from

from tether.audit.chain import AuditEvent
from tether.model import Task, TaskState
from tether.store.errors import Blocked, Conflict
from tether.store.protocol import Store
from tether.store.records import BlockKind, FederationLink

PEER = "a"
AGENT = "fed:a/spiffe://a.example/agent"
LINKED = AuditEvent(kind="federation.linked", outcome="ok", principal=AGENT, detail={"peer": PEER})


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def linked_task(**fields: object) -> Task:
    return task(agent=AGENT, created_by=f"federation:{PEER}", **fields)


def link(t: Task, foreign_task: str = "tsk_home", *, peer: str = PEER, jti: str | None = None) -> FederationLink:
    return FederationLink(peer, foreign_task, jti or "jti_" + secrets.token_hex(6), t.id, int(NOW))


async def audit_kinds(store: Store) -> list[tuple[str, str | None, object]]:
    return [(r.kind, r.task, r.detail.get("joined")) for r in await store.audit_records(after=0, limit=100)]


def test_fed01_link_opens_the_task_records_the_link_and_audits(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        t = linked_task()
        first = link(t)
        got = await store.link_task(t, first, now=NOW, audit=LINKED)
        assert got == t
        assert await store.get_task(t.id) == t
        assert await store.linked_tasks(PEER, foreign_task="tsk_home") == [t.id]
        assert await store.linked_tasks(PEER, foreign_jti=first.foreign_jti) == [t.id]
        assert await store.linked_tasks(PEER, foreign_task="tsk_other") == []
        assert await store.linked_tasks("b", foreign_task="tsk_home") == []
        assert await audit_kinds(store) == [("federation.linked", t.id, False)]
        assert await chain_ok(store) == 1

    run(kind, tmp_path, body)


def test_fed01_a_second_token_of_the_same_task_and_agent_joins(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        t = linked_task()
        await store.link_task(t, link(t), now=NOW, audit=LINKED)
        again = linked_task()
        second = link(again)
        got = await store.link_task(again, second, now=NOW + 5, audit=LINKED)
        assert got == t
        assert await store.get_task(again.id) is None
        assert await store.linked_tasks(PEER, foreign_jti=second.foreign_jti) == [t.id]
        assert await audit_kinds(store) == [("federation.linked", t.id, False), ("federation.linked", t.id, True)]
        # another agent of the same foreign task, the same task id at another peer: tasks of their own
        other_agent = task(agent="fed:a/spiffe://a.example/other")
        assert (await store.link_task(other_agent, link(other_agent), now=NOW, audit=LINKED)).id == other_agent.id
        other_peer = linked_task()
        assert (await store.link_task(other_peer, link(other_peer, peer="b"), now=NOW, audit=LINKED)).id == other_peer.id
        assert await store.linked_tasks(PEER, foreign_task="tsk_home") == sorted([t.id, other_agent.id])
        assert await store.linked_tasks("b") == [other_peer.id]
        assert await chain_ok(store) == 4

    run(kind, tmp_path, body)


def test_fed01_an_ended_or_expired_linked_task_is_never_joined(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        ended = linked_task()
        await store.link_task(ended, link(ended), now=NOW, audit=LINKED)
        await store.end_task(ended.id, TaskState.COMPLETED, now=NOW + 1, audit=LINKED)
        fresh = linked_task(expires_at=int(NOW) + 60)
        assert (await store.link_task(fresh, link(fresh), now=NOW + 2, audit=LINKED)).id == fresh.id
        # past its hard cap (not yet swept): a new one is opened
        later = linked_task(created_at=int(NOW) + 61, expires_at=int(NOW) + 900)
        assert (await store.link_task(later, link(later), now=NOW + 61, audit=LINKED)).id == later.id
        # any state: a follower ends what is still active among them
        assert await store.linked_tasks(PEER, foreign_task="tsk_home") == sorted([ended.id, fresh.id, later.id])

    run(kind, tmp_path, body)


def test_fed01_a_peer_token_links_once(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        t = linked_task()
        first = link(t, jti="jti_once")
        await store.link_task(t, first, now=NOW, audit=LINKED)
        retry = linked_task()
        with pytest.raises(Conflict):
            await store.link_task(retry, link(retry, "tsk_elsewhere", jti="jti_once"), now=NOW, audit=LINKED)
        assert await store.get_task(retry.id) is None
        assert await store.linked_tasks(PEER, foreign_task="tsk_elsewhere") == []
        assert await chain_ok(store) == 1

    run(kind, tmp_path, body)


def test_fed01_a_blocked_agent_or_subject_gets_no_linked_task(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        await store.block(BlockKind.AGENT, AGENT, now=NOW, audit=LINKED)
        t = linked_task()
        with pytest.raises(Blocked):
            await store.link_task(t, link(t), now=NOW, audit=LINKED)
        on_behalf = task(agent="fed:a/spiffe://a.example/b", on_behalf_of="fed:a/user:eve")
        await store.block(BlockKind.SUBJECT, "fed:a/user:eve", now=NOW, audit=LINKED)
        with pytest.raises(Blocked):
            await store.link_task(on_behalf, link(on_behalf), now=NOW, audit=LINKED)
        assert await store.get_task(t.id) is None and await store.get_task(on_behalf.id) is None
        assert await store.linked_tasks(PEER) == []
        assert await chain_ok(store) == 2

    run(kind, tmp_path, body)


def test_fed01_linked_tasks_filters_either_way(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        one, two = linked_task(), task(agent="fed:a/x")
        await store.link_task(one, link(one, "tsk_1", jti="j1"), now=NOW, audit=LINKED)
        await store.link_task(two, link(two, "tsk_2", jti="j2"), now=NOW, audit=LINKED)
        assert await store.linked_tasks(PEER, foreign_task="tsk_1", foreign_jti="j2") == sorted([one.id, two.id])
        assert await store.linked_tasks(PEER, foreign_task="tsk_2", foreign_jti="j2") == [two.id]
        assert await store.linked_tasks(PEER) == sorted([one.id, two.id])
        assert await store.linked_tasks("b", foreign_jti="j1") == []

    run(kind, tmp_path, body)


def test_fed01_concurrent_links_on_replicas_open_one_task(kind: str, tmp_path: Path) -> None:
    async def body(stores: list[Store]) -> None:
        candidates = [linked_task() for _ in range(24)]
        results = await race(
            24, lambda i: stores[i % len(stores)].link_task(candidates[i], link(candidates[i]), now=NOW, audit=LINKED)
        )
        ids = {r.id for r in results if isinstance(r, Task)}
        assert len(ids) == 1, results
        assert await stores[0].linked_tasks(PEER, foreign_task="tsk_home") == sorted(ids)
        opened = [r for r in await stores[0].audit_records(after=0, limit=100) if r.detail.get("joined") is False]
        assert len(opened) == 1
        assert await chain_ok(stores[0]) == 24

    run_replicas(kind, tmp_path, 3, body)


def test_a_database_on_the_previous_schema_migrates_and_links(kind: str, tmp_path: Path) -> None:
    """The linked-task migration only adds a table: a deployment one version behind refuses to serve
    until migrated, then migrates in place and keeps its tasks."""
    old_task = (
        "INSERT INTO tasks (id, agent, audiences, scopes, created_at, expires_at, max_depth, max_tokens, state)"
        " VALUES ('tsk_old', 'spiffe://t/agent', '[\"https://a\"]', '[]', 1800000000, 1800000900, 3, 10, 'active')"
    )

    async def use(store: Store) -> None:
        assert (await store.get_task("tsk_old")) is not None
        t = linked_task()
        assert (await store.link_task(t, link(t), now=NOW, audit=LINKED)).id == t.id
        assert await store.linked_tasks(PEER) == [t.id]

    indexes = upgrade_from(kind, tmp_path, missing={"sqlite": 9, "postgres": 10}, seed_sql=old_task, use=use)
    assert "federation_links_foreign_task" in indexes
