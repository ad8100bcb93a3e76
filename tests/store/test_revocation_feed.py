"""The revocation feed never skips an entry: its order is commit order (issue 12, finding 3).

A resource server follows the feed with a cursor, the last ``seq`` it saw. If an entry
with a later ``seq`` could commit before one with an earlier ``seq``, a follower reading
in between would move its cursor past the earlier entry for good, and the token that
entry revokes would stay valid at that server until it expired.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from storekit import BACKENDS, EVENT, NOW, chain_ok, race, run_replicas, task, token

from services import REDIS_URL, drop_schema, new_schema, require_postgres_and_redis, schema_dsn
from tether.model import TaskState
from tether.store.errors import Blocked, ParentRevoked, TaskNotActive
from tether.store.protocol import Store
from tether.store.records import BlockKind, IssuedToken, RevocationKind

ROUNDS = 6
TASKS = 16  # per round, shared by AGENTS agents; BLOCKED of those agents are blocked mid-round
AGENTS = 4
BLOCKED = 2

Entry = tuple[RevocationKind, str]


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _follow(store: Store, seen: dict[int, Entry], writers_done: asyncio.Event) -> None:
    """Poll the feed exactly as a resource server does: after the last ``seq`` seen, until drained."""
    cursor = 0
    while True:
        finished = writers_done.is_set()  # read before the query: a drained read after it saw everything
        entries = await store.revocations_after(cursor, now=NOW, limit=1000)
        for entry in entries:
            seen[entry.seq] = (entry.kind, entry.value)
            cursor = entry.seq
        if finished and not entries:
            return
        await asyncio.sleep(0)


async def _round(stores: list[Store], number: int, rng: random.Random) -> set[Entry]:
    """Tasks with token trees, then end_task, revoke_tree, block and new exchanges racing on both replicas.

    Returns the entries the calls reported publishing (revoked jtis, ended tasks).
    """
    agents = [f"spiffe://t/r{number}/agent-{i}" for i in range(AGENTS)]
    tasks = [task(agent=agents[i % AGENTS]) for i in range(TASKS)]
    jtis: list[str] = []
    late: list[IssuedToken] = []  # children exchanged while their task and lineage are being revoked
    for t in tasks:
        await stores[0].create_task(t, EVENT)
        root = token(t.id, sub=t.agent)
        children = [token(t.id, parent=root.jti, sub=t.agent) for _ in range(2)]
        grandchild = token(t.id, parent=children[0].jti, sub=t.agent)
        for issued in (root, *children, grandchild):
            await stores[1].issue_token(issued, now=NOW, spends=[], audit=EVENT)
            jtis.append(issued.jti)
        late += [token(t.id, parent=parent.jti, sub=t.agent) for parent in (root, children[1])]
    calls = [("end", t.id) for t in tasks] + [("revoke", j) for j in jtis] + [("block", a) for a in agents[:BLOCKED]]
    calls += [("issue", str(i)) for i in range(len(late))]
    rng.shuffle(calls)

    async def call(i: int) -> object:
        what, value = calls[i]
        store = stores[rng.randrange(len(stores))]
        if what == "end":
            return await store.end_task(value, TaskState.COMPLETED, now=NOW + 1, audit=EVENT)
        if what == "revoke":
            return await store.revoke_tree(value, now=NOW + 1, audit=EVENT)
        if what == "issue":
            await store.issue_token(late[int(value)], now=NOW + 1, spends=[], audit=EVENT)
            return None
        return await store.block(BlockKind.AGENT, value, now=NOW + 1, audit=EVENT)

    results = await race(len(calls), call)
    published: set[Entry] = set()
    for (what, value), result in zip(calls, results, strict=True):
        if what == "end" and isinstance(result, TaskNotActive):
            continue  # its agent's block ended it first
        if what == "issue" and isinstance(result, TaskNotActive | ParentRevoked | Blocked):
            continue  # refused: its task ended, its parent was revoked or its agent blocked first
        assert not isinstance(result, BaseException), f"{what} {value} failed: {result!r}"
        if what == "issue":
            continue
        if what == "end":
            published.add((RevocationKind.TASK, value))
        elif what == "revoke":
            assert isinstance(result, list)
            published.update((RevocationKind.TOKEN, jti) for jti in result)
        else:
            assert isinstance(result, list)
            published.update((RevocationKind.TASK, task_id) for task_id in result)
    for child in late:
        stored = await stores[0].get_token(child.jti)
        assert stored is None or stored.revoked_at is not None, "a token issued mid-revocation is still live"
    return published


def test_feed_follower_misses_nothing_while_replicas_race_to_publish(kind: str, tmp_path: Path) -> None:
    """Two replicas race revoke_tree, end_task and block; a follower on the feed sees every entry."""

    async def body(stores: list[Store]) -> None:
        rng = random.Random(12)
        seen: dict[int, Entry] = {}
        writers_done = asyncio.Event()
        follower = asyncio.create_task(_follow(stores[1], seen, writers_done))
        published: set[Entry] = set()
        try:
            for number in range(ROUNDS):
                published |= await _round(stores, number, rng)
        finally:
            writers_done.set()
            await follower
        feed = await stores[0].revocations_after(0, now=NOW, limit=100_000)
        missed = [e for e in feed if e.seq not in seen]
        assert not missed, f"the follower skipped {len(missed)} of {len(feed)} feed entries for good"
        assert published <= set(seen.values()), "a revocation a call reported never reached the feed"
        assert len(published) >= ROUNDS * TASKS, "the rounds revoked too little to prove anything"
        assert await chain_ok(stores[0]) > 0

    run_replicas(kind, tmp_path, 2, body)


@pytest.mark.postgres
@pytest.mark.redis
def test_upgrade_numbers_new_entries_past_every_seq_drawn_before_it() -> None:
    """Migration 4 seeds the feed's head past purged entries too: a follower's cursor may already be there."""
    import psycopg

    from tether.store.postgres.store import PostgresRedisStore, migrations

    require_postgres_and_redis()
    schema = new_schema()
    with psycopg.connect(schema_dsn(schema), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version, sql in migrations()[:3]:  # a deployment still on schema 3, its feed numbered by a serial
            conn.execute(sql.encode())
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
        for i in range(5):
            conn.execute(
                "INSERT INTO revocations (kind, value, exp, at) VALUES ('jti', %s, %s, %s)", (f"old-{i}", int(NOW) + 300, NOW)
            )
        conn.execute("DELETE FROM revocations WHERE seq > 3")  # the newest entries were purged; a follower is at 5

    async def upgrade() -> list[tuple[int, str]]:
        store = await PostgresRedisStore.open(schema_dsn(schema), REDIS_URL, prefix=schema, migrate=True)
        try:
            t = task()
            await store.create_task(t, EVENT)
            await store.end_task(t.id, TaskState.COMPLETED, now=NOW, audit=EVENT)
            assert [e.value for e in await store.revocations_after(0, now=NOW, limit=10)][:3] == ["old-0", "old-1", "old-2"]
            return [(e.seq, e.value) for e in await store.revocations_after(5, now=NOW, limit=10)]
        finally:
            await store.aclose()

    try:
        after_cursor = asyncio.run(upgrade())
    finally:
        drop_schema(schema)
    assert [seq for seq, _ in after_cursor] == [6], "the first entry after the upgrade is numbered after every old one"
