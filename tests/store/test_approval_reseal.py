"""``Store.reseal_approvals`` (``tether master-key rotate``) in every backend: SQLite and PostgreSQL.

An approval's MACs are under a key derived from the master key (``rules.approval_seal``), so a
rotation re-seals every approval in one transaction: a row whose MACs verify under the old key
gets both MACs under the new one, a row that does not verify is left as it is (still refused),
only the two MAC columns are written, one audit record says how many, and a failure writes nothing.
The approvals carry real HMAC tags, as the STS writes them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
from storekit import BACKENDS, NOW, chain_ok, run, run_replicas

from tether.audit.chain import AuditEvent
from tether.model import Approval, ApprovalStatus
from tether.rules.approval_seal import ApprovalTampered, check_sealed, decision_mac, request_mac
from tether.store.protocol import Store

OLD = secrets.token_bytes(32)
NEW = secrets.token_bytes(32)
T0 = int(NOW)
TTL = 600
APPROVER = "user:fiona@example.com"
ROTATED = AuditEvent(kind="approvals.resealed", outcome="ok", principal="operator:cli", detail={"why": "test"})
DECIDED = (ApprovalStatus.APPROVED, ApprovalStatus.DENIED)


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def held(task: str = "tsk_1", *, key: bytes = OLD, ttl: int = TTL) -> Approval:
    """A pending approval as the STS holds one, its request MAC under ``key``."""
    approval = Approval(
        id="apr_" + secrets.token_urlsafe(16), task=task, digest=secrets.token_hex(16),
        request={"aud": "https://pay.example/", "n": 1.5, "task": task}, view={"tool": "transfer", "to": "\u2713 \u0000"},
        groups=("finance",), policies=("approve-large",), created_at=T0, expires_at=T0 + ttl, request_mac="",
    )  # fmt: skip
    return dataclasses.replace(approval, request_mac=request_mac(key, approval))


def decided(stored: Approval, *, approve: bool = True, key: bytes = OLD) -> Approval:
    approval = dataclasses.replace(
        stored, status=ApprovalStatus.APPROVED if approve else ApprovalStatus.DENIED, decided_by=APPROVER,
        decided_at=T0 + 10, reason="fine", uses=2 if approve else 0, until=T0 + 3600 if approve else None,
    )  # fmt: skip
    return dataclasses.replace(approval, decision_mac=decision_mac(key, approval))


def event(kind: str, approval: Approval) -> AuditEvent:
    return AuditEvent(kind=kind, outcome="ok", principal=APPROVER, task=approval.task, detail={"approval": approval.id})


async def hold(store: Store, approval: Approval) -> None:
    await store.hold_approval(approval, now=NOW, max_pending=100, audit=event("approval.requested", approval))


async def decide(store: Store, approval: Approval) -> None:
    await store.decide_approval(approval, now=NOW + 10, audit=event(f"approval.{approval.status.value}", approval))


Reseal = Callable[[Approval], tuple[str, str] | None]


def rotation(seen: list[Approval] | None = None) -> Reseal:
    """The callback ``tether master-key rotate`` passes: verify under OLD, both MACs under NEW."""

    def reseal(approval: Approval) -> tuple[str, str] | None:
        if seen is not None:
            seen.append(approval)
        is_decided = approval.status in DECIDED
        try:
            check_sealed(OLD, approval, decided=is_decided)
        except ApprovalTampered:
            return None
        return request_mac(NEW, approval), decision_mac(NEW, approval) if is_decided else ""

    return reseal


async def every(store: Store) -> dict[str, Approval]:
    return {a.id: a for a in await store.list_approvals(status=None, task=None, now=NOW, limit=10_000)}


def sealed(key: bytes, approval: Approval) -> bool:
    try:
        check_sealed(key, approval, decided=approval.status in DECIDED)
    except ApprovalTampered:
        return False
    return True


def test_reseal_puts_every_approval_under_the_new_key_and_writes_only_the_macs(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        pending, approved, denied, lapsed = held(), held(), held(), held(ttl=5)
        for approval in (pending, approved, denied, lapsed):
            await hold(store, approval)
        await decide(store, decided(approved))
        await decide(store, decided(denied, approve=False))
        [swept] = await store.expire_approvals(now=NOW + 5, audit=lambda a: event("approval.expired", a))
        assert swept.id == lapsed.id
        before = await every(store)
        assert all(sealed(OLD, a) and not sealed(NEW, a) for a in before.values())
        mark = (await store.audit_records(after=0, limit=10_000))[-1].seq

        seen: list[Approval] = []
        assert await store.reseal_approvals(rotation(seen), now=NOW + 20, audit=ROTATED) == 4
        assert sorted(a.id for a in seen) == sorted(before), "every row, whatever its status, is offered"
        after = await every(store)
        assert all(sealed(NEW, a) and not sealed(OLD, a) for a in after.values())
        for approval_id, old in before.items():
            new = after[approval_id]
            assert new.request_mac != old.request_mac
            assert dataclasses.replace(new, request_mac=old.request_mac, decision_mac=old.decision_mac) == old
        assert after[pending.id].decision_mac == "" and after[lapsed.id].decision_mac == ""
        assert after[lapsed.id].status is ApprovalStatus.EXPIRED

        records = await store.audit_records(after=mark, limit=10_000)
        assert [(r.kind, r.principal) for r in records] == [("approvals.resealed", "operator:cli")]
        assert dict(records[0].detail) == {"why": "test", "resealed": 4, "left": 0}
        assert await chain_ok(store)

    run(kind, tmp_path, body)


def test_apr05_a_row_that_does_not_verify_under_the_old_key_is_left_and_stays_refused(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        good, forged_request, forged_decision = held(), held(), held()
        await hold(store, good)
        # a database writer's rows: a request sealed under a key not the master's, and a decision
        # MAC'd under a key not the master's on a genuine request
        await hold(store, dataclasses.replace(forged_request, request_mac=request_mac(secrets.token_bytes(32), forged_request)))
        await hold(store, forged_decision)
        await decide(store, decided(forged_decision, key=secrets.token_bytes(32)))
        before = await every(store)
        mark = (await store.audit_records(after=0, limit=10_000))[-1].seq

        assert await store.reseal_approvals(rotation(), now=NOW + 20, audit=ROTATED) == 1
        after = await every(store)
        assert after[forged_request.id] == before[forged_request.id]
        assert after[forged_decision.id] == before[forged_decision.id]
        assert not sealed(NEW, after[forged_request.id]) and not sealed(NEW, after[forged_decision.id])
        assert sealed(NEW, after[good.id])
        [record] = await store.audit_records(after=mark, limit=10_000)
        assert record.detail["resealed"] == 1 and record.detail["left"] == 2

    run(kind, tmp_path, body)


def test_a_failing_reseal_writes_nothing(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        first, second = held(), held()
        await hold(store, first)
        await hold(store, second)
        before = await every(store)
        mark = (await store.audit_records(after=0, limit=10_000))[-1].seq
        good = rotation()
        calls = 0

        def failing(approval: Approval) -> tuple[str, str] | None:
            nonlocal calls
            calls += 1
            if calls == 2:  # the first row was already re-sealed in this transaction
                raise RuntimeError("the old key does not open it")
            return good(approval)

        with pytest.raises(RuntimeError):
            await store.reseal_approvals(failing, now=NOW + 20, audit=ROTATED)
        assert calls == 2
        assert await every(store) == before, "a failed reseal must change nothing"
        assert await store.audit_records(after=mark, limit=10_000) == []

    run(kind, tmp_path, body)


def test_reseal_of_no_approvals_is_audited_once(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        assert await store.reseal_approvals(rotation(), now=NOW, audit=ROTATED) == 0
        records = await store.audit_records(after=0, limit=10_000)
        assert [r.kind for r in records][-1] == "approvals.resealed"
        assert records[-1].detail["resealed"] == 0 and records[-1].detail["left"] == 0

    run(kind, tmp_path, body)


def test_a_decision_on_another_replica_is_never_lost_to_a_reseal(kind: str, tmp_path: Path) -> None:
    """A decision racing the reseal on a second store lands before it (and is re-sealed with it) or
    after it: either way its fields are stored, and the reseal's MAC columns never overwrite it."""

    async def body(stores: list[Store]) -> None:
        rotating, deciding = stores
        approvals = [held() for _ in range(20)]
        for approval in approvals:
            await hold(rotating, approval)
        decisions = [decided(a) for a in approvals]

        async def decide_all() -> None:
            for approval in decisions:
                await decide(deciding, approval)

        resealed, _ = await asyncio.gather(rotating.reseal_approvals(rotation(), now=NOW + 20, audit=ROTATED), decide_all())
        assert resealed == 20
        after = await every(rotating)
        for approval in decisions:
            stored = after[approval.id]
            assert stored.status is ApprovalStatus.APPROVED and stored.decided_by == APPROVER
            # the request MAC is the new key's (the reseal saw every row); the decision MAC is the
            # new key's if the decision came first, else the decider's (the old key, as a replica
            # still running on it would write it)
            assert stored.request_mac == request_mac(NEW, stored)
            assert stored.decision_mac in (decision_mac(NEW, stored), decision_mac(OLD, stored))

    run_replicas(kind, tmp_path, 2, body)
