"""One conformance suite for every Store backend: SQLite and PostgreSQL + Redis (STYLE rule 5).

Each test gets a fresh store (a new SQLite file, or a new PostgreSQL schema and Redis
key prefix). The concurrency tests race real concurrent callers against the atomic
primitives: they pass only if the backend's transactions make them atomic.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from storekit import BACKENDS, EVENT, NOW, chain_ok, race, run, task, task_and_token, token

from tether.audit.chain import AuditEvent
from tether.audit.checkpoint import checkpoint_event
from tether.model import TaskState
from tether.store.errors import (
    AlreadySpent,
    Blocked,
    CapReached,
    Conflict,
    NotFound,
    ParentRevoked,
    PredatesReplayCache,
    Replayed,
    TaskNotActive,
)
from tether.store.protocol import Store
from tether.store.records import BlockKind, RevocationKind


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- tasks ------------------------------------------------------------------------------------
def test_task_round_trip_and_listing(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        t = task(on_behalf_of="user:alice", purpose="p")
        await store.create_task(t, EVENT)
        assert await store.get_task(t.id) == t
        assert await store.get_task("tsk_missing") is None
        assert [x.id for x in await store.list_tasks(state=TaskState.ACTIVE, agent=None, now=NOW, limit=10)] == [t.id]
        assert await store.list_tasks(state=TaskState.EXPIRED, agent=None, now=NOW, limit=10) == []
        assert [x.id for x in await store.list_tasks(state=TaskState.EXPIRED, agent=None, now=NOW + 901, limit=10)] == [t.id]

    run(kind, tmp_path, body)


def test_end_task_once_and_revokes_its_tokens(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        t, issued = await task_and_token(store)
        ended = await store.end_task(t.id, TaskState.COMPLETED, now=NOW + 1, audit=EVENT)
        assert ended.state is TaskState.COMPLETED
        stored = await store.get_token(issued.jti)
        assert stored is not None and stored.revoked_at is not None
        with pytest.raises(TaskNotActive):
            await store.end_task(t.id, TaskState.CANCELLED, now=NOW + 2, audit=EVENT)
        with pytest.raises(NotFound):
            await store.end_task("tsk_missing", TaskState.CANCELLED, now=NOW, audit=EVENT)
        feed = await store.revocations_after(0, now=NOW, limit=10)
        assert [(e.kind, e.value) for e in feed] == [(RevocationKind.TASK, t.id)]
        assert await store.revocations_after(feed[-1].seq, now=NOW, limit=10) == []

    run(kind, tmp_path, body)


def test_expired_tasks_are_marked_and_audited(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        live, old = task(), task(expires_at=int(NOW) + 10)
        await store.create_task(live, EVENT)
        await store.create_task(old, EVENT)
        assert await store.expire_tasks(now=NOW + 11) == [old.id]
        expired = await store.get_task(old.id)
        assert expired is not None and expired.state is TaskState.EXPIRED
        assert (await store.audit_records(after=0, limit=100))[-1].kind == "task.expired"

    run(kind, tmp_path, body)


# -- issuance -----------------------------------------------------------------------------------
def test_issue_token_spends_once_and_rolls_back_on_refusal(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        t = task(max_tokens=2)
        await store.create_task(t, EVENT)
        await store.issue_token(token(t.id), now=NOW, spends=[("svid-1", int(NOW) + 600)], audit=EVENT)
        with pytest.raises(AlreadySpent):
            await store.issue_token(token(t.id), now=NOW, spends=[("svid-1", int(NOW) + 600)], audit=EVENT)
        # the refused issuance wrote nothing: the count is still 1, so one more fits
        await store.issue_token(token(t.id), now=NOW, spends=[("svid-2", int(NOW) + 600)], audit=EVENT)
        with pytest.raises(CapReached):
            await store.issue_token(token(t.id), now=NOW, spends=[("svid-3", int(NOW) + 600)], audit=EVENT)
        # ...and the cap refusal did not burn svid-3
        assert await store.spend("svid-3", until=int(NOW) + 600, now=NOW)
        assert not await store.spend("svid-3", until=int(NOW) + 600, now=NOW)
        stored = await store.get_task(t.id)
        assert stored is not None and stored.tokens_issued == 2
        # an expired mark can be reused (the jti's token has expired long ago)
        assert await store.spend("svid-1", until=int(NOW) + 2000, now=NOW + 1000)

    run(kind, tmp_path, body)


def test_issue_refused_for_ended_task_or_revoked_parent(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        t, parent = await task_and_token(store)
        await store.revoke_tree(parent.jti, now=NOW, audit=EVENT)
        with pytest.raises(ParentRevoked):
            await store.issue_token(token(t.id, parent=parent.jti), now=NOW, spends=[], audit=EVENT)
        await store.end_task(t.id, TaskState.CANCELLED, now=NOW, audit=EVENT)
        with pytest.raises(TaskNotActive, match="cancelled"):
            await store.issue_token(token(t.id), now=NOW, spends=[], audit=EVENT)
        with pytest.raises(TaskNotActive, match="unknown"):
            await store.issue_token(token(task().id), now=NOW, spends=[], audit=EVENT)

    run(kind, tmp_path, body)


def test_revoke_tree_cuts_every_descendant_only(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        t = task()
        await store.create_task(t, EVENT)
        root, sibling = token(t.id), token(t.id)
        for tok in (root, sibling):
            await store.issue_token(tok, now=NOW, spends=[], audit=EVENT)
        child = token(t.id, parent=root.jti)
        await store.issue_token(child, now=NOW, spends=[], audit=EVENT)
        grandchild = token(t.id, parent=child.jti)
        await store.issue_token(grandchild, now=NOW, spends=[], audit=EVENT)
        revoked = await store.revoke_tree(root.jti, now=NOW, audit=EVENT)
        assert set(revoked) == {root.jti, child.jti, grandchild.jti}
        remaining = await store.get_token(sibling.jti)
        assert remaining is not None and remaining.revoked_at is None
        assert await store.revoke_tree(root.jti, now=NOW, audit=EVENT) == []
        feed = {e.value for e in await store.revocations_after(0, now=NOW, limit=10)}
        assert feed == {root.jti, child.jti, grandchild.jti}

    run(kind, tmp_path, body)


def test_feed_entries_expire_with_what_they_cover(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        t = task()
        await store.create_task(t, EVENT)
        short = token(t.id, exp=int(NOW) + 10)
        await store.issue_token(short, now=NOW, spends=[], audit=EVENT)
        await store.revoke_tree(short.jti, now=NOW, audit=EVENT)
        assert [e.value for e in await store.revocations_after(0, now=NOW, limit=10)] == [short.jti]
        assert await store.revocations_after(0, now=NOW + 11, limit=10) == []

    run(kind, tmp_path, body)


# -- kill switch -------------------------------------------------------------------------------
def test_block_ends_tasks_and_refuses_new_ones(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        t = task(agent="spiffe://t/bad")
        await store.create_task(t, EVENT)
        other = task()
        await store.create_task(other, EVENT)
        assert await store.block(BlockKind.AGENT, "spiffe://t/bad", now=NOW, audit=EVENT) == [t.id]
        ended = await store.get_task(t.id)
        assert ended is not None and ended.state is TaskState.CANCELLED
        still = await store.get_task(other.id)
        assert still is not None and still.state is TaskState.ACTIVE
        with pytest.raises(Blocked):
            await store.create_task(task(agent="spiffe://t/bad"), EVENT)
        state = await store.lookup(task_id=None, jti=None, principals=["spiffe://t/bad"])
        assert state.blocked
        assert await store.unblock(BlockKind.AGENT, "spiffe://t/bad", now=NOW, audit=EVENT)
        await store.create_task(task(agent="spiffe://t/bad"), EVENT)
        assert not (await store.lookup(task_id=None, jti=None, principals=["spiffe://t/bad"])).blocked

    run(kind, tmp_path, body)


@pytest.mark.parametrize("kind", BACKENDS)
def test_block_ends_more_tasks_than_take_advisory_locks(kind: str, tmp_path: Path) -> None:
    # PostgreSQL takes a task's advisory lock only for blocks of up to 64 tasks (each takes a
    # slot of the server's shared lock table); a block of a principal with more still ends all
    async def body(store: Store) -> None:
        many = [task(agent="spiffe://t/busy") for _ in range(70)]
        for t in many:
            await store.create_task(t, EVENT)
        ended = await store.block(BlockKind.AGENT, "spiffe://t/busy", now=NOW, audit=EVENT)
        assert sorted(ended) == sorted(t.id for t in many)
        states = {(await store.get_task(t.id)).state for t in many}  # type: ignore[union-attr]
        assert states == {TaskState.CANCELLED}

    run(kind, tmp_path, body)


# -- replay cache -------------------------------------------------------------------------------
def test_first_use_is_single_until_expiry(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        assert await store.first_use("proof-1", until=int(now) + 60, now=now)
        assert not await store.first_use("proof-1", until=int(now) + 60, now=now)
        assert await store.first_use("proof-2", until=int(now) + 60, now=now)
        # a mark that would already have expired is refused, never silently accepted
        assert not await store.first_use("proof-expired", until=int(now) - 1, now=now)

    run(kind, tmp_path, body)


def test_spent_reads_a_single_use_mark_without_spending_it(kind: str, tmp_path: Path) -> None:
    """``spent`` (attributing refusals) sees what ``spend`` and ``issue_token`` marked, until the mark's end."""

    async def body(store: Store) -> None:
        assert not await store.spent("jwt-1", now=NOW)
        assert not await store.spent("jwt-1", now=NOW), "reading must not spend"
        assert await store.spend("jwt-1", until=int(NOW) + 60, now=NOW)
        assert await store.spent("jwt-1", now=NOW)
        assert not await store.spent("jwt-1", now=NOW + 61), "an expired mark is no longer spent"
        t = task()
        await store.create_task(t, EVENT)
        await store.issue_token(token(t.id), now=NOW, spends=[("jwt-2", int(NOW) + 60)], audit=EVENT)
        assert await store.spent("jwt-2", now=NOW)

    run(kind, tmp_path, body)


