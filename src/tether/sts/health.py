"""``/healthz``'s check of the store, and what it says about federation peers' feeds.

The store check is shared: one in flight for all callers, its outcome reused ~1 s.

``/healthz`` is unauthenticated, and each check costs a pooled database connection and a Redis
round trip: a flood of health checks would compete with real traffic for both. Concurrent callers
wait on the one check already running, and for ``ttl`` seconds after it ends its outcome (pass or
the error) is the answer, so the store sees at most one check per ``ttl`` however many callers
come. A load balancer learns of a change at most ``ttl`` later.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from tether.federation.freshness import PeerFeeds

__all__ = ["SharedCheck", "federation_health"]


class SharedCheck:
    def __init__(
        self, check: Callable[[], Awaitable[None]], *, ttl: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._check = check
        self.ttl = ttl
        self._clock = clock
        self._running: asyncio.Task[None] | None = None
        self._ended_at: float | None = None
        self._error: BaseException | None = None

    async def __call__(self) -> None:
        """Pass, or raise what the (shared or recent) check raised."""
        if self._ended_at is not None and self._clock() - self._ended_at < self.ttl:
            if self._error is not None:
                # a fresh exception per caller: re-raising one object would chain every
                # caller's frame onto its traceback for as long as the outcome is reused
                raise copy.copy(self._error).with_traceback(None) from None
            return
        if self._running is None:
            self._running = asyncio.create_task(self._run(), name="tether-health-check")
        # shielded: a caller that goes away does not cancel the check the others wait on
        await asyncio.shield(self._running)

    async def _run(self) -> None:
        try:
            await self._check()
        except Exception as exc:
            self._error = exc
            raise
        else:
            self._error = None
        finally:
            self._ended_at = self._clock()
            self._running = None


@runtime_checkable
class FeedStates(Protocol):
    """Followers that can say each peer's state (``federation.follower.FederationFeeds``)."""

    def states(self, now: float) -> Mapping[str, bool]: ...


def federation_health(feeds: PeerFeeds, now: float) -> dict[str, Any]:
    """``{"federation": {"fresh": n, "stale": m}}`` when peers are followed, else nothing.

    Counts only: ``/healthz`` is unauthenticated, so it names no peer (which trust domains this
    one federates with is the operator's business; ``/metrics`` has ``tether_federation_feed_fresh``
    per peer). A stale peer does not fail the check: this STS still serves its own domain, and
    refuses only that peer's agents.
    """
    if not isinstance(feeds, FeedStates):
        return {}
    states = feeds.states(now)
    if not states:
        return {}
    fresh = sum(1 for state in states.values() if state)
    return {"federation": {"fresh": fresh, "stale": len(states) - fresh}}
