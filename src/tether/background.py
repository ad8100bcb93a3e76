"""Long-running asyncio tasks that components start for themselves: stopping them, and how they
report a run of failures (an outage) without a log line per attempt."""

from __future__ import annotations

import asyncio
import contextlib
import logging

__all__ = ["FailureStreak", "cancel"]


async def cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` and wait until it has finished; being cancelled is its expected end."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class FailureStreak:
    """A loop's consecutive failures: the first is logged, then only the recovery and its count.

    During a store outage a loop polling every fraction of a second would otherwise write a line
    per attempt. ``failed`` also answers how long to wait before the next attempt: ``base``
    doubling up to ``cap``, so a loop that retries at once backs off instead of spinning.
    """

    def __init__(self, log: logging.Logger, failing: str, recovered: str, *, base: float, cap: float) -> None:
        self.log = log
        self.failing = failing
        self.recovered = recovered
        self.base = base
        self.cap = cap
        self.count = 0

    def failed(self, exc: BaseException) -> float:
        self.count += 1
        if self.count == 1:
            self.log.warning("%s: %s (logged once until it recovers)", self.failing, exc)
        return min(self.base * 2.0 ** min(self.count - 1, 30), self.cap)

    def succeeded(self) -> None:
        if self.count:
            self.log.warning("%s recovered after %d failed attempts", self.recovered, self.count)
            self.count = 0
