"""Held requests (issue 17, ``rules.approval``) in every Store backend: SQLite and PostgreSQL.

One suite for both (STYLE rule 5): the protocol's approval methods answer alike, including
ordering, paging and the effective status, and each security step is atomic. The races use
several stores on one database (as STS replicas or processes sharing a SQLite file), and for
SQLite also threads with their own connections, so they pass only if the transactions make the
steps atomic. Approvals carry real HMAC tags (``rules.approval_seal``) so the round trips prove
the MACs still verify on what comes back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from storekit import BACKENDS, NOW, chain_ok, open_replicas, race, run, run_replicas, upgrade_from

from tether.audit.chain import AuditEvent
from tether.model import Approval, ApprovalStatus
from tether.rules.approval_seal import ApprovalTampered, check_sealed, decision_mac, request_mac
from tether.store.errors import CapReached, Conflict, NotFound, StoreUnavailable
from tether.store.protocol import Store
from tether.store.rows import APPROVAL_RETENTION
from tether.store.sqlite.store import SqliteStore

KEY = secrets.token_bytes(32)
T0 = int(NOW)
TTL = 600
APPROVER = "user:fiona@example.com"


# JSON that a careless round trip would change: floats, the largest exact integer, a NUL, an
# astral character, quotes, nested arrays of literals (jsonb would reorder, a lossy column would not return them)
REQUEST = {"aud": "https://pay.example/", "scope": ["pay", "read"], "actors": [], "jkt": "k" * 43, "x5t": None,
           "tctx": "t" * 43, "kind": "hop", "n": 1.5, "big": 2**53 - 1}  # fmt: skip
VIEW = {"tool": "transfer", "arguments": {"amount": 120.25, "to": "IBAN \u2713 \u0000 \U0001f600", "memo": "[redacted]"},
        "purpose": 'pay the "supplier"', "nested": [{"a": [True, False, None]}]}  # fmt: skip


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def held(task: str = "tsk_1", *, digest: str | None = None, created_at: int = T0, ttl: int = TTL, **fields: Any) -> Approval:
    """A pending approval as the STS holds one: fresh id, a request and view with awkward JSON, a real request MAC."""
    digest = digest or secrets.token_hex(16)
    values: dict[str, Any] = {
        "id": "apr_" + secrets.token_urlsafe(16),
        "task": task,
        "digest": digest,
        "request": {**REQUEST, "task": task},
        "view": VIEW,
        "groups": ("finance", "subject"),
        "policies": ("permit-pay", "approve-large"),
        "created_at": created_at,
        "expires_at": created_at + ttl,
        "request_mac": "",
        "creator_may_approve": True,
    }
    values.update(fields)
    approval = Approval(**values)
    return dataclasses.replace(approval, request_mac=request_mac(KEY, approval))


def decision(stored: Approval, *, status: ApprovalStatus = ApprovalStatus.APPROVED, at: int = T0 + 10, uses: int = 3,
             until: int | None = T0 + 3600, reason: str = "ok: \"large\" — fine", by: str = APPROVER) -> Approval:  # fmt: skip
    """``stored`` decided as the STS decides it, with its decision MAC."""
    decided = dataclasses.replace(stored, status=status, decided_by=by, decided_at=at, reason=reason, uses=uses, until=until)
    return dataclasses.replace(decided, decision_mac=decision_mac(KEY, decided))


def requested(approval: Approval) -> AuditEvent:
    return AuditEvent(kind="approval.requested", outcome="ok", principal="spiffe://t/agent", task=approval.task,
                      detail={"approval": approval.id, "groups": list(approval.groups)})  # fmt: skip


def decided_event(approval: Approval) -> AuditEvent:
    return AuditEvent(kind=f"approval.{approval.status.value}", outcome="ok", principal=approval.decided_by,
                      task=approval.task, detail={"approval": approval.id})  # fmt: skip


def expired_event(approval: Approval) -> AuditEvent:
    return AuditEvent(kind="approval.expired", outcome="ok", principal="spiffe://t/agent", task=approval.task,
                      detail={"approval": approval.id, "status": approval.status.value})  # fmt: skip


async def hold(store: Store, approval: Approval, *, now: float = NOW, max_pending: int = 10) -> Approval:
    return await store.hold_approval(approval, now=now, max_pending=max_pending, audit=requested(approval))


async def decide(store: Store, decided: Approval, *, now: float = NOW + 10) -> Approval:
    return await store.decide_approval(decided, now=now, audit=decided_event(decided))


async def kinds(store: Store) -> list[str]:
    return [r.kind for r in await store.audit_records(after=0, limit=10_000)]


async def all_approvals(store: Store, *, task: str | None = None) -> list[Approval]:
    return await store.list_approvals(status=None, task=task, now=NOW, limit=10_000)


# -- holding ---------------------------------------------------------------------------------------
def test_hold_round_trips_every_field_and_audits_in_the_same_step(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        approval = held()
        assert await hold(store, approval) == approval
        stored = await store.get_approval(approval.id)
        assert stored == approval
        assert stored.request == approval.request and stored.view == approval.view  # exactly, NUL and astral included
        check_sealed(KEY, stored, decided=False)  # the request MAC verifies on what the store gives back
        assert await store.get_approval("apr_missing") is None
        records = await store.audit_records(after=0, limit=10)
        assert [(r.kind, r.detail["approval"]) for r in records] == [("approval.requested", approval.id)]
        assert await chain_ok(store) == 1

    run(kind, tmp_path, body)


def test_APR01_hold_is_idempotent_per_request_digest(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        first = await hold(store, held(digest="same"))
        again = held(digest="same", created_at=T0 + 5)
        assert await hold(store, again, now=NOW + 5) == first, "a retried request waits on the same approval"
        assert await store.get_approval(again.id) is None, "the retry wrote a row"
        other_task = await hold(store, held("tsk_2", digest="same"))
        other_digest = await hold(store, held(digest="different"))
        assert len({first.id, other_task.id, other_digest.id}) == 3
        assert await kinds(store) == ["approval.requested"] * 3
        # once the first has expired (swept or not), the same request is held afresh
        later = held(digest="same", created_at=first.expires_at)
        assert await hold(store, later, now=first.expires_at) == later
        # ...and a decided one is not pending: the same request asks again
        await decide(store, decision(later), now=first.expires_at + 1)
        fresh = held(digest="same", created_at=first.expires_at + 2)
        assert await hold(store, fresh, now=first.expires_at + 2) == fresh
        assert await chain_ok(store) == 6

    run(kind, tmp_path, body)


def test_hold_cap_counts_the_tasks_pending_unexpired_approvals_and_writes_nothing(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        a = await hold(store, held(ttl=100), max_pending=2)
        b = await hold(store, held(ttl=500), max_pending=2)
        refused = held()
        with pytest.raises(CapReached):
            await hold(store, refused, max_pending=2)
        assert await store.get_approval(refused.id) is None
        assert await kinds(store) == ["approval.requested"] * 2, "the refused hold was audited"
        assert await hold(store, held(digest=a.digest), max_pending=2) == a, "a retry is answered even at the cap"
        assert (await hold(store, held("tsk_other"), max_pending=2)).task == "tsk_other", "another task has its own cap"
        # an expired (unswept) approval no longer counts, nor a decided one
        c = await hold(store, held(created_at=T0 + 100), now=a.expires_at, max_pending=2)
        with pytest.raises(CapReached):
            await hold(store, held(created_at=T0 + 100), now=a.expires_at, max_pending=2)
        await decide(store, decision(b, status=ApprovalStatus.DENIED, until=None, uses=0), now=NOW + 101)
        d = await hold(store, held(created_at=T0 + 101), now=NOW + 101, max_pending=2)
        assert {x.id for x in await store.list_approvals(status=ApprovalStatus.PENDING, task="tsk_1", now=NOW + 101,
                                                          limit=10)} == {c.id, d.id}  # fmt: skip
        with pytest.raises(CapReached):
            await hold(store, held(), max_pending=0)
        assert await chain_ok(store) == 6

    run(kind, tmp_path, body)


def test_concurrent_holds_of_one_request_leave_one_row(kind: str, tmp_path: Path) -> None:
    """Replicas race the same request: one row, one audit record, every caller gets that row."""

    async def body(stores: list[Store]) -> None:
        digest = "raced"
        results = await race(12, lambda i: hold(stores[i % len(stores)], held(digest=digest)))
        holds = [r for r in results if isinstance(r, Approval)]
        assert len(holds) == len(results), results
        assert len({r.id for r in holds}) == 1
        assert [a.id for a in await all_approvals(stores[0])] == [holds[0].id]
        assert await kinds(stores[1]) == ["approval.requested"]
        assert await chain_ok(stores[0]) == 1

    run_replicas(kind, tmp_path, 3, body)


def test_concurrent_holds_of_different_requests_respect_the_cap(kind: str, tmp_path: Path) -> None:
    async def body(stores: list[Store]) -> None:
        results = await race(15, lambda i: hold(stores[i % len(stores)], held(), max_pending=4))
        assert sum(isinstance(r, Approval) for r in results) == 4
        assert all(isinstance(r, CapReached) for r in results if not isinstance(r, Approval)), results
        assert len(await all_approvals(stores[0])) == 4
        assert await chain_ok(stores[1]) == 4

    run_replicas(kind, tmp_path, 3, body)


def _in_threads(count: int, work: Callable[[int], Awaitable[Any]]) -> list[Any]:
    """``work(i)`` on ``count`` threads at once, each with its own event loop (and so its own connections)."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def target(i: int) -> None:
        async def go() -> Any:
            barrier.wait()
            return await work(i)

        try:
            results[i] = asyncio.run(go())
        except Exception as exc:  # noqa: BLE001 - collected and asserted on by the test
            results[i] = exc

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_sqlite_holds_racing_from_separate_connections_leave_one_row(tmp_path: Path) -> None:
    """SQLite's statements run inline on one loop; threads with their own stores race for real."""
    path = tmp_path / "tether.db"
    stores = [SqliteStore.open(path) for _ in range(6)]
    try:
        results = _in_threads(6, lambda i: hold(stores[i], held(digest="raced"), max_pending=1))
        racers = _in_threads(6, lambda i: hold(stores[i], held("tsk_cap"), max_pending=2))
        assert all(isinstance(r, Approval) for r in results), results
        assert len({r.id for r in results}) == 1
        assert sum(isinstance(r, Approval) for r in racers) == 2
        assert all(isinstance(r, CapReached) for r in racers if not isinstance(r, Approval)), racers

        async def check() -> None:
            assert len(await all_approvals(stores[0], task="tsk_1")) == 1
            assert len(await all_approvals(stores[0], task="tsk_cap")) == 2
            assert await chain_ok(stores[0]) == 3

        asyncio.run(check())
    finally:
        for store in stores:
            store.close()


