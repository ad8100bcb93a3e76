"""The STS's shared feed poll (``tether.sts.feed.FeedHub``) on a real store (issue 12, finding 4).

One task per STS process reads the feed — when the store announces a revocation and on
its tick — and fans entries and heartbeats out to every subscriber's bounded queue. The
store here is the real one (SQLite, or PostgreSQL + Redis with ``TETHER_TEST_STORE=postgres``),
seen through a proxy that counts its feed reads; nothing else stands in for anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from services import ended_task, open_stores
from tether.clock import SystemClock
from tether.store.protocol import Store
from tether.store.records import Revocation
from tether.sts.feed import Beat, FeedHub, FeedSettings, Subscription

SUBSCRIBERS = 30


class CountingStore:
    """The real store, counting the feed reads made through it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reads = 0

    async def revocations_after(self, seq: int, *, now: float, limit: int) -> list[Revocation]:
        self.reads += 1
        return await self.store.revocations_after(seq, now=now, limit=limit)

    def revocation_generation(self) -> int:
        return self.store.revocation_generation()

    async def wait_for_revocations(self, *, since: int, timeout: float) -> bool:
        return await self.store.wait_for_revocations(since=since, timeout=timeout)


def run(tmp_path: Path, body: Callable[[Store], Awaitable[None]]) -> None:
    """``body`` against a fresh store of the kind the suite runs on."""

    async def main() -> None:
        async with open_stores(tmp_path) as (store,):
            await body(store)

    asyncio.run(main())


def hub_for(store: Any, **settings: Any) -> FeedHub:
    return FeedHub(store, SystemClock(), FeedSettings(frozenset(), **settings), policy_version=lambda: "v1")


async def drain(sub: Subscription) -> list[Any]:
    items = []
    while (item := await sub.next()) is not None:
        items.append(item)
    return items


def test_one_store_read_per_tick_serves_every_subscriber(tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        counting = CountingStore(store)
        hub = hub_for(counting, max_per_caller=SUBSCRIBERS, stream_seconds=3.0)
        await hub.start()
        loop = asyncio.get_running_loop()
        try:
            subs = [hub.subscribe("spiffe://t/rs", heartbeat=0.5) for _ in range(SUBSCRIBERS)]
            reads_before, started = counting.reads, loop.time()
            readers = asyncio.gather(*(drain(sub) for sub in subs))
            await asyncio.sleep(1.0)
            ended = await ended_task(store)  # one revocation while they all listen
            got = await readers  # each stream ends after its 3 s
            elapsed, reads = loop.time() - started, counting.reads - reads_before
        finally:
            await hub.aclose()
        beats = [sum(isinstance(item, Beat) for item in items) for items in got]
        entries = [[json.loads(item[1].split(b"data: ", 1)[1]) for item in items if isinstance(item, tuple)] for items in got]
        # every subscriber got the revocation, once, and heartbeats all along
        assert all([e["value"] for e in mine] == [ended] for mine in entries), entries[0]
        assert min(beats) >= 2, beats
        # the store was read once per tick (and once more when the revocation woke the hub),
        # not once per subscriber: 30 pollers would have read at least once per heartbeat each
        assert reads <= elapsed / hub.settings.tick + 3, (reads, elapsed)
        assert reads * 5 < sum(beats), (reads, sum(beats))

    run(tmp_path, body)


def test_a_subscriber_that_falls_a_queue_behind_is_cut_and_resumes_from_its_cursor(tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        hub = hub_for(store, queue=8, stream_seconds=30.0)
        await hub.start()
        try:
            slow, keeping_up = hub.subscribe("spiffe://t/slow", heartbeat=2.0), hub.subscribe("spiffe://t/rs", heartbeat=2.0)
            received: list[tuple[int, bytes]] = []

            async def read() -> None:
                while len(received) < 20 and (item := await keeping_up.next()) is not None:
                    if isinstance(item, tuple):
                        received.append(item)

            reader = asyncio.create_task(read())
            ended = []
            for _ in range(20):  # revocations as separate requests would come: the loop turns between them
                ended.append(await ended_task(store))
                await asyncio.sleep(0.01)
            await asyncio.wait_for(reader, 10)
            # the one that never read was cut once its queue was full: what it held is dropped
            assert slow.cut and slow.queued() == 1
            assert await slow.next() is None  # its stream ends
            hub.leave(slow)
            # positive control: the subscriber that kept up got every entry, in order
            assert [json.loads(e[1].split(b"data: ", 1)[1])["value"] for e in received] == ended
            assert not keeping_up.cut

            # the cut subscriber reconnects from its cursor (none yet): its backlog has everything
            again = hub.subscribe("spiffe://t/slow", heartbeat=2.0)
            async with contextlib.aclosing(hub.stream(again, 0)) as stream:
                replayed = [event async for event in _until_heartbeat(stream)]
            assert [e["value"] for e in replayed] == ended
            hub.leave(again)
        finally:
            await hub.aclose()

    run(tmp_path, body)


async def _until_heartbeat(stream: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    """The revocation events of an SSE stream up to its first heartbeat."""
    async for chunk in stream:
        if chunk.startswith(b"event: heartbeat"):
            return
        yield json.loads(chunk.split(b"data: ", 1)[1])
