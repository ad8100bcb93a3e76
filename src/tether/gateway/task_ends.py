"""The gateway's revocation view, telling listeners when a task ends (FED-04: upstream tokens die with it).

The view the gateway already follows (``RevocationFeed.from_store``) holds ended task ids for
its checks; this subclass also calls each listener with the id as the entry is applied, so
what the gateway holds for the task (upstream OAuth tokens) is dropped and revoked at once
rather than when a call next asks. A listener must be quick and must not raise: it runs in
the feed's loop (``UpstreamTokens.task_ended`` only schedules the revocation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tether.clock import Clock
from tether.resource.revocations import FeedSource, RevocationFeed, RevocationLog

__all__ = ["TaskEndFeed", "follow_store"]


class TaskEndFeed(RevocationFeed):
    def _setup(self, source: FeedSource, *, stale_after: float, clock: Clock | None, reconnect_delay: float) -> None:
        super()._setup(source, stale_after=stale_after, clock=clock, reconnect_delay=reconnect_delay)
        self.task_listeners: list[Callable[[str], None]] = []

    def apply(self, entry: dict[str, Any]) -> None:
        super().apply(entry)
        value = entry.get("value")
        if entry.get("kind") != "jti" and isinstance(value, str) and value in self.tasks:
            for listener in self.task_listeners:
                listener(value)

    def ended(self, task: str) -> bool:
        """Whether the feed reports ``task`` over (the view may be stale: calls are refused then anyway)."""
        return task in self.tasks


def follow_store(store: RevocationLog, *, stale_after: float, clock: Clock) -> TaskEndFeed:
    """The gateway's view of ``store``'s revocation log (``RevocationFeed.from_store``), with task-end listeners."""
    feed = TaskEndFeed.from_store(store, stale_after=stale_after, clock=clock)
    assert isinstance(feed, TaskEndFeed)
    return feed