# -- deciding --------------------------------------------------------------------------------------
def test_decision_fields_round_trip_exactly_and_the_macs_verify(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        stored = await hold(store, held())
        decided = decision(stored)
        assert await decide(store, decided) == decided
        again = await store.get_approval(stored.id)
        assert again == decided
        check_sealed(KEY, again, decided=True)
        denied = decision(await hold(store, held()), status=ApprovalStatus.DENIED, uses=0, until=None, reason="")
        assert await decide(store, denied) == denied == await store.get_approval(denied.id)
        check_sealed(KEY, denied, decided=True)
        assert await kinds(store) == ["approval.requested", "approval.approved", "approval.requested", "approval.denied"]
        assert await chain_ok(store) == 4

    run(kind, tmp_path, body)


def test_decide_writes_only_the_decision_fields(kind: str, tmp_path: Path) -> None:
    """What was asked stays as stored, whatever the caller's copy says (APR-05: the approver saw that)."""

    async def body(store: Store) -> None:
        stored = await hold(store, held())
        forged = dataclasses.replace(
            decision(stored), task="tsk_other", digest="other", request={"aud": "https://evil.example/"},
            view={"tool": "harmless"}, groups=("anyone",), policies=(), created_at=T0 - 1, expires_at=T0 + 99_999,
            request_mac="forged", creator_may_approve=False,
        )  # fmt: skip
        written = await decide(store, forged)
        again = await store.get_approval(stored.id)
        assert again == written
        request_fields = [f.name for f in dataclasses.fields(Approval)][:11]
        assert request_fields[-1] == "creator_may_approve"
        for name in request_fields:
            assert getattr(again, name) == getattr(stored, name), name
        for name in ("status", "decided_by", "decided_at", "reason", "uses", "until", "decision_mac"):
            assert getattr(again, name) == getattr(forged, name), name
        check_sealed(KEY, again, decided=False)

    run(kind, tmp_path, body)


def test_APR03_decide_is_a_compare_and_set(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        stored = await hold(store, held())
        approved = await decide(store, decision(stored))
        with pytest.raises(Conflict):  # a second decision, either way
            await decide(store, decision(stored, status=ApprovalStatus.DENIED, by="user:mallory", until=None))
        with pytest.raises(Conflict):
            await decide(store, decision(stored, uses=99))
        assert await store.get_approval(stored.id) == approved, "a refused decision changed the stored one"
        with pytest.raises(NotFound):
            await decide(store, decision(held(id="apr_unknown")))
        assert await kinds(store) == ["approval.requested", "approval.approved"]

    run(kind, tmp_path, body)


def test_APR03_decide_after_expiry_is_a_conflict_swept_or_not(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        unswept = await hold(store, held())
        with pytest.raises(Conflict):  # at the very second of expiry it is expired (effective_status)
            await decide(store, decision(unswept, at=unswept.expires_at), now=unswept.expires_at)
        just_before = await decide(store, decision(await hold(store, held())), now=unswept.expires_at - 0.5)
        assert just_before.status is ApprovalStatus.APPROVED
        swept = await hold(store, held(ttl=5))
        assert [a.id for a in await store.expire_approvals(now=NOW + 5, audit=expired_event)] == [swept.id]
        with pytest.raises(Conflict):  # marked expired: even a stale clock cannot decide it
            await decide(store, decision(swept), now=NOW + 1)
        assert await store.get_approval(unswept.id) == unswept
        assert await chain_ok(store) == 5

    run(kind, tmp_path, body)


def test_decide_refuses_a_decision_that_neither_approves_nor_denies(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        stored = await hold(store, held())
        for status in (ApprovalStatus.PENDING, ApprovalStatus.EXPIRED):
            with pytest.raises(Conflict):
                await decide(store, decision(stored, status=status))
        assert await store.get_approval(stored.id) == stored

    run(kind, tmp_path, body)


def test_racing_decisions_on_replicas_decide_once(kind: str, tmp_path: Path) -> None:
    async def body(stores: list[Store]) -> None:
        stored = await hold(stores[0], held())
        votes = [decision(stored, status=ApprovalStatus.APPROVED if i % 2 else ApprovalStatus.DENIED, by=f"user:{i}")
                 for i in range(10)]  # fmt: skip
        results = await race(10, lambda i: decide(stores[i % len(stores)], votes[i]))
        winners = [r for r in results if isinstance(r, Approval)]
        assert len(winners) == 1
        assert all(isinstance(r, Conflict) for r in results if not isinstance(r, Approval)), results
        assert await stores[1].get_approval(stored.id) == winners[0]
        assert len(await kinds(stores[2])) == 2
        assert await chain_ok(stores[0]) == 2

    run_replicas(kind, tmp_path, 3, body)


# -- expiring --------------------------------------------------------------------------------------
def test_expire_marks_exactly_the_due_ones_and_audits_each_in_the_chain(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        late = await hold(store, held(ttl=30))
        early = await hold(store, held(ttl=20))
        due_now = await hold(store, held(ttl=40))
        not_yet = await hold(store, held(ttl=41))
        decided = await hold(store, held(ttl=10))
        await decide(store, decision(decided), now=NOW + 1)
        seen: list[Approval] = []

        def audit(approval: Approval) -> AuditEvent:
            seen.append(approval)
            return expired_event(approval)

        expired = await store.expire_approvals(now=NOW + 40, audit=audit)
        assert [a.id for a in expired] == [early.id, late.id, due_now.id], "oldest expiry first, only the due pending ones"
        assert seen == expired, "each record was built from the approval as now stored"
        for before in (early, late, due_now):
            after = await store.get_approval(before.id)
            assert after == dataclasses.replace(before, status=ApprovalStatus.EXPIRED)
            check_sealed(KEY, after, decided=False)
        assert (await store.get_approval(not_yet.id)) == not_yet
        assert (await store.get_approval(decided.id) or decided).status is ApprovalStatus.APPROVED
        records = await store.audit_records(after=0, limit=100)
        tail = [(r.kind, r.detail["approval"], r.detail["status"]) for r in records[-3:]]
        assert tail == [("approval.expired", a.id, "expired") for a in (early, late, due_now)]
        assert await chain_ok(store) == 5 + 1 + 3
        assert await store.expire_approvals(now=NOW + 40, audit=audit) == [], "a second sweep marks nothing again"
        assert await chain_ok(store) == 9

    run(kind, tmp_path, body)


def test_expire_takes_at_most_limit_and_ties_go_by_id(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        ids = ["apr_b", "apr_A", "apr_-c", "apr_a"]
        for approval_id in ids:
            await hold(store, held(id=approval_id, ttl=10))
        first = await store.expire_approvals(now=NOW + 10, audit=expired_event, limit=3)
        assert [a.id for a in first] == sorted(ids)[:3]
        rest = await store.expire_approvals(now=NOW + 10, audit=expired_event, limit=3)
        assert [a.id for a in rest] == sorted(ids)[3:]
        assert await chain_ok(store) == 8

    run(kind, tmp_path, body)


def test_expire_and_decide_racing_on_replicas_agree(kind: str, tmp_path: Path) -> None:
    """A sweep and decisions racing on one approval: it ends either decided or expired, audited once."""

    async def body(stores: list[Store]) -> None:
        approvals = [await hold(stores[0], held(ttl=10)) for _ in range(8)]

        async def one(i: int) -> Any:
            if i == 0:
                return await stores[0].expire_approvals(now=NOW + 10, audit=expired_event)
            return await decide(stores[i % len(stores)], decision(approvals[i - 1]), now=NOW + 9)

        results = await race(9, one)
        assert isinstance(results[0], list), results[0]
        swept = {a.id for a in results[0]}
        decided = {r.id for r in results[1:] if isinstance(r, Approval)}
        assert all(isinstance(r, Approval | Conflict) for r in results[1:]), results
        assert swept | decided == {a.id for a in approvals} and not swept & decided
        assert await chain_ok(stores[1]) == 8 + 8

    run_replicas(kind, tmp_path, 2, body)


# -- listing ---------------------------------------------------------------------------------------
async def _linguistic_collation(store: Store) -> None:
    """On PostgreSQL, compare ids as a database created with a non-C locale would (see test_backends_agree)."""
    from tether.store.postgres.store import PostgresRedisStore

    if isinstance(store, PostgresRedisStore):
        async with store.pool.connection() as conn:
            await conn.execute('ALTER TABLE approvals ALTER COLUMN id TYPE TEXT COLLATE "und-x-icu"')


def test_list_is_newest_first_ties_by_id_in_code_point_order_whatever_the_collation(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        await _linguistic_collation(store)
        same_second = ["apr_a", "apr_B", "apr_-c", "apr_\u00e9", "apr_Z"]  # a linguistic collation sorts -c, a, B, é, Z
        for approval_id in same_second:
            await hold(store, held(id=approval_id, created_at=T0))
        newer = await hold(store, held(id="apr_0", created_at=T0 + 1))
        older = await hold(store, held(id="apr_zz", created_at=T0 - 1))
        expected = [newer.id, *sorted(same_second, reverse=True), older.id]
        assert [a.id for a in await all_approvals(store)] == expected
        for size in (1, 2, 3, 7):  # paging with `before` walks the same order, exclusive, without gaps
            paged: list[str] = []
            before: str | None = None
            while True:
                page = await store.list_approvals(status=None, task=None, now=NOW, limit=size, before=before)
                if not page:
                    break
                paged += [a.id for a in page]
                before = page[-1].id
            assert paged == expected, size
        assert await store.list_approvals(status=None, task=None, now=NOW, limit=10, before="apr_unknown") == []

    run(kind, tmp_path, body)


def test_list_filters_by_effective_status_and_task(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        pending = await hold(store, held(created_at=T0 + 4, ttl=1000))
        unswept = await hold(store, held(created_at=T0 + 3, ttl=4))
        swept = await hold(store, held(created_at=T0 + 2, ttl=3))
        await store.expire_approvals(now=NOW + 5, audit=expired_event)
        approved = await decide(store, decision(await hold(store, held(created_at=T0 + 1))), now=NOW + 1)
        denied = await decide(store, decision(await hold(store, held("tsk_2")), status=ApprovalStatus.DENIED), now=NOW + 1)
        now = NOW + 8  # `unswept` is past its expiry, not marked

        async def ids(status: ApprovalStatus | None, task: str | None = None, before: str | None = None) -> list[str]:
            return [a.id for a in await store.list_approvals(status=status, task=task, now=now, limit=50, before=before)]

        assert await ids(ApprovalStatus.PENDING) == [pending.id]
        assert await ids(ApprovalStatus.EXPIRED) == [unswept.id, swept.id]
        assert await ids(ApprovalStatus.APPROVED) == [approved.id]
        assert await ids(ApprovalStatus.DENIED) == [denied.id]
        assert await ids(None) == [pending.id, unswept.id, swept.id, approved.id, denied.id]
        assert await ids(None, "tsk_2") == [denied.id]
        assert await ids(ApprovalStatus.EXPIRED, "tsk_1", before=unswept.id) == [swept.id]
        assert await ids(ApprovalStatus.PENDING, "tsk_2") == []
        listed = await store.list_approvals(status=ApprovalStatus.EXPIRED, task=None, now=now, limit=50)
        assert [a.effective_status(now) for a in listed] == [ApprovalStatus.EXPIRED] * 2
        assert listed[0].status is ApprovalStatus.PENDING, "listing reports, it does not mark"
        assert len(await store.list_approvals(status=None, task=None, now=now, limit=2)) == 2

    run(kind, tmp_path, body)


# -- housekeeping and failures ---------------------------------------------------------------------
def test_purge_drops_decided_and_expired_approvals_a_week_past_relevance(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        expired = await hold(store, held())
        await store.expire_approvals(now=NOW + TTL, audit=expired_event)
        denied = await decide(store, decision(await hold(store, held()), status=ApprovalStatus.DENIED, until=None))
        window = decision(await hold(store, held()), until=T0 + 30 * 86400)  # approved for a month
        await decide(store, window)
        unswept = await hold(store, held(ttl=10))  # never swept: kept until its expiry is audited
        live = await hold(store, held(created_at=T0 + APPROVAL_RETENTION, ttl=10))
        await store.purge_expired(now=NOW + TTL + APPROVAL_RETENTION - 1)
        assert len(await all_approvals(store)) == 5, "purged before a week had passed"
        await store.purge_expired(now=NOW + TTL + APPROVAL_RETENTION)
        left = {a.id for a in await all_approvals(store)}
        assert left == {window.id, unswept.id, live.id}
        assert expired.id not in left and denied.id not in left
        await store.purge_expired(now=T0 + 30 * 86400 + APPROVAL_RETENTION)
        assert {a.id for a in await all_approvals(store)} == {unswept.id, live.id}, "pending ones wait for the sweep"
        assert await chain_ok(store) == 5 + 1 + 2, "purging rewrote the chain"

    run(kind, tmp_path, body)


def test_a_database_error_is_store_unavailable_and_writes_nothing(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        first = await hold(store, held())
        with pytest.raises(StoreUnavailable):  # the same id for another request: the primary key refuses
            await hold(store, held(id=first.id, digest="another"))
        assert await store.get_approval(first.id) == first
        assert await chain_ok(store) == 1

    run(kind, tmp_path, body)


def test_APR04_a_row_changed_in_the_database_no_longer_verifies(kind: str, tmp_path: Path) -> None:
    """The store keeps the MACs verbatim, so a database writer's edit is caught by ``check_sealed``."""

    async def body(store: Store) -> None:
        stored = await decide(store, decision(await hold(store, held())))
        raw = "UPDATE approvals SET uses = 1000 WHERE id = {}"
        if isinstance(store, SqliteStore):
            await store._db.run(lambda conn: conn.execute(raw.format("?"), (stored.id,)))
        else:
            from tether.store.postgres.store import PostgresRedisStore

            assert isinstance(store, PostgresRedisStore)
            async with store.pool.connection() as conn:
                await conn.execute(raw.format("%s"), (stored.id,))
        changed = await store.get_approval(stored.id)
        assert changed is not None and changed.uses == 1000
        check_sealed(KEY, changed, decided=False)
        with pytest.raises(ApprovalTampered):
            check_sealed(KEY, changed, decided=True)

    run(kind, tmp_path, body)


# -- the two backends agree ------------------------------------------------------------------------
async def _scenario(store: Store) -> list[Any]:
    """One script of holds, decisions, sweeps and listings; everything it observes, as plain data."""
    seen: list[Any] = []
    # tasks alternate; per task: new, new, a retry, new, then one past the cap of 3
    digests = ["d0", "d0", "d1", "d1", "d0", "d2", "d2", "d3", "d3", "d1"]
    fixed = [held(id=f"apr_{name}", digest=digests[i], task=f"tsk_{i % 2}", created_at=T0 + i // 3, ttl=10 + i)
             for i, name in enumerate(["q", "Q", "-x", "b", "B", "_", "z", "0", "\u00e9", "e"])]  # fmt: skip
    for approval in fixed:
        try:
            seen.append(("hold", (await hold(store, approval, max_pending=3)).id))
        except CapReached:
            seen.append(("hold", "cap"))
    for approval_id, status in (("apr_Q", ApprovalStatus.APPROVED), ("apr_b", ApprovalStatus.DENIED), ("apr_Q", None)):
        stored = await store.get_approval(approval_id)
        assert stored is not None
        try:
            seen.append(("decide", (await decide(store, decision(stored, status=status or ApprovalStatus.DENIED))).status))
        except Conflict:
            seen.append(("decide", "conflict"))
    seen.append(("expire", [a.id for a in await store.expire_approvals(now=NOW + 12, audit=expired_event, limit=2)]))
    for status in (None, *ApprovalStatus):
        for task in (None, "tsk_0", "tsk_1"):
            for before in (None, "apr_B", "apr_e"):
                listed = await store.list_approvals(status=status, task=task, now=NOW + 14, limit=4, before=before)
                seen.append(("list", status, task, before, [a.as_json(NOW + 14) for a in listed]))
    seen.append(("records", [(r.kind, r.task, r.detail.get("approval")) for r in await store.audit_records(after=0, limit=99)]))
    return seen


@pytest.mark.postgres
@pytest.mark.redis
def test_the_two_backends_give_identical_answers(tmp_path: Path) -> None:
    async def both() -> tuple[list[Any], list[Any]]:
        answers = []
        for kind in ("sqlite", "postgres"):
            stores, close = await open_replicas(kind, tmp_path / kind, 1)
            try:
                await _linguistic_collation(stores[0])
                answers.append(await _scenario(stores[0]))
            finally:
                await close()
        return answers[0], answers[1]

    sqlite, postgres = asyncio.run(both())
    assert ("hold", "cap") in sqlite and ("decide", "conflict") in sqlite, "the scenario exercises refusals"
    assert sqlite == postgres


def test_a_database_on_the_previous_schema_upgrades_and_keeps_its_data(kind: str, tmp_path: Path) -> None:
    """The approvals migration is additive: a deployment one version behind refuses to serve until
    migrated, then migrates in place, keeping what it held."""
    old_task = (
        "INSERT INTO tasks (id, agent, audiences, scopes, created_at, expires_at, max_depth, max_tokens, state)"
        " VALUES ('tsk_old', 'spiffe://t/agent', '[]', '[]', 1800000000, 1800000900, 3, 10, 'active')"
    )
    assert T0 == 1_800_000_000

    async def use(store: Store) -> None:
        assert await store.get_task("tsk_old") is not None, "the upgrade lost a task"
        approval = await hold(store, held("tsk_old"))
        assert await store.get_approval(approval.id) == approval
        assert await chain_ok(store) == 1

    upgrade_from(kind, tmp_path, missing={"sqlite": 7, "postgres": 8}, seed_sql=old_task, use=use)


@pytest.mark.parametrize(
    "decided",
    [
        {"status": ApprovalStatus.APPROVED},
        {"status": ApprovalStatus.DENIED},
        {"status": ApprovalStatus.EXPIRED},
        {"decided_by": APPROVER},
        {"decided_at": T0},
        {"reason": "pre-approved"},
        {"uses": 5},
        {"until": T0 + 3600},
        {"decision_mac": "forged"},
    ],
    ids=lambda fields: next(iter(fields)) + "=" + str(next(iter(fields.values()))),
)
def test_APR02_a_hold_cannot_store_a_decision(kind: str, decided: dict[str, Any], tmp_path: Path) -> None:
    """Only ``decide_approval`` decides: a request held with any decision field set is refused, nothing written."""

    async def body(store: Store) -> None:
        approval = dataclasses.replace(held(), **decided)
        with pytest.raises(Conflict):
            await hold(store, approval)
        assert await store.get_approval(approval.id) is None
        assert await store.audit_records(after=0, limit=10) == []

    run(kind, tmp_path, body)
