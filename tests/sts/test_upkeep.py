"""Upkeep jobs (key reload, expiry sweep, purge, checkpoints) outlive any one failure."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tether.store.errors import StoreUnavailable
from tether.sts.app import _every

# runs the same whatever TETHER_TEST_STORE says: the PostgreSQL pass of scripts/test leaves it out
pytestmark = pytest.mark.store_independent


def test_an_upkeep_job_keeps_running_after_it_raises(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    async def job() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise StoreUnavailable("store down")
        if len(calls) == 2:
            raise ValueError("a bug with a secret-looking message sk_live_123")

    async def main() -> None:
        runner = asyncio.create_task(_every(0.001, job))
        while len(calls) < 4:
            await asyncio.sleep(0.005)
        runner.cancel()

    with caplog.at_level(logging.WARNING, logger="tether.sts"):
        asyncio.run(asyncio.wait_for(main(), 10))
    assert len(calls) >= 4
    messages = [r.getMessage() for r in caplog.records]
    assert any("upkeep skipped" in m for m in messages)
    assert any("failed: ValueError" in m for m in messages)
    assert not any("sk_live_123" in m for m in messages)  # only the exception type is logged
