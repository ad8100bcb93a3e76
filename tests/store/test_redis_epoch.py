"""The Redis replay-epoch marker (``RedisCache.spend_proof``) against a Redis of the test's own.

SECURITY.md DPOP-12 / D-01 with the replay *cache* restarted: every loss of the ``jti``
marks — the process killed with nothing saved, killed after a snapshot that holds the marker
but not the later marks, a flush or an eviction of the marker — makes the next spend report
a new ``since``, learnt by every handle (replica) from Redis itself. A plain ``first_use``
answers "fresh" for the forgotten proof in each case: that is the gap the marker closes.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from redisproc import DefaultRedis, default_redis
from tether.store.errors import StoreUnavailable
from tether.store.redis.cache import RedisCache

pytestmark = [pytest.mark.redis]

PREFIX = "t-epoch"


def _run(tmp_path: Path, body: Callable[[DefaultRedis], Coroutine[Any, Any, None]]) -> None:
    with default_redis(tmp_path / "redis") as redis:
        asyncio.run(body(redis))


def _start(now: float) -> float:
    """The start a marker created at ``now`` records: the next whole second (``_start_after``)."""
    return float(math.floor(now) + 1)


def _cache(redis: DefaultRedis) -> RedisCache:
    return RedisCache.from_url(redis.url, prefix=PREFIX)


async def _spend(cache: RedisCache, key: str, now: float) -> tuple[bool, float]:
    """A spend as ProofChecker makes it; a transient error right after a restart is retried
    (a stale pooled connection), as a client retries a 503."""
    for _ in range(50):
        try:
            return await cache.spend_proof(key, until=int(now) + 70, now=now)
        except StoreUnavailable:
            await asyncio.sleep(0.1)
    raise AssertionError("redis never answered")


def test_DPOP_12_marker_created_once_and_reported_with_every_spend(tmp_path: Path) -> None:
    async def body(redis: DefaultRedis) -> None:
        cache = _cache(redis)
        try:
            now = time.time()
            assert await _spend(cache, "a", now) == (True, _start(now))  # the cache begins with the first spend
            assert await _spend(cache, "a", now + 1) == (False, _start(now))  # positive control: a replay
            assert await _spend(cache, "b", now + 2) == (True, _start(now))  # a later spend keeps the start
            assert redis.cli("ttl", f"{PREFIX}:replay-epoch") == "-1"  # the marker never expires
            assert await cache.first_use("c", until=int(now) + 70, now=now) is True
            assert await cache.replay_since(now=now + 9) == _start(now)  # read without spending
        finally:
            await cache.aclose()

    _run(tmp_path, body)


def test_DPOP_12_replay_since_creates_the_marker_a_replica_starts_with(tmp_path: Path) -> None:
    async def body(redis: DefaultRedis) -> None:
        cache = _cache(redis)
        try:
            now = time.time()
            assert await cache.replay_since(now=now) == _start(now)
            assert await _spend(cache, "a", now + 2) == (True, _start(now))
        finally:
            await cache.aclose()

    _run(tmp_path, body)


def test_DPOP_12_D_01_kill_9_without_snapshot_begins_a_new_cache(tmp_path: Path) -> None:
    async def body(redis: DefaultRedis) -> None:
        cache = _cache(redis)
        try:
            first = time.time()
            assert await _spend(cache, "spent-before", first) == (True, _start(first))
            redis.kill9()
            redis.start()
            later = time.time()
            fresh, since = await _spend(cache, "spent-before", later)
            assert fresh  # the mark is gone: without the marker this is an accepted replay ...
            assert since == _start(later)  # ... but the spend reports a cache that began after the proof
        finally:
            await cache.aclose()

    _run(tmp_path, body)


def test_DPOP_12_D_01_kill_9_after_a_snapshot_holding_the_marker_begins_a_new_cache(tmp_path: Path) -> None:
    """The default ``save`` schedule snapshots a busy server: the reloaded RDB holds the marker
    (so "the marker vanished" would miss the loss) but not the marks spent after the snapshot.
    The marker records the Redis ``run_id``; a marker from another run is a loss."""

    async def body(redis: DefaultRedis) -> None:
        cache = _cache(redis)
        try:
            first = time.time()
            assert await _spend(cache, "in-snapshot", first) == (True, _start(first))
            redis.snapshot()
            assert await _spend(cache, "after-snapshot", first + 1) == (True, _start(first))
            redis.kill9()
            redis.start()
            assert redis.cli("hget", f"{PREFIX}:replay-epoch", "since") == repr(_start(first))  # reloaded from the RDB
            assert redis.cli("exists", f"{PREFIX}:replay:after-snapshot") == "0"  # ... without the later mark
            later = time.time()
            fresh, since = await _spend(cache, "after-snapshot", later)
            assert fresh and since == _start(later)  # forgotten mark, and a cache that began after it
            assert await _spend(cache, "in-snapshot", later + 1) == (False, _start(later))  # what the RDB kept still counts
        finally:
            await cache.aclose()

    _run(tmp_path, body)


def test_DPOP_12_a_replica_up_across_the_restart_learns_the_start_from_redis(tmp_path: Path) -> None:
    async def body(redis: DefaultRedis) -> None:
        a, b = _cache(redis), _cache(redis)
        try:
            first = time.time()
            assert (await _spend(a, "x", first))[1] == _start(first)
            assert await _spend(b, "y", first + 1) == (True, _start(first))
            redis.kill9()
            redis.start()
            restarted = time.time()
            assert await _spend(a, "z", restarted) == (True, _start(restarted))
            # b kept its connections' pool and remembers nothing: Redis tells it
            assert await _spend(b, "x", restarted + 5) == (True, _start(restarted))
            assert await _spend(b, "z", restarted + 6) == (False, _start(restarted))
        finally:
            await a.aclose()
            await b.aclose()

    _run(tmp_path, body)


def test_DPOP_12_marker_deleted_or_evicted_begins_a_new_cache(tmp_path: Path) -> None:
    async def body(redis: DefaultRedis) -> None:
        cache = _cache(redis)
        try:
            first = time.time()
            await _spend(cache, "k1", first)
            redis.cli("del", f"{PREFIX}:replay-epoch")
            assert await _spend(cache, "k2", first + 3) == (True, _start(first + 3))
            redis.cli("flushall")
            assert await _spend(cache, "k1", first + 4) == (True, _start(first + 4))
        finally:
            await cache.aclose()

    _run(tmp_path, body)


def test_eviction_policy_is_checked(tmp_path: Path) -> None:
    async def body(redis: DefaultRedis) -> None:
        cache = _cache(redis)
        try:
            assert await cache.check_eviction() is None  # defaults: no maxmemory
            redis.cli("config", "set", "maxmemory", "100mb")
            assert await cache.check_eviction() is None  # noeviction: writes fail (503), nothing forgotten
            for policy in ("allkeys-lru", "volatile-ttl"):
                redis.cli("config", "set", "maxmemory-policy", policy)
                warning = await cache.check_eviction()
                assert warning is not None and policy in warning
        finally:
            await cache.aclose()

    _run(tmp_path, body)


def test_redis_down_is_store_unavailable(tmp_path: Path) -> None:
    async def body(redis: DefaultRedis) -> None:
        cache = _cache(redis)
        try:
            assert (await _spend(cache, "k", time.time()))[0]  # positive control
            redis.kill9()
            with pytest.raises(StoreUnavailable):
                await cache.spend_proof("k2", until=int(time.time()) + 70, now=time.time())
        finally:
            await cache.aclose()

    _run(tmp_path, body)
