"""Issue 12, finding 14: the detectors remember across a restart, and the replay never acts.

A restarted monitor is a new runner on a new store handle over the same chain. It
rebuilds its detectors from a bounded window of the audit log (``Monitor.rebuild``).
Detectors that need history then fire on the first record after the restart exactly as an
uninterrupted monitor does on the same log: ``new_audience`` after its learning period,
``exchange_rate_spike`` after warm-up, ``deep_delegation`` against the agent's deepest
chain. Without the replay they would be back in learning. Findings the replay re-derives
are dropped: no second alert, suspension, webhook or risk raise. The window is bounded in
records and in time.

Record times are explicit (a fixed clock an hour back, aligned to the detectors'
windows), so both runs see identical records. Redis keeps the claims in real time, which
stays ahead of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from monitorkit import AGENT, DOCS, OTHER, SVC_B, WIKI
from receiver import Receiver
from test_monitor_runner import STORES, add_task, records, replicas, run
from test_monitor_webhook import until

from services import require_postgres_and_redis
from tether.audit.chain import AuditEvent
from tether.model import TaskState
from tether.monitor.runner import Monitor
from tether.monitor.settings import parse_detectors
from tether.monitor.webhook import WebhookSender
from tether.store.protocol import Store

BASE = float(int(time.time()) // 3600 * 3600 - 3600)  # an hour boundary, at least an hour ago


class At:
    """A clock that reads what the test sets (the monitor's ``now``)."""

    def __init__(self, t: float = BASE) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


@pytest.fixture(params=STORES)
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        require_postgres_and_redis()
    return str(request.param)


async def issue(store: Store, at: float, *, aud: str = WIKI, depth: int = 0, agent: str = AGENT) -> None:
    detail = {"aud": aud, "depth": depth, "act": [SVC_B] * depth, "agent": agent, "token_kind": "hop"}
    await store.append_audit(AuditEvent(kind="token.issued", outcome="ok", principal=agent, task="t1",
                                        jti=f"j{at}", detail=detail), now=at)  # fmt: skip


async def refuse(store: Store, at: float, *, agent: str = AGENT) -> None:
    await store.append_audit(AuditEvent(kind="token.refused", outcome="refused", principal=agent, task="t1",
                                        error="access_denied", detail={"reason": "denied"}), now=at)  # fmt: skip


Steps = Callable[[Store], Awaitable[None]]


async def new_audience_history(store: Store) -> None:
    for i in range(6):
        await issue(store, BASE + i)


async def new_audience_trigger(store: Store) -> None:
    await issue(store, BASE + 100, aud=DOCS)


async def spike_history(store: Store) -> None:
    for window in range(4):  # four active windows of three tokens: the warm-up, and a baseline of 3
        for i in range(3):
            await issue(store, BASE + 10 * window + i)


async def spike_trigger(store: Store) -> None:
    for i in range(12):
        await issue(store, BASE + 60 + i * 0.1)


async def delegation_history(store: Store) -> None:
    for i in range(6):
        await issue(store, BASE + i, depth=i % 2)


async def delegation_trigger(store: Store) -> None:
    await issue(store, BASE + 100, depth=3)


SCENARIOS: dict[str, tuple[dict[str, Any], Steps, Steps]] = {
    "new_audience": ({"learn": 5}, new_audience_history, new_audience_trigger),
    "exchange_rate_spike": ({"window": 10, "warmup": 3, "min_count": 5, "factor": 3, "actions": ["alert"]},
                            spike_history, spike_trigger),
    "deep_delegation": ({"learn": 5, "margin": 1, "actions": ["alert"]}, delegation_history, delegation_trigger),
}  # fmt: skip


def monitor(store: Store, clock: At, tables: dict[str, Any], **kw: Any) -> Monitor:
    return Monitor(store, clock, parse_detectors(tables), interval=3600, risk_ttl=300, **kw)


async def alert_details(store: Store) -> list[tuple[str | None, dict[str, Any]]]:
    return [(a.task, dict(a.detail)) for a in await records(store, "alert.raised")]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_a_detector_with_history_fires_after_a_restart_as_without_one(tmp_path: Path, kind: str, name: str) -> None:
    table, history, trigger = SCENARIOS[name]
    tables = {name: table}

    async def uninterrupted() -> list[tuple[str | None, dict[str, Any]]]:
        async with replicas(tmp_path / "u", kind, 1) as (store,):
            mon = monitor(store, At(), tables)
            await mon.begin()
            await history(store)
            await mon.poll()
            await trigger(store)
            await mon.poll()
            return await alert_details(store)

    async def restarted() -> tuple[list[tuple[str | None, dict[str, Any]]], Monitor]:
        async with replicas(tmp_path / "r", kind, 2) as (store, fresh):
            clock = At()
            before = monitor(store, clock, tables)
            await before.begin()
            await history(store)
            await before.poll()  # the monitor that ran before the deploy saw the history
            clock.t = BASE + 90
            after = monitor(fresh, clock, tables)  # a new process: new runner, new store handle
            await after.begin()
            await after.rebuild()
            await trigger(store)
            await after.poll()
            return await alert_details(store), after

    async def main() -> None:
        expected = await uninterrupted()
        assert len(expected) == 1 and expected[0][1]["detector"] == name
        found, after = await restarted()
        assert found == expected
        assert after.findings == 1 and after.replayed == 0

    run(main)


@pytest.mark.parametrize(("bound", "value"), [("history_records", 3), ("history_seconds", 60)])
def test_the_replayed_window_is_bounded_in_records_and_in_time(tmp_path: Path, bound: str, value: int) -> None:
    """Outside the window the history is not replayed: new_audience is back in learning (the positive
    control is the test above, with the default bounds)."""

    async def main() -> None:
        async with replicas(tmp_path, "sqlite", 1) as (store,):
            await new_audience_history(store)  # six records at BASE..BASE+5
            clock = At(BASE + 100)  # the history is 95-100 s old
            after = monitor(store, clock, {"new_audience": {"learn": 5}}, **{bound: value})
            await after.begin()
            await after.rebuild()
            await new_audience_trigger(store)
            await after.poll()
            assert await records(store, "alert.raised") == [] and after.findings == 0

    run(main)


def test_replaying_the_window_never_acts_twice(tmp_path: Path, kind: str) -> None:
    """Before the restart a burst was alerted, the task suspended, the risk raised and webhooks sent,
    and a new audience alerted. The restarted monitor re-derives both findings and drops them."""
    tables = {"refusal_burst": {"window": 30, "threshold": 3, "actions": ["alert", "risk", "suspend", "webhook"]},
              "new_audience": {"learn": 3, "actions": ["alert", "webhook"]}}  # fmt: skip

    async def main(receiver: Receiver) -> None:
        async with replicas(tmp_path, kind, 2) as (store, fresh):
            clock = At()
            await add_task(store, clock)  # type: ignore[arg-type]  # At has the `now` add_task reads
            sender = WebhookSender(receiver.url, timeout=5, retries=0)
            first = monitor(store, clock, tables, webhook=sender)
            await first.begin()
            sender.start()
            for i in range(4):
                await issue(store, BASE + i)
            await issue(store, BASE + 5, aud=DOCS)
            for i in range(3):
                await refuse(store, BASE + 10 + i)
            await first.poll()
            await until(lambda: len(receiver.attempts) == 2, "the two webhooks")
            await sender.stop()
            before = {k: await records(store, k) for k in ("alert.raised", "risk.raised", "task.suspended")}
            assert [len(v) for v in before.values()] == [2, 0, 1] and first.risk(AGENT) == 50
            # the restart, within the burst's window and the risk's lifetime
            clock.t = BASE + 20
            sender = WebhookSender(receiver.url, timeout=5, retries=0)
            after = monitor(fresh, clock, tables, webhook=sender)
            await after.begin()
            await after.rebuild()
            assert after.replayed == 2 and after.findings == 0
            assert after.risk(AGENT) == 50  # rebuilt from the alert record, once
            # the burst goes on within its window: as without a restart, it is the same finding
            await refuse(store, BASE + 21)
            # a new finding after the restart is acted on, and is the only webhook the new process sends
            for i in range(3):
                await issue(store, BASE + 22 + i, agent=OTHER)
            await issue(store, BASE + 26, aud=DOCS, agent=OTHER)
            sender.start()
            try:
                await after.poll()
                await until(lambda: len(receiver.attempts) == 3, "the new finding's webhook")
            finally:
                await sender.stop()
            assert receiver.attempts[2]["agent"] == OTHER and receiver.attempts[2]["detector"] == "new_audience"
            assert after.findings == 1 and after.risk(AGENT) == 50
            now = {k: await records(store, k) for k in before}
            assert now["alert.raised"][:2] == before["alert.raised"] and len(now["alert.raised"]) == 3
            assert now["task.suspended"] == before["task.suspended"] and now["risk.raised"] == []
            task = await store.get_task("t1")
            assert task is not None and task.state is TaskState.SUSPENDED

    with Receiver() as receiver:
        asyncio.run(main(receiver))
