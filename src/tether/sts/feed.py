"""The revocation feed's shared poll: one task per STS process reads the store and fans out.

A connected subscriber of ``/revocations/stream`` costs no store reads of its own: the hub
reads the feed when the store announces a revocation or on its tick, and puts each entry
(encoded once) and each due heartbeat into every subscriber's bounded queue; one that falls a
whole queue behind is cut and resumes with ``Last-Event-ID``. Heartbeats carry the cursor, the
server time and the policy version, and follow only a successful read, so hearing them means
the view is current. Streams are capped globally and per principal; only registered workloads
may follow (``may_follow``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

from tether.background import FailureStreak, cancel
from tether.clock import Clock
from tether.config import Config
from tether.errors import TemporarilyUnavailable, TooManyRequests
from tether.metrics import FEED_SUBSCRIBERS
from tether.store.errors import StoreError
from tether.store.protocol import Store
from tether.store.records import Revocation

__all__ = [
    "MAX_HEARTBEAT_SECONDS",
    "MIN_HEARTBEAT_SECONDS",
    "PAGE",
    "Beat",
    "FeedHub",
    "FeedSettings",
    "Subscription",
    "clamp_heartbeat",
]

log = logging.getLogger("tether.sts")

PAGE = 1000
MIN_HEARTBEAT_SECONDS = 0.5
MAX_HEARTBEAT_SECONDS = 2.0
#: what a refused subscriber is told to wait (``Retry-After``)
RETRY_AFTER = 5


@dataclass(frozen=True)
class FeedSettings:
    subscribers: frozenset[str]
    max_streams: int = 1000
    max_per_caller: int = 20
    stream_seconds: float = 300.0
    #: events a subscriber may fall behind (items are shared between queues: a slot costs a pointer)
    queue: int = 4096
    tick: float = 0.25

    @classmethod
    def from_config(cls, config: Config) -> FeedSettings:
        section = config.revocations
        allowed = {*config.admin.principals, *section.subscribers}
        allowed.update(p for resource in config.resources for p in resource.principals)
        return cls(
            subscribers=frozenset(allowed),
            max_streams=section.max_streams,
            max_per_caller=section.max_streams_per_caller,
            stream_seconds=float(section.stream_seconds),
        )

    def may_follow(self, principal: str) -> bool:
        """An admin, a registered resource principal or a listed subscriber: no one else learns what was revoked."""
        return principal in self.subscribers


def clamp_heartbeat(seconds: float) -> float:
    """Bound a requested heartbeat: a tiny one must not make the STS write several times a second."""
    if math.isnan(seconds):
        raise ValueError("not a number")
    return min(MAX_HEARTBEAT_SECONDS, max(MIN_HEARTBEAT_SECONDS, seconds))


@dataclass(frozen=True)
class Beat:
    cursor: int
    time: float
    policy_version: str | None

    def encode(self, cursor: int) -> bytes:
        body = {"cursor": max(cursor, self.cursor), "time": self.time, "policy_version": self.policy_version}
        return f"event: heartbeat\ndata: {json.dumps(body)}\n\n".encode()


#: a feed entry (its sequence number and its encoded event), a heartbeat, or the end of the stream
Item = tuple[int, bytes] | Beat | None


def encode_entry(entry: Revocation) -> bytes:
    return f"id: {entry.seq}\nevent: revocation\ndata: {json.dumps(entry.as_json())}\n\n".encode()


class Subscription:
    """One open stream: its principal, its heartbeat, its deadline and its bounded queue."""

    def __init__(self, principal: str, *, heartbeat: float, queue: int, until: float, now: float) -> None:
        self.principal = principal
        self.heartbeat = heartbeat
        self.until = until
        self.last_beat = now
        self.cut = False
        self._queue: asyncio.Queue[Item] = asyncio.Queue(queue)

    def offer(self, item: Item) -> bool:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            return False
        return True

    def end(self) -> None:
        """Drop everything queued and wake the reader with the end marker."""
        self.cut = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    def queued(self) -> int:
        return self._queue.qsize()

    async def next(self) -> Item:
        """The next item, or ``None`` once the stream is cut or its lifetime is over."""
        remaining = self.until - asyncio.get_running_loop().time()
        if remaining <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), remaining)
        except TimeoutError:
            return None


class FeedHub:
    def __init__(self, store: Store, clock: Clock, settings: FeedSettings, *, policy_version: Callable[[], str | None]) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings
        self.cursor = 0
        self.policy_version: str | None = None
        self._policy_version = policy_version
        self._subs: set[Subscription] = set()
        self._per_caller: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        """Read up to the head of the feed (store errors propagate: the STS does not start), then poll."""
        self.cursor = await self._backlog_end(0)
        self.policy_version = self._policy_version()
        self._task = asyncio.create_task(self._run(), name="tether-feed-hub")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        await cancel(task)

    # -- subscribers ----------------------------------------------------------------
    def subscribe(self, principal: str, *, heartbeat: float) -> Subscription:
        if self._task is None or self._task.done():
            raise TemporarilyUnavailable("the revocation feed is not running", debug="feed hub stopped")
        if len(self._subs) >= self.settings.max_streams:
            raise TooManyRequests("too many revocation streams are open; retry later", retry_after=RETRY_AFTER,
                                  debug=f"global cap {self.settings.max_streams}")  # fmt: skip
        if self._per_caller[principal] >= self.settings.max_per_caller:
            raise TooManyRequests("too many revocation streams for this caller", retry_after=RETRY_AFTER,
                                  debug=f"per-caller cap {self.settings.max_per_caller} for `{principal}`")  # fmt: skip
        now = asyncio.get_running_loop().time()
        sub = Subscription(principal, heartbeat=heartbeat, queue=self.settings.queue, until=now + self.settings.stream_seconds,
                           now=now)  # fmt: skip
        self._subs.add(sub)
        self._per_caller[principal] += 1
        FEED_SUBSCRIBERS.inc()
        return sub

    def leave(self, sub: Subscription) -> None:
        """Free the stream's slot (idempotent)."""
        if sub in self._subs:
            self._subs.discard(sub)
            self._per_caller[sub.principal] -= 1
            if self._per_caller[sub.principal] <= 0:
                del self._per_caller[sub.principal]
            FEED_SUBSCRIBERS.dec()

    async def stream(self, sub: Subscription, cursor: int) -> AsyncGenerator[bytes, None]:
        """SSE for one subscriber: its backlog after ``cursor`` (its own read, once), a heartbeat, then the hub's items.

        The subscriber was registered before the backlog is read, so an entry committed
        after that read is fanned out to it; one the hub already sent is dropped by ``seq``.
        """
        try:
            async for entry in self.entries_after(cursor):
                cursor = entry.seq
                yield encode_entry(entry)
            yield Beat(cursor, self.clock.now(), self._policy_version()).encode(cursor)
            while (item := await sub.next()) is not None:
                if isinstance(item, Beat):
                    yield item.encode(cursor)
                elif item[0] > cursor:
                    cursor = item[0]
                    yield item[1]
        except StoreError as exc:
            log.warning("revocation stream ended: %s", exc)

    async def entries_after(self, cursor: int) -> AsyncIterator[Revocation]:
        """Every live entry after ``cursor``, page by page."""
        while True:
            page = await self.store.revocations_after(cursor, now=self.clock.now(), limit=PAGE)
            for entry in page:
                cursor = entry.seq
                yield entry
            if len(page) < PAGE:
                return

    # -- the shared poll --------------------------------------------------------------
    async def _backlog_end(self, cursor: int) -> int:
        async for entry in self.entries_after(cursor):
            cursor = entry.seq
        return cursor

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        tick = self.settings.tick
        next_tick = loop.time()
        streak = FailureStreak(log, "revocation feed poll failed", "revocation feed poll", base=tick, cap=max(tick, 1.0))
        try:
            while True:
                generation = self.store.revocation_generation()
                try:
                    page = await self.store.revocations_after(self.cursor, now=self.clock.now(), limit=PAGE)
                except StoreError as exc:  # no heartbeat without a read: subscribers go stale and fail closed
                    await asyncio.sleep(streak.failed(exc))  # backs off to 1 s; logged once per outage
                    continue
                streak.succeeded()
                for entry in page:
                    self.cursor = entry.seq
                    self._fan_out((entry.seq, encode_entry(entry)))
                if len(page) == PAGE:
                    await asyncio.sleep(0)  # let subscribers drain between pages of a large revocation
                    continue
                now = loop.time()
                if now >= next_tick:
                    next_tick = now + tick
                    if self._subs:
                        self._beat(now)
                await self.store.wait_for_revocations(since=generation, timeout=max(0.0, next_tick - loop.time()))
        finally:
            for sub in list(self._subs):
                sub.end()

    def _fan_out(self, item: Item, subs: list[Subscription] | None = None) -> None:
        for sub in list(self._subs) if subs is None else subs:
            if not sub.cut and not sub.offer(item):
                log.warning("revocation stream of `%s` cut: %d events behind", sub.principal, sub.queued())
                sub.end()

    def _beat(self, now: float) -> None:
        """A heartbeat to every subscriber whose interval is due (to within half a tick)."""
        self.policy_version = self._policy_version()
        due = [s for s in self._subs if not s.cut and now - s.last_beat >= s.heartbeat - self.settings.tick / 2]
        for sub in due:
            sub.last_beat = now
        self._fan_out(Beat(self.cursor, self.clock.now(), self.policy_version), due)
