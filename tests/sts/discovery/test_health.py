"""``/healthz`` under a flood: one store check in flight for all callers, its outcome reused ~1 s.

Each check costs a pooled connection and a Redis round trip, and ``/healthz`` is unauthenticated:
fifty at once must not become fifty checks. The real store runs; the test only counts its pings.
"""

from __future__ import annotations

import asyncio
import math
import time
import traceback
from collections.abc import Awaitable, Callable

import httpx
import pytest

from helpers import RunningSts
from tether.store.errors import StoreUnavailable
from tether.sts.health import SharedCheck

FLOOD = 50


def _count_pings(sts: RunningSts, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    store = sts.sts.ctx.store
    real: Callable[[], Awaitable[None]] = store.ping
    calls: list[float] = []

    async def counting() -> None:
        calls.append(time.monotonic())
        await real()

    monkeypatch.setattr(store, "ping", counting)
    return calls


async def _flood(url: str) -> list[int]:
    async with httpx.AsyncClient(timeout=30.0, trust_env=False) as http:
        responses = await asyncio.gather(*(http.get(url + "/healthz") for _ in range(FLOOD)))
    return [r.status_code for r in responses]


def test_fifty_concurrent_health_checks_cost_a_couple_of_store_pings(sts: RunningSts, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_pings(sts, monkeypatch)
    ttl = sts.sts.ctx.health.ttl
    started = time.monotonic()
    statuses = asyncio.run(_flood(sts.url))
    elapsed = time.monotonic() - started
    assert statuses == [200] * FLOOD
    # one check per ttl at most, however slow the machine made the flood
    assert 1 <= len(calls) <= 1 + math.ceil(elapsed / ttl), (len(calls), elapsed)
    assert len(calls) < FLOOD
    # positive control: once the outcome is older than the ttl, the next caller checks the store again
    time.sleep(ttl + 0.2)
    before = len(calls)
    assert httpx.get(sts.url + "/healthz", trust_env=False).status_code == 200
    assert len(calls) == before + 1


def test_a_shared_check_runs_once_for_concurrent_callers_and_reuses_its_outcome() -> None:
    """The rule itself, on a manual clock: concurrent callers share a run; a failure is reused too;
    a caller that goes away does not cancel the run the others wait on."""
    now = [0.0]
    runs: list[int] = []
    outcome: list[BaseException | None] = [None]
    gate = asyncio.Event()

    async def check() -> None:
        runs.append(1)
        await gate.wait()
        if outcome[0] is not None:
            raise outcome[0]

    async def body() -> None:
        shared = SharedCheck(check, ttl=1.0, clock=lambda: now[0])
        callers = [asyncio.create_task(shared()) for _ in range(10)]
        await asyncio.sleep(0)
        callers[0].cancel()
        gate.set()
        results = await asyncio.gather(*callers, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        assert results[1:] == [None] * 9
        assert len(runs) == 1
        await shared()  # reused
        assert len(runs) == 1
        now[0] = 1.5
        outcome[0] = StoreUnavailable("down")
        with pytest.raises(StoreUnavailable):
            await shared()  # a new run: the last outcome is too old
        assert len(runs) == 2
        now[0] = 2.0
        with pytest.raises(StoreUnavailable):
            await shared()  # the failure is reused within the ttl
        assert len(runs) == 2
        now[0] = 2.6
        outcome[0] = None
        await shared()  # and the store is asked again after it
        assert len(runs) == 3

    asyncio.run(body())


def test_a_reused_failure_is_raised_afresh_to_each_caller() -> None:
    """Re-raising one exception object would chain every caller's frame onto its traceback
    for as long as the outcome is reused (memory an unauthenticated /healthz flood drives)."""

    async def failing() -> None:
        raise StoreUnavailable("redis: ConnectionError")

    async def scenario() -> None:
        check = SharedCheck(failing, ttl=60.0)
        seen: list[BaseException] = []
        for _ in range(50):
            try:
                await check()
            except StoreUnavailable as exc:
                seen.append(exc)
        assert len(seen) == 50 and all(str(e) == "redis: ConnectionError" for e in seen)
        depths = [len(traceback.extract_tb(e.__traceback__)) for e in seen[1:]]
        assert max(depths) <= 3, depths

    asyncio.run(scenario())