# -- signing keys -------------------------------------------------------------------------------
def test_signing_key_rotation_keeps_old_key_until_not_after(kind: str, tmp_path: Path) -> None:
    from tether.keys.keyring import load_keyring, rotate_signing_key

    master = secrets.token_bytes(32)

    async def body(store: Store) -> None:
        first = await rotate_signing_key(store, master, alg="ES256", now=int(NOW), max_token_lifetime=300)
        second = await rotate_signing_key(store, master, alg="EdDSA", now=int(NOW) + 10, max_token_lifetime=300)
        ring = await load_keyring(store, master, now=NOW + 20)
        assert ring.current.kid == second.kid
        assert {k["kid"] for k in ring.jwks(now=NOW + 20)["keys"]} == {first.kid, second.kid}
        later = await load_keyring(store, master, now=NOW + 10 + 300 + 61)
        assert {k["kid"] for k in later.jwks(now=NOW + 10 + 300 + 61)["keys"]} == {second.kid}

    run(kind, tmp_path, body)


# -- concurrency --------------------------------------------------------------------------------
def test_racing_issuance_never_exceeds_max_tokens(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        t = task(max_tokens=7)
        await store.create_task(t, EVENT)
        results = await race(40, lambda i: store.issue_token(token(t.id), now=NOW, spends=[(f"s{i}", int(NOW) + 600)],
                                                                 audit=EVENT))  # fmt: skip
        ok = [r for r in results if r is None]
        assert len(ok) == 7
        assert all(isinstance(r, CapReached) for r in results if r is not None)
        stored = await store.get_task(t.id)
        assert stored is not None and stored.tokens_issued == 7
        assert await chain_ok(store) == 1 + 7

    run(kind, tmp_path, body)


def test_racing_spends_of_one_jti_succeed_once(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        t = task()
        await store.create_task(t, EVENT)
        results = await race(20, lambda i: store.issue_token(token(t.id), now=NOW, spends=[("same", int(NOW) + 600)],
                                                                 audit=EVENT))  # fmt: skip
        assert sum(r is None for r in results) == 1
        assert all(isinstance(r, AlreadySpent) for r in results if r is not None)

    run(kind, tmp_path, body)


def test_racing_replay_checks_accept_once(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        results = await race(30, lambda i: store.first_use("racing-proof", until=int(now) + 60, now=now))
        assert results.count(True) == 1 and results.count(False) == 29

    run(kind, tmp_path, body)


def test_revocation_racing_issuance_leaves_no_live_child(kind: str, tmp_path: Path) -> None:
    """A child issued while its parent is being revoked is either refused or revoked with it."""

    async def body(store: Store) -> None:
        t = task(max_tokens=1000)
        await store.create_task(t, EVENT)
        parent = token(t.id)
        await store.issue_token(parent, now=NOW, spends=[], audit=EVENT)
        children = [token(t.id, parent=parent.jti) for _ in range(30)]

        async def issue(i: int) -> Any:
            if i == 10:
                return await store.revoke_tree(parent.jti, now=NOW, audit=EVENT)
            return await store.issue_token(children[i if i < 10 else i - 1], now=NOW, spends=[], audit=EVENT)

        await race(31, issue)
        for child in children:
            stored = await store.get_token(child.jti)
            assert stored is None or stored.revoked_at is not None, "a child of a revoked parent is still live"
        assert await chain_ok(store) >= 2

    run(kind, tmp_path, body)


def test_audit_chain_stays_one_chain_under_concurrent_appends(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        await race(50, lambda i: store.append_audit(AuditEvent(kind="race", outcome="ok", detail={"i": i}), now=NOW + i))
        assert await chain_ok(store) == 50

    run(kind, tmp_path, body)


def test_audit_marks_match_the_records_and_carry_only_checkpoint_jws(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        for i in range(5):
            event = AuditEvent(kind="race", outcome="ok", detail={"jws": f"not-a-checkpoint-{i}"})
            await store.append_audit(event, now=NOW + i)
        await store.append_audit(checkpoint_event(seq=5, hash="h", jws="a.b.c"), now=NOW + 5)
        await store.append_audit(AuditEvent(kind="after", outcome="ok"), now=NOW + 6)
        records = await store.audit_records(after=0, limit=100)
        marks = await store.audit_marks(after=0, limit=100)
        assert [(m.seq, m.ts, m.kind, m.hash) for m in marks] == [(r.seq, r.ts, r.kind, r.hash) for r in records]
        assert [m.jws for m in marks] == [None] * 5 + ["a.b.c", None]
        assert [m.seq for m in await store.audit_marks(after=records[2].seq, limit=2)] == [r.seq for r in records[3:5]]
        assert await store.audit_marks(after=records[-1].seq, limit=10) == []

    run(kind, tmp_path, body)


def test_revocation_wakes_waiters(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        t = task()
        await store.create_task(t, EVENT)
        generation = store.revocation_generation()
        waiter = asyncio.create_task(store.wait_for_revocations(since=generation, timeout=10.0))
        await asyncio.sleep(0.05)
        await store.end_task(t.id, TaskState.COMPLETED, now=NOW, audit=EVENT)
        assert await asyncio.wait_for(waiter, 5.0) is True
        # PostgreSQL + Redis wakes its own waiters at commit and again when its own pub/sub message comes
        # back (as every other replica hears it): let that echo land, then nothing more may wake a waiter
        await asyncio.sleep(0.3)
        assert await store.wait_for_revocations(since=store.revocation_generation(), timeout=0.05) is False

    run(kind, tmp_path, body)


def test_purge_keeps_everything_still_live(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        t = task()
        await store.create_task(t, EVENT)
        live = token(t.id)
        await store.issue_token(live, now=NOW, spends=[("live-mark", int(NOW) + 600)], audit=EVENT)
        await store.revoke_tree(live.jti, now=NOW, audit=EVENT)
        await store.purge_expired(now=NOW + 1)
        assert [e.value for e in await store.revocations_after(0, now=NOW + 1, limit=10)] == [live.jti]
        assert not await store.spend("live-mark", until=int(NOW) + 600, now=NOW + 1), "a live single-use mark was purged"
        await store.purge_expired(now=NOW + 1000)
        assert await store.spend("live-mark", until=int(NOW) + 2000, now=NOW + 1000)

    run(kind, tmp_path, body)


def test_policy_versions_are_recorded_once(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        assert await store.record_policy_version("v1", {"a.cedar": "permit(principal, action, resource);"}, now=NOW)
        assert not await store.record_policy_version("v1", {"a.cedar": "changed"}, now=NOW + 1)
        assert await store.record_policy_version("v2", {}, now=NOW + 2)
        assert await store.policy_versions(limit=10) == [("v2", NOW + 2), ("v1", NOW)]

    run(kind, tmp_path, body)


# -- vault and counters ---------------------------------------------------------------------------
def test_vault_put_rotate_list_delete(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        first = await store.vault_put("crm", b"sealed-1", version=1, now=NOW, audit=EVENT)
        assert (first.version, first.created_at) == (1, NOW)
        rotated = await store.vault_put("crm", b"sealed-2", version=2, now=NOW + 5, audit=EVENT)
        assert (rotated.version, rotated.created_at, rotated.updated_at, rotated.sealed) == (2, NOW, NOW + 5, b"sealed-2")
        for stale in (1, 2, 4):  # a new entry where one exists, a version already taken, a skipped one
            with pytest.raises(Conflict):
                await store.vault_put("crm", b"sealed-x", version=stale, now=NOW + 6, audit=EVENT)
        got = await store.vault_get("crm")
        assert got is not None and (got.version, got.sealed) == (2, b"sealed-2"), "a refused put writes nothing"
        await store.vault_put("billing", b"sealed-b", version=1, now=NOW, audit=EVENT)
        assert [e.name for e in await store.vault_list()] == ["billing", "crm"]
        assert await store.vault_delete("crm", now=NOW, audit=EVENT)
        assert not await store.vault_delete("crm", now=NOW, audit=EVENT)
        assert await store.vault_get("crm") is None
        got = await store.vault_get("billing")
        assert got is not None and got.sealed == b"sealed-b"

    run(kind, tmp_path, body)


def test_vault_latest_audit_is_the_newest_put_or_rotation_naming_the_entry(kind: str, tmp_path: Path) -> None:
    def vault_event(event_kind: str, name: str, version: int) -> AuditEvent:
        return AuditEvent(kind=event_kind, outcome="ok", detail={"name": name, "version": version})

    async def body(store: Store) -> None:
        assert await store.vault_latest_audit("crm") is None
        await store.vault_put("crm", b"sealed-1", version=1, now=NOW, audit=vault_event("vault.put", "crm", 1))
        await store.vault_put("crm", b"sealed-2", version=2, now=NOW + 5, audit=vault_event("vault.rotated", "crm", 2))
        # after it: another entry's rotation, and records of other kinds naming crm
        await store.vault_put("billing", b"sealed-b", version=1, now=NOW + 6, audit=vault_event("vault.put", "billing", 1))
        await store.append_audit(vault_event("gateway.call", "crm", 9), now=NOW + 7)
        await store.vault_delete("crm", now=NOW + 8, audit=vault_event("vault.deleted", "crm", 9))
        latest = await store.vault_latest_audit("crm")
        assert latest is not None and (latest.kind, latest.ts, dict(latest.detail)) == (
            "vault.rotated", NOW + 5, {"name": "crm", "version": 2},
        )  # fmt: skip
        billing = await store.vault_latest_audit("billing")
        assert billing is not None and billing.detail["name"] == "billing" and billing.kind == "vault.put"
        assert await store.vault_latest_audit("cr") is None  # the name, not a prefix

    run(kind, tmp_path, body)


def test_mcp_pin_latest_audit_is_the_newest_approval_of_the_route_not_the_newest_record(kind: str, tmp_path: Path) -> None:
    def pinned(route: str, at: float, tools: dict[str, str]) -> AuditEvent:
        return AuditEvent(kind="mcp.pinned", outcome="ok", detail={"route": route, "pinned_at": at, "tools": tools})

    async def body(store: Store) -> None:
        assert await store.mcp_pin_latest_audit("files") is None
        await store.append_audit(pinned("files", NOW, {"read_file": "d1"}), now=NOW)
        await store.append_audit(pinned("files", NOW + 10, {"read_file": "d2"}), now=NOW + 10)
        # after it: a record naming an older approval (what a database writer could append), another
        # route's approval and another kind naming the route
        await store.append_audit(pinned("files", NOW + 1, {"read_file": "d1"}), now=NOW + 20)
        await store.append_audit(pinned("drive", NOW + 30, {"x": "d3"}), now=NOW + 30)
        await store.append_audit(AuditEvent(kind="mcp.call", outcome="ok", detail={"route": "files", "pinned_at": NOW + 99}),
                                 now=NOW + 31)  # fmt: skip
        latest = await store.mcp_pin_latest_audit("files")
        assert latest is not None and latest.detail["tools"] == {"read_file": "d2"} and latest.ts == NOW + 10
        drive = await store.mcp_pin_latest_audit("drive")
        assert drive is not None and drive.detail["tools"] == {"x": "d3"}
        assert await store.mcp_pin_latest_audit("file") is None  # the route, not a prefix

    run(kind, tmp_path, body)


def test_rewrap_sealed_touches_every_blob_in_one_step(kind: str, tmp_path: Path) -> None:
    from tether.keys.keyring import rotate_signing_key

    async def body(store: Store) -> None:
        await store.vault_put("a", b"A", version=1, now=NOW, audit=EVENT)
        await store.vault_put("b", b"B", version=1, now=NOW, audit=EVENT)
        key = await rotate_signing_key(store, secrets.token_bytes(32), alg="ES256", now=int(NOW), max_token_lifetime=300)
        seen: list[tuple[str, str]] = []

        def rewrap(blob_kind: str, ident: str, blob: bytes) -> bytes:
            seen.append((blob_kind, ident))
            return blob + b"!"

        assert await store.rewrap_sealed(rewrap, now=NOW, audit=EVENT) == 3
        assert sorted(seen) == [("key", key.kid), ("vault", "a"), ("vault", "b")]
        got = await store.vault_get("a")
        assert got is not None and got.sealed == b"A!"
        keys = await store.signing_keys(now=NOW)
        assert keys[0].sealed_private.endswith(b"!")

        def failing(blob_kind: str, ident: str, blob: bytes) -> bytes:
            if ident == "b":
                raise RuntimeError("wrong old key")
            return blob + b"?"

        with pytest.raises(RuntimeError):
            await store.rewrap_sealed(failing, now=NOW, audit=EVENT)
        unchanged = await store.vault_get("a")
        assert unchanged is not None and unchanged.sealed == b"A!", "a failed rewrap must change nothing"

    run(kind, tmp_path, body)


def test_counters_count_within_their_window(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        values = [await store.count("gw:r:t", until=int(now) + 60, now=now) for _ in range(3)]
        assert values == [1, 2, 3]
        assert await store.count("gw:r:other", until=int(now) + 60, now=now) == 1
        raced = await race(25, lambda i: store.count("gw:race", until=int(now) + 60, now=now))
        assert sorted(r for r in raced if isinstance(r, int)) == list(range(1, 26))  # 25 ints: none raised
        first = await store.first_seen("session:t", now=now, until=int(now) + 60)
        assert first == pytest.approx(now, abs=1e-3)
        again = await store.first_seen("session:t", now=now + 30, until=int(now) + 90)
        assert again == pytest.approx(now, abs=1e-3)

    run(kind, tmp_path, body)


def test_issue_consumes_the_proof_and_checks_blocks_in_the_same_step(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        t = task()
        await store.create_task(t, EVENT)
        now = time.time()
        first = token(t.id)
        await store.issue_token(first, now=now, spends=[], audit=EVENT, replay=("proof-a", int(now) + 60))
        with pytest.raises(Replayed):
            await store.issue_token(token(t.id), now=now, spends=[("mark", int(now) + 600)], audit=EVENT,
                                    replay=("proof-a", int(now) + 60))  # fmt: skip
        # the refused issuance wrote nothing: the identity mark it carried is still unspent
        assert await store.spend("mark", until=int(now) + 600, now=now)
        await store.block(BlockKind.SUBJECT, "user:eve", now=now, audit=EVENT)
        with pytest.raises(Blocked):
            await store.issue_token(token(t.id), now=now, spends=[], audit=EVENT, principals=["user:eve"])
        await store.issue_token(token(t.id), now=now, spends=[], audit=EVENT, replay=("proof-b", int(now) + 60),
                                principals=["user:alice"])  # fmt: skip
        stored = await store.get_task(t.id)
        assert stored is not None and stored.tokens_issued == 2

    run(kind, tmp_path, body)


@pytest.mark.parametrize("kind", BACKENDS)
def test_DPOP_12_a_proof_the_replay_epoch_cannot_vouch_for_is_spent_and_nothing_is_issued(kind: str, tmp_path: Path) -> None:
    # PostgreSQL + Redis: ``vouch`` rejecting the cache's epoch refuses with PredatesReplayCache after
    # spending the proof (a second try is a replay) and writes nothing else. SQLite keeps its replay
    # marks in the database they guard, so it has nothing to vouch for and ignores ``vouch``.
    async def body(store: Store) -> None:
        t = task()
        await store.create_task(t, EVENT)
        now = time.time()
        before = len(await store.audit_records(after=0, limit=1000))
        refused = token(t.id)
        if kind == "sqlite":
            await store.issue_token(refused, now=now, spends=[], audit=EVENT, replay=("p", int(now) + 60),
                                    vouch=lambda epoch: False)  # fmt: skip
            assert await store.get_token(refused.jti) is not None
            return
        with pytest.raises(PredatesReplayCache):
            await store.issue_token(refused, now=now, spends=[("mark", int(now) + 600)], audit=EVENT,
                                    replay=("p", int(now) + 60), vouch=lambda epoch: False)  # fmt: skip
        assert await store.get_token(refused.jti) is None
        assert len(await store.audit_records(after=0, limit=1000)) == before
        assert await store.spend("mark", until=int(now) + 600, now=now)  # the identity mark stayed unspent
        stored = await store.get_task(t.id)
        assert stored is not None and stored.tokens_issued == 0
        with pytest.raises(Replayed):  # the proof itself stays spent
            await store.issue_token(token(t.id), now=now, spends=[], audit=EVENT, replay=("p", int(now) + 60))
        await store.issue_token(token(t.id), now=now, spends=[], audit=EVENT, replay=("q", int(now) + 60),
                                vouch=lambda epoch: True)  # fmt: skip  # control

    run(kind, tmp_path, body)


# -- RFC 8705: certificate-bound tokens --------------------------------------------------------
def test_MTLS_01_a_certificate_bound_lineage_round_trips_without_a_proof(kind: str, tmp_path: Path) -> None:
    """A certificate-only token (``jkt`` "", ``x5t`` set) is issued with no DPoP replay key and
    reads back whole through ``get_token`` and ``lookup``; its hop links to it and is revoked with it."""
    x5t = "x" * 43

    async def body(store: Store) -> None:
        t = task()
        await store.create_task(t, EVENT)
        session = dataclasses.replace(token(t.id), kind="session", jkt="", x5t=x5t)
        await store.issue_token(session, now=NOW, spends=[], audit=EVENT, replay=None, vouch=None)
        hop = dataclasses.replace(token(t.id, parent=session.jti), jkt="", x5t=x5t)
        await store.issue_token(hop, now=NOW, spends=[], audit=EVENT, replay=None, vouch=None)
        both = dataclasses.replace(token(t.id, parent=session.jti), x5t=x5t)  # dpop+mtls keeps its jkt
        await store.issue_token(both, now=NOW, spends=[], audit=EVENT, replay=("proof-" + both.jti, int(NOW) + 60))
        for issued in (session, hop, both):
            assert await store.get_token(issued.jti) == issued
        found = await store.lookup(task_id=t.id, jti=hop.jti, principals=[hop.sub])
        assert found.token == hop and found.token.x5t == x5t and found.token.jkt == ""
        assert await store.revoke_tree(session.jti, now=NOW + 1, audit=EVENT) == sorted([session.jti, hop.jti, both.jti])
        revoked = await store.get_token(hop.jti)
        assert revoked is not None and revoked.x5t == x5t and revoked.revoked_at is not None

    run(kind, tmp_path, body)
