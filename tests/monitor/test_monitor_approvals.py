"""``approval_denied`` and ``approval_expiry_burst`` (``tether.monitor.approvals``; SECURITY APR-03).

A denied approval is a signal about the agent: alerted, and its risk raised modestly (``low``:
+10). An expiry proves nothing about the agent: a burst of them for the same approver groups is
alerted as a signal about the approvers, never raising a risk or suspending a task, whatever
the configuration says. Pure detector tests over crafted records, then the runner against a
real SQLite store (and PostgreSQL + Redis when present).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from monitorkit import AGENT, OTHER, T0, Log, detector, feed, settings

from services import open_stores, require_postgres_and_redis
from tether.audit.chain import AuditEvent
from tether.clock import ManualClock
from tether.errors import ConfigError
from tether.model import Task, TaskState
from tether.monitor.detectors import build_detectors
from tether.monitor.events import Event
from tether.monitor.risk import RISK_BY_SEVERITY
from tether.monitor.runner import Monitor
from tether.monitor.sample import sample_config
from tether.monitor.settings import parse_detectors
from tether.store.protocol import Store

ALICE = "user:alice@example.com"
PAY = "https://pay.example"


def apr(n: int) -> str:
    return f"apr_{n:022d}"


def requested(log: Log, n: int, *, principal: str = AGENT, task: str = "t1", **kw: Any) -> Event:
    return log.record("approval.requested", principal=principal, task=task, approval=apr(n), groups=["finance"],
                      policies=["pay-needs-finance"], aud=PAY, tool="pay", **kw)  # fmt: skip


def denied(log: Log, n: int, *, task: str = "t1", at: float | None = None) -> Event:
    return log.record("approval.denied", principal=ALICE, task=task, approval=apr(n), groups=["finance"], aud=PAY,
                      tool="pay", at=at)  # fmt: skip


def expired(log: Log, n: int, *, groups: list[str] | None = None, task: str = "t1", at: float | None = None) -> Event:
    return log.record("approval.expired", principal=AGENT, task=task, approval=apr(n),
                      groups=["finance"] if groups is None else groups, aud=PAY, at=at)  # fmt: skip


# -- defaults and configuration -----------------------------------------------------------------
def test_defaults() -> None:
    deny = settings("approval_denied")
    assert deny.enabled and deny.severity == "low" and deny.actions == ("alert", "risk")
    assert deny.params == {"threshold": 1, "window": 3600} and RISK_BY_SEVERITY["low"] == 10
    burst = settings("approval_expiry_burst")
    assert burst.enabled and burst.severity == "medium" and burst.actions == ("alert",)
    assert burst.params == {"threshold": 5, "window": 3600}
    assert {d.name for d in build_detectors(parse_detectors({}))} >= {"approval_denied", "approval_expiry_burst"}
    assert "[monitor.detectors.approval_expiry_burst]" in sample_config()


@pytest.mark.parametrize("actions", [["risk"], ["alert", "suspend"], ["alert", "risk", "webhook"]])
def test_apr03_expiry_burst_refuses_actions_on_the_agent(actions: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_detectors({"approval_expiry_burst": {"actions": actions}})
    assert caught.value.key == "monitor.detectors.approval_expiry_burst.actions"
    assert "proves nothing" in str(caught.value)


def test_expiry_burst_alert_and_webhook_allowed_and_denied_may_suspend() -> None:
    assert settings("approval_expiry_burst", actions=["alert", "webhook"]).actions == ("alert", "webhook")
    assert settings("approval_denied", actions=["alert", "suspend"]).actions == ("alert", "suspend")


# -- approval_denied ----------------------------------------------------------------------------
def test_denial_is_attributed_to_the_requesting_agent() -> None:
    det = detector("approval_denied")
    log = Log()
    assert feed(det, [requested(log, 1)]) == []
    (finding,) = feed(det, [denied(log, 1)])
    assert finding.detector == "approval_denied" and finding.severity == "low"
    assert finding.agent == AGENT and finding.subject == AGENT and finding.task == "t1" and finding.proven
    assert finding.evidence["decided_by"] == ALICE and finding.evidence["approval"] == apr(1)
    assert finding.evidence["groups"] == ["finance"] and finding.evidence["tool"] == "pay"
    assert "denied" in finding.reason and AGENT in finding.reason


def test_denial_never_attributed_to_the_approver() -> None:
    det = detector("approval_denied")
    log = Log()
    (finding,) = feed(det, [requested(log, 1), denied(log, 1)])
    assert finding.agent != ALICE
    # other agents' requests are theirs
    (other,) = feed(det, [requested(log, 2, principal=OTHER, task="t2"), denied(log, 2, task="t2")])
    assert other.agent == OTHER and other.task == "t2"


def test_denial_of_an_unseen_request_is_unproven_and_names_no_agent() -> None:
    det = detector("approval_denied")
    log = Log()
    (finding,) = feed(det, [denied(log, 7)])
    assert finding.agent is None and not finding.proven and finding.subject == "task:t1"
    assert "was not seen" in finding.reason


def test_denial_of_an_unproven_request_record_names_no_agent() -> None:
    det = detector("approval_denied")
    log = Log()
    (finding,) = feed(det, [requested(log, 1, claimed_principal=OTHER), denied(log, 1)])
    assert finding.agent is None and not finding.proven


def test_denial_threshold_within_window() -> None:
    det = detector("approval_denied", threshold=2, window=100)
    log = Log()
    events = [requested(log, 1), requested(log, 2), requested(log, 3)]
    assert feed(det, events) == []
    assert feed(det, [denied(log, 1, at=T0)]) == []
    assert feed(det, [denied(log, 2, at=T0 + 100)]) == []  # exactly a window apart: two windows
    (finding,) = feed(det, [denied(log, 3, at=T0 + 150)])
    assert finding.evidence["count"] == 2 and len(finding.evidence["seqs"]) == 2


def test_denial_detector_ignores_other_records() -> None:
    det = detector("approval_denied")
    log = Log()
    others = [log.issued(), log.refused(), expired(log, 1), log.record("approval.approved", principal=ALICE,
                                                                          approval=apr(1))]  # fmt: skip
    assert feed(det, others) == []


# -- approval_expiry_burst ----------------------------------------------------------------------
def test_apr03_expiry_burst_is_about_the_approvers_never_the_agent() -> None:
    det = detector("approval_expiry_burst")
    log = Log()
    assert feed(det, [expired(log, i, at=T0 + i) for i in range(4)]) == []
    (finding,) = feed(det, [expired(log, 4, task="t2", at=T0 + 4)])
    assert finding.subject == "approvers:finance" and finding.severity == "medium"
    assert finding.agent is None and finding.task is None and finding.proven is False
    assert finding.evidence["count"] == 5 and finding.evidence["tasks"] == ["t1", "t2"]
    assert finding.evidence["approvals"] == [apr(i) for i in range(5)]
    assert "expired unanswered" in finding.reason and "finance" in finding.reason


def test_expiry_burst_once_per_window_and_per_group_set() -> None:
    det = detector("approval_expiry_burst", threshold=2, window=60)
    log = Log()
    assert len(feed(det, [expired(log, 1, at=T0), expired(log, 2, at=T0 + 1)])) == 1
    assert feed(det, [expired(log, 3, at=T0 + 2)]) == []  # quiet for the window
    # another set of groups is another subject
    (legal,) = feed(det, [expired(log, 4, groups=["legal"], at=T0 + 3), expired(log, 5, groups=["legal"], at=T0 + 4)])
    assert legal.subject == "approvers:legal"
    assert len(feed(det, [expired(log, 6, at=T0 + 70), expired(log, 7, at=T0 + 71)])) == 1  # a window later


def test_expiry_burst_spread_out_is_quiet() -> None:
    det = detector("approval_expiry_burst", threshold=3, window=60)
    log = Log()
    assert feed(det, [expired(log, i, at=T0 + 60 * i) for i in range(10)]) == []


def test_expiry_burst_malformed_groups_bounded() -> None:
    det = detector("approval_expiry_burst", threshold=1)
    log = Log()
    (finding,) = feed(det, [expired(log, 1, groups=[7, "", "x" * 500, "finance"])])  # type: ignore[list-item]
    assert finding.subject == "approvers:" + ",".join(sorted(["finance", "x" * 64]))


# -- the runner, on a real store -------------------------------------------------------------------
STORES = ["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.redis])]


@pytest.fixture(params=STORES)
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        require_postgres_and_redis()
    return str(request.param)


async def append(store: Store, clock: ManualClock, kind_: str, principal: str, task: str, **detail: Any) -> None:
    event = AuditEvent(kind=kind_, outcome="ok", principal=principal, task=task, detail=detail)
    await store.append_audit(event, now=clock.now())


async def alerts(store: Store) -> list[Any]:
    return [r for r in await store.audit_records(after=0, limit=10_000) if r.kind in ("alert.raised", "risk.raised")]


async def add_task(store: Store, clock: ManualClock, task_id: str) -> None:
    now = int(clock.now())
    task = Task(id=task_id, agent=AGENT, audiences=(PAY,), scopes=frozenset({"pay:write"}), created_at=now,
                expires_at=now + 3000, max_depth=3, max_tokens=100)  # fmt: skip
    await store.create_task(task, AuditEvent(kind="task.created", outcome="ok", principal="admin", task=task_id))


def test_apr03_denial_alerts_and_raises_the_agents_risk_modestly(tmp_path: Path, kind: str) -> None:
    async def main() -> None:
        clock = ManualClock()
        async with open_stores(tmp_path, 1, kind=kind) as (store,):
            mon = Monitor(store, clock, parse_detectors({}), interval=3600, risk_ttl=300)
            await mon.begin()
            await append(store, clock, "approval.requested", AGENT, "t1", approval=apr(1), groups=["finance"])
            await append(store, clock, "approval.denied", ALICE, "t1", approval=apr(1), groups=["finance"])
            await mon.poll()
            (alert,) = await alerts(store)
            assert alert.kind == "alert.raised" and alert.detail["detector"] == "approval_denied"
            assert alert.detail["agent"] == AGENT and alert.detail["risk"] == 10 and "unproven" not in alert.detail
            assert mon.risk(AGENT) == 10 and mon.risk(ALICE) == 0
            clock.advance(301)
            assert mon.risk(AGENT) == 0  # it decays with risk_ttl

    asyncio.run(main())


def test_apr03_expiry_burst_alerts_without_risk_or_suspension(tmp_path: Path, kind: str) -> None:
    async def main() -> None:
        clock = ManualClock()
        async with open_stores(tmp_path, 1, kind=kind) as (store,):
            await add_task(store, clock, "t1")
            tables = {"approval_expiry_burst": {"threshold": 3}}
            mon = Monitor(store, clock, parse_detectors(tables), interval=3600, risk_ttl=300)
            await mon.begin()
            for n in range(3):
                await append(store, clock, "approval.requested", AGENT, "t1", approval=apr(n), groups=["finance"])
                await append(store, clock, "approval.expired", AGENT, "t1", approval=apr(n), groups=["finance"])
                clock.advance(1)
            await mon.poll()
            (alert,) = await alerts(store)
            assert alert.detail["detector"] == "approval_expiry_burst" and alert.detail["agent"] is None
            assert alert.task is None and "risk" not in alert.detail and alert.detail["actions"] == ["alert"]
            assert mon.risk(AGENT) == 0
            task = await store.get_task("t1")
            assert task is not None and task.state is TaskState.ACTIVE
            assert [r for r in await store.audit_records(after=0, limit=10_000) if r.kind == "task.suspended"] == []

    asyncio.run(main())


def test_unseen_denial_is_alerted_but_raises_no_risk(tmp_path: Path) -> None:
    async def main() -> None:
        clock = ManualClock()
        async with open_stores(tmp_path, 1, kind="sqlite") as (store,):
            mon = Monitor(store, clock, parse_detectors({"approval_denied": {"actions": ["alert", "risk", "suspend"]}}),
                          interval=3600, risk_ttl=300)  # fmt: skip
            await add_task(store, clock, "t9")
            await mon.begin()
            await append(store, clock, "approval.denied", ALICE, "t9", approval=apr(9), groups=["finance"])
            await mon.poll()
            (alert,) = await alerts(store)
            assert alert.detail["unproven"] is True and set(alert.detail["withheld"]) == {"risk", "suspend"}
            assert mon.risk(AGENT) == 0 and mon.risk(ALICE) == 0
            task = await store.get_task("t9")
            assert task is not None and task.state is TaskState.ACTIVE

    asyncio.run(main())
