"""The runner and its actions against a real store: alerts audited once, tasks suspended, risk shared.

Records are appended with ``Store.append_audit`` exactly as the STS and the gateway write
them; the monitor reads them back through ``Store.audit_records``. SQLite always; the
same replica tests on PostgreSQL + Redis when those servers are here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from monitorkit import AGENT, OTHER, WIKI

from services import open_stores, require_postgres_and_redis
from tether.audit.chain import AuditEvent
from tether.clock import ManualClock
from tether.metrics import REGISTRY
from tether.model import Task, TaskState
from tether.monitor.events import MONITOR_PRINCIPAL
from tether.monitor.runner import Monitor
from tether.monitor.settings import parse_detectors
from tether.store.protocol import Store
from tether.store.records import IssuedToken
from tether.store.sqlite.store import SqliteStore

BURST = {"refusal_burst": {"window": 30, "threshold": 3}}


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro())


def alerts_count(detector: str) -> float:
    return REGISTRY.get_sample_value("tether_alerts_total", {"detector": detector}) or 0.0


def replicas(tmp_path: Path, kind: str, count: int = 2) -> contextlib.AbstractAsyncContextManager[list[Store]]:
    """``count`` independent store handles on ONE chain (a file, or a PostgreSQL schema + Redis prefix)."""
    return open_stores(tmp_path, count, kind=kind)


def monitor(store: Store, clock: ManualClock, tables: dict[str, Any] | None = None, *, risk_ttl: float = 300) -> Monitor:
    return Monitor(store, clock, parse_detectors(tables or BURST), interval=3600, risk_ttl=risk_ttl)


async def refuse(store: Store, clock: ManualClock, n: int, *, task: str | None = "t1", principal: str = AGENT,
                 error: str = "access_denied") -> None:  # fmt: skip
    for _ in range(n):
        event = AuditEvent(kind="token.refused", outcome="refused", principal=principal, task=task, error=error,
                           detail={"reason": "denied by policy", "audience": WIKI})  # fmt: skip
        await store.append_audit(event, now=clock.now())


async def add_task(store: Store, clock: ManualClock, task_id: str = "t1") -> str:
    now = int(clock.now())
    task = Task(id=task_id, agent=AGENT, audiences=(WIKI,), scopes=frozenset({"wiki:read"}), created_at=now,
                expires_at=now + 600, max_depth=3, max_tokens=100)  # fmt: skip
    await store.create_task(task, AuditEvent(kind="task.created", outcome="ok", principal="admin", task=task_id))
    token = IssuedToken(jti=f"jti-{task_id}", kind="session", sub=AGENT, client_id=AGENT, aud="http://sts", scope="wiki:read",
                        jkt="jkt", iat=now, exp=now + 300, depth=0, task_id=task_id, parent_jti=None)  # fmt: skip
    await store.issue_token(token, now=now, spends=[], audit=AuditEvent(kind="token.issued", outcome="ok",
                                                                       principal=AGENT, task=task_id,
                                                                       detail={"aud": "http://sts", "depth": 0}))  # fmt: skip
    return token.jti


async def records(store: Store, kind: str) -> list[Any]:
    return [r for r in await store.audit_records(after=0, limit=10_000) if r.kind == kind]


STORES = ["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.redis])]


@pytest.fixture(params=STORES)
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        require_postgres_and_redis()
    return str(request.param)


def test_history_before_start_is_not_alerted(tmp_path: Path, kind: str) -> None:
    async def main() -> None:
        clock = ManualClock()
        async with replicas(tmp_path, kind, 1) as (store,):
            await refuse(store, clock, 10)
            mon = monitor(store, clock)
            await mon.begin()
            assert mon.cursor == 10
            assert await mon.poll() == 0 and await records(store, "alert.raised") == []
            await refuse(store, clock, 3)
            assert await mon.poll() == 3
            assert len(await records(store, "alert.raised")) == 1

    run(main)


def test_burst_is_one_audited_alert_with_evidence_and_a_metric(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        clock = ManualClock()
        async with replicas(tmp_path, "sqlite", 1) as (store,):
            mon = monitor(store, clock, {"refusal_burst": {"window": 30, "threshold": 3, "actions": ["alert"]}})
            await mon.begin()
            before = alerts_count("refusal_burst")
            await refuse(store, clock, 50)
            await mon.poll()
            (alert,) = await records(store, "alert.raised")
            assert alert.principal == MONITOR_PRINCIPAL and alert.task == "t1" and alert.outcome == "alert"
            detail = alert.detail
            assert detail["detector"] == "refusal_burst" and detail["severity"] == "high" and detail["agent"] == AGENT
            assert detail["evidence"]["count"] == 3 and len(detail["evidence"]["seqs"]) == 3
            assert detail["actions"] == ["alert"] and "risk" not in detail and detail["trigger"] == 3
            assert alerts_count("refusal_burst") == before + 1
            # the monitor reading its own alert adds nothing
            assert await mon.poll() == 1 and len(await records(store, "alert.raised")) == 1

    with caplog.at_level(logging.WARNING, logger="tether.monitor"):
        run(main)
    assert any("alert refusal_burst (high)" in r.getMessage() for r in caplog.records)


def test_suspend_ends_the_task_and_revokes_its_tokens(tmp_path: Path, kind: str) -> None:
    async def main() -> None:
        clock = ManualClock()
        async with replicas(tmp_path, kind, 1) as (store,):
            jti = await add_task(store, clock)
            mon = monitor(store, clock)
            await mon.begin()
            revoked_before = REGISTRY.get_sample_value("tether_revocations_total", {"kind": "task"}) or 0.0
            await refuse(store, clock, 3)
            await mon.poll()
            task = await store.get_task("t1")
            assert task is not None and task.state is TaskState.SUSPENDED
            revoked_after = REGISTRY.get_sample_value("tether_revocations_total", {"kind": "task"}) or 0.0
            assert revoked_after - revoked_before == 1  # the suspension is a task revocation in /metrics
            token = await store.get_token(jti)
            assert token is not None and token.revoked_at is not None
            (suspended,) = await records(store, "task.suspended")
            (alert,) = await records(store, "alert.raised")
            assert suspended.principal == MONITOR_PRINCIPAL and suspended.detail["detector"] == "refusal_burst"
            assert suspended.detail["alert"] == alert.seq
            # refusals against the ended task (another burst, a window later) do not fail the monitor
            clock.advance(31)
            await refuse(store, clock, 3)
            await mon.poll()
            assert len(await records(store, "task.suspended")) == 1
            assert len(await records(store, "alert.raised")) == 2

    run(main)


def test_risk_rises_by_severity_and_expires_after_risk_ttl(tmp_path: Path) -> None:
    async def main() -> None:
        clock = ManualClock()
        async with replicas(tmp_path, "sqlite", 1) as (store,):
            tables = {"refusal_burst": {"window": 30, "threshold": 3, "actions": ["risk"]}}
            mon = monitor(store, clock, tables, risk_ttl=100)
            await mon.begin()
            await refuse(store, clock, 3)
            await mon.poll()
            assert mon.risk(AGENT) == 50 and mon.risk(OTHER) == 0
            # risk only: a risk.raised record carries it (alerts are not listed), no suspension
            assert await records(store, "alert.raised") == [] and await records(store, "task.suspended") == []
            (raised,) = await records(store, "risk.raised")
            assert raised.detail["risk"] == 50 and raised.detail["agent"] == AGENT
            clock.advance(31)
            await refuse(store, clock, 3)
            await mon.poll()
            await mon.poll()  # reading its own record does not count it twice
            assert mon.risk(AGENT) == 100
            clock.advance(70)
            assert mon.risk(AGENT) == 50  # the first addition expired
            clock.advance(31)
            assert mon.risk(AGENT) == 0

    run(main)


def test_replicas_act_once_and_share_the_risk(tmp_path: Path, kind: str) -> None:
    async def main() -> None:
        clock = ManualClock()
        async with replicas(tmp_path, kind, 2) as (a_store, b_store):
            await add_task(a_store, clock)
            a, b = monitor(a_store, clock), monitor(b_store, clock)
            await a.begin()
            await b.begin()
            before = alerts_count("refusal_burst")
            await refuse(b_store, clock, 10)
            await asyncio.gather(a.poll(), b.poll())
            await asyncio.gather(a.poll(), b.poll())  # each reads the other's records
            assert len(await records(a_store, "alert.raised")) == 1
            assert len(await records(a_store, "task.suspended")) == 1
            assert a.findings + b.findings == 1
            assert alerts_count("refusal_burst") == before + 1
            assert a.risk(AGENT) == b.risk(AGENT) == 50

    run(main)


def test_a_restarted_replica_rebuilds_the_risk_board(tmp_path: Path) -> None:
    async def main() -> None:
        clock = ManualClock()
        async with replicas(tmp_path, "sqlite", 2) as (a_store, b_store):
            a = monitor(a_store, clock, risk_ttl=100)
            await a.begin()
            await refuse(a_store, clock, 3)
            await a.poll()
            clock.advance(50)
            later = monitor(b_store, clock, risk_ttl=100)
            await later.begin()
            assert later.risk(AGENT) == 0
            await later.rebuild()
            assert later.risk(AGENT) == 50
            clock.advance(51)
            assert later.risk(AGENT) == 0  # expires with the original record's time
            too_late = monitor(b_store, clock, risk_ttl=100)
            await too_late.begin()
            await too_late.rebuild()
            assert too_late.risk(AGENT) == 0

    run(main)


def test_monitor_records_do_not_feed_the_detectors(tmp_path: Path) -> None:
    async def main() -> None:
        clock = ManualClock()
        async with replicas(tmp_path, "sqlite", 1) as (store,):
            mon = monitor(store, clock, {"refusal_burst": {"window": 30, "threshold": 1, "actions": ["alert"]}})
            await mon.begin()
            for kind in ("alert.raised", "risk.raised", "task.suspended"):
                event = AuditEvent(kind=kind, outcome="refused", principal=MONITOR_PRINCIPAL, task="t1",
                                   error="access_denied", detail={"agent": AGENT})  # fmt: skip
                await store.append_audit(event, now=clock.now())
            await mon.poll()
            assert mon.findings == 0 and len(await records(store, "alert.raised")) == 1  # only the one appended here

    run(main)


def test_the_loop_survives_an_unavailable_store(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        clock = ManualClock()
        store = SqliteStore.open(tmp_path / "tether.db")
        mon = Monitor(store, clock, parse_detectors(BURST), interval=0.05, risk_ttl=300)
        await mon.start()
        store.close()
        for leftover in tmp_path.glob("tether.db*"):
            leftover.unlink()
        (tmp_path / "tether.db").write_bytes(b"not a database" * 512)  # every read now fails
        await asyncio.sleep(0.3)
        assert mon._task is not None and not mon._task.done()
        await mon.stop()
        store.close()

    with caplog.at_level(logging.WARNING, logger="tether.monitor"):
        run(main)
    assert any("audit log not read" in r.getMessage() for r in caplog.records)


ALL_ACTIONS = ["alert", "risk", "suspend"]


def refusal(case: str) -> AuditEvent:
    """A replay audited unattributed (what the credential names is only claimed), as the STS and
    gateway write it; the same replay as written before that (the principal set, still a replay);
    and a refusal by the proven key holder (the control)."""
    if case == "unattributed replay":
        return AuditEvent(kind="token.refused", outcome="refused", error="invalid_dpop_proof",
                          detail={"reason": "proof has already been used", "replay": True, "claimed_task": "t1",
                                  "claimed_principal": AGENT})  # fmt: skip
    replayed = {"replay": True} if case == "attributed replay" else {}
    return AuditEvent(kind="token.refused", outcome="refused", principal=AGENT, task="t1", error="invalid_dpop_proof",
                      detail={"reason": "proof has already been used", **replayed})  # fmt: skip


@pytest.mark.parametrize("case", ["unattributed replay", "attributed replay", "proven refusal"])
def test_DPOP_12_an_unproven_finding_is_alerted_but_never_suspends_or_raises_risk(tmp_path: Path, kind: str,
                                                                                 case: str) -> None:  # fmt: skip
    async def main() -> None:
        clock = ManualClock()
        async with replicas(tmp_path, kind, 2) as (store, other):
            jti = await add_task(store, clock)
            # every action configured on both detectors: the runner decides what an unproven finding may do
            tables = {name: {"threshold": 1, "actions": ALL_ACTIONS} for name in ("dpop_replay", "refusal_burst")}
            mon = monitor(store, clock, tables)
            await mon.begin()
            await store.append_audit(refusal(case), now=clock.now())
            await mon.poll()
            (alert,) = await records(store, "alert.raised")
            task = await store.get_task("t1")
            token = await store.get_token(jti)
            assert task is not None and token is not None
            later = monitor(other, clock, tables)  # a replica that rebuilds its board from the records
            await later.begin()
            await later.rebuild()
            if case == "proven refusal":  # the positive control: every configured action taken
                assert alert.detail["detector"] == "refusal_burst" and alert.detail["actions"] == ALL_ACTIONS
                assert alert.detail["agent"] == AGENT and alert.detail["risk"] == 50 and "unproven" not in alert.detail
                assert task.state is TaskState.SUSPENDED and token.revoked_at is not None
                assert mon.risk(AGENT) == later.risk(AGENT) == 50
                return
            assert alert.detail["detector"] == "dpop_replay" and alert.task == "t1"  # names the task replayed against
            assert alert.detail["actions"] == ["alert"] and alert.detail["withheld"] == ["risk", "suspend"]
            assert alert.detail["unproven"] is True and alert.detail["agent"] is None and "risk" not in alert.detail
            assert alert.detail["evidence"]["claimed_principal"] == AGENT
            assert task.state is TaskState.ACTIVE and token.revoked_at is None
            assert await records(store, "task.suspended") == []
            assert mon.risk(AGENT) == later.risk(AGENT) == 0

    run(main)


def test_DPOP_12_an_unproven_finding_is_alerted_even_when_only_suspend_is_configured(tmp_path: Path) -> None:
    async def main() -> None:
        clock = ManualClock()
        async with replicas(tmp_path, "sqlite", 1) as (store,):
            await add_task(store, clock)
            mon = monitor(store, clock, {"dpop_replay": {"actions": ["suspend"]}})
            await mon.begin()
            await store.append_audit(refusal("unattributed replay"), now=clock.now())
            await mon.poll()
            (alert,) = await records(store, "alert.raised")
            assert alert.detail["actions"] == ["alert"] and alert.detail["withheld"] == ["suspend"]
            task = await store.get_task("t1")
            assert task is not None and task.state is TaskState.ACTIVE

    run(main)
