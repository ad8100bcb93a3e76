"""The Redis replay-epoch marker (``RedisCache.spend_proof``) against a Redis of the test's own.

SECURITY.md DPOP-12 / D-01 with the replay *cache* restarted: every loss of the ``jti``
marks — the process killed with nothing saved, killed after a snapshot that holds the marker
but not the later marks, a flush or an eviction of the marker — makes the next spend report
a new epoch (a new random id, its start from Redis's own clock), learnt by every handle
(replica) from Redis itself. A plain ``first_use`` answers "fresh" for the forgotten proof in
each case: that is the gap the marker closes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from redisproc import DefaultRedis, default_redis
from tether.rules.replay_epoch import ReplayEpoch
from tether.store.errors import StoreUnavailable
from tether.store.redis.cache import RedisCache

pytestmark = [pytest.mark.redis]

PREFIX = "t-epoch"


def _run(tmp_path: Path, body: Callable[[DefaultRedis], Coroutine[Any, Any, None]]) -> None:
    with default_redis(tmp_path / "redis") as redis:
        asyncio.run(body(redis))


def _cache(redis: DefaultRedis) -> RedisCache:
    return RedisCache.from_url(redis.url, prefix=PREFIX)


def _new_after(epoch: ReplayEpoch, old: ReplayEpoch | None, before: float) -> None:
    """``epoch`` is a new one, begun (by Redis's clock, the test's too) after ``before``."""
    assert old is None or epoch.id != old.id
    assert before < epoch.since <= time.time() + 2


async def _spend(cache: RedisCache, key: str) -> tuple[bool, ReplayEpoch]:
    """A spend as ProofChecker makes it; a transient error right after a restart is retried
    (a stale pooled connection), as a client retries a 503."""
    for _ in range(50):
        try:
            now = time.time()
            return await cache.spend_proof(key, until=int(now) + 70, now=now)
        except StoreUnavailable:
            await asyncio.sleep(0.1)
    raise AssertionError("redis never answered")


def test_DPOP_12_marker_created_once_and_reported_with_every_spend(tmp_path: Path) -> None:
    async def body(redis: DefaultRedis) -> None:
        cache = _cache(redis)
        try:
            before = time.time() - 1
            fresh, epoch = await _spend(cache, "a")
            assert fresh
            _new_after(epoch, None, before)  # the cache begins with the first spend
            assert await _spend(cache, "a") == (False, epoch)  # positive control: a replay
            assert await _spend(cache, "b") == (True, epoch)  # a later spend keeps the epoch
            assert redis.cli("ttl", f"{PREFIX}:replay-epoch") == "-1"  # the marker never expires
            assert await cache.first_use("c", until=int(time.time()) + 70, now=time.time()) is True
            assert await cache.replay_epoch() == epoch  # read without spending
        finally:
            await cache.aclose()

    _run(tmp_path, body)


def test_DPOP_12_replay_epoch_creates_the_marker_a_replica_starts_with(tmp_path: Path) -> None:
    async def body(redis: DefaultRedis) -> None:
        cache = _cache(redis)
        try:
            before = time.time() - 1
            epoch = await cache.replay_epoch()
            _new_after(epoch, None, before)
            assert await _spend(cache, "a") == (True, epoch)
        finally:
            await cache.aclose()

    _run(tmp_path, body)


def test_DPOP_12_D_01_kill_9_without_snapshot_begins_a_new_cache(tmp_path: Path) -> None:
    async def body(redis: DefaultRedis) -> None:
        cache = _cache(redis)
        try:
            fresh, first = await _spend(cache, "spent-before")
            assert fresh
            redis.kill9()
            redis.start()
            lost = time.time() - 1
            fresh, epoch = await _spend(cache, "spent-before")
            assert fresh  # the mark is gone: without the marker this is an accepted replay ...
            _new_after(epoch, first, lost)  # ... but the spend reports a new epoch
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
            _, first = await _spend(cache, "in-snapshot")
            redis.snapshot()
            assert await _spend(cache, "after-snapshot") == (True, first)
            redis.kill9()
            redis.start()
            assert redis.cli("hget", f"{PREFIX}:replay-epoch", "epoch") == first.id  # reloaded from the RDB
            assert redis.cli("exists", f"{PREFIX}:replay:after-snapshot") == "0"  # ... without the later mark
            lost = time.time() - 1
            fresh, epoch = await _spend(cache, "after-snapshot")
            assert fresh  # a forgotten mark ...
            _new_after(epoch, first, lost)  # ... and a new epoch
            assert await _spend(cache, "in-snapshot") == (False, epoch)  # what the RDB kept still counts
        finally:
            await cache.aclose()

    _run(tmp_path, body)


def test_DPOP_12_a_replica_up_across_the_restart_learns_the_epoch_from_redis(tmp_path: Path) -> None:
    async def body(redis: DefaultRedis) -> None:
        a, b = _cache(redis), _cache(redis)
        try:
            _, first = await _spend(a, "x")
            assert await _spend(b, "y") == (True, first)
            redis.kill9()
            redis.start()
            fresh, epoch = await _spend(a, "z")
            assert fresh and epoch != first
            # b kept its connections' pool and remembers nothing: Redis tells it
            assert await _spend(b, "x") == (True, epoch)
            assert await _spend(b, "z") == (False, epoch)
        finally:
            await a.aclose()
            await b.aclose()

    _run(tmp_path, body)


def test_DPOP_12_marker_deleted_or_flushed_begins_a_new_cache(tmp_path: Path) -> None:
    async def body(redis: DefaultRedis) -> None:
        cache = _cache(redis)
        try:
            _, first = await _spend(cache, "k1")
            redis.cli("del", f"{PREFIX}:replay-epoch")
            fresh, second = await _spend(cache, "k2")
            assert fresh and second.id != first.id
            redis.cli("flushall")
            fresh, third = await _spend(cache, "k1")
            assert fresh and third.id not in (first.id, second.id)
        finally:
            await cache.aclose()

    _run(tmp_path, body)


def test_DPOP_12_a_marker_stamped_with_an_hour_ahead_start_is_reported_as_is(tmp_path: Path) -> None:
    """Anyone who can write Redis can set the start; the cache reports it and ProofChecker
    clamps it (tests/rules/test_replay_epoch.py), never waits for it."""

    async def body(redis: DefaultRedis) -> None:
        cache = _cache(redis)
        try:
            _, first = await _spend(cache, "k1")
            redis.cli("hset", f"{PREFIX}:replay-epoch", "since", str(int(time.time()) + 3600))
            fresh, epoch = await _spend(cache, "k2")
            assert fresh and epoch.id == first.id and epoch.since > time.time() + 3000
        finally:
            await cache.aclose()

    _run(tmp_path, body)


def test_DPOP_12_a_spend_retried_after_a_lost_reply_is_unavailable_not_a_replay(tmp_path: Path) -> None:
    """The script ran but its reply was lost (the connection dropped after Redis did the SET
    NX): the retry finds the mark set. That is not a replay (an honest client would be told
    its proof was reused) but an unknown outcome: 503. Control: a real replay after a clean
    reply, and a retry that finds the mark unset (fresh), are answered as before."""

    async def body(redis: DefaultRedis) -> None:
        cache = _cache(redis)
        try:
            script = cache._replay_epoch
            dropped: list[bool] = []

            async def reply_lost_once(**kwargs: Any) -> Any:
                result = await script(**kwargs)  # Redis ran it: the mark is set
                if not dropped:
                    dropped.append(True)
                    raise RedisConnectionError("Connection closed by server.")
                return result

            cache._replay_epoch = reply_lost_once  # type: ignore[assignment]
            with pytest.raises(StoreUnavailable):
                await cache.spend_proof("lost-reply", until=int(time.time()) + 70, now=time.time())
            assert dropped == [True]
            cache._replay_epoch = script
            assert (await _spend(cache, "lost-reply"))[0] is False  # control: a clean replay is a replay
            assert (await _spend(cache, "new"))[0] is True
        finally:
            await cache.aclose()

    _run(tmp_path, body)


def test_DPOP_12_keys_evicted_since_the_marker_begin_a_new_cache(tmp_path: Path) -> None:
    """Review finding 5: with ``maxmemory`` and a ``volatile-*`` policy Redis evicts keys with a
    TTL (the jti marks) and keeps the marker (no TTL): a forgotten proof the marker could not
    see. The marker records ``evicted_keys``; once it moved, the next spend begins a new epoch.
    Control on the same server: the same policy with nothing evicted keeps the epoch."""

    async def body(redis: DefaultRedis) -> None:
        cache = _cache(redis)
        try:
            _, first = await _spend(cache, "spent-before")
            info = redis.cli("info", "memory")
            used = int(next(line.split(":")[1] for line in info.splitlines() if line.startswith("used_memory:")))
            redis.cli("config", "set", "maxmemory", str(used + 2_000_000))
            redis.cli("config", "set", "maxmemory-policy", "volatile-lru")
            assert await _spend(cache, "no-eviction-yet") == (True, first)  # control
            for n in range(2000):
                await cache.client.set(f"{PREFIX}:filler:{n}", b"x" * 20_000, ex=600)
                if int((await cache.client.info("stats"))["evicted_keys"]) > 0:
                    break
            else:
                raise AssertionError("redis never evicted")
            fresh, epoch = await _spend(cache, "after-eviction")
            assert fresh and epoch.id != first.id  # a new epoch: the evicted marks are proofs it cannot vouch for
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
            assert (await _spend(cache, "k"))[0]  # positive control
            redis.kill9()
            with pytest.raises(StoreUnavailable):
                await cache.spend_proof("k2", until=int(time.time()) + 70, now=time.time())
        finally:
            await cache.aclose()

    _run(tmp_path, body)


def test_a_once_only_claim_retried_after_a_lost_reply_is_unavailable_and_a_counter_is_not_counted_twice(
    tmp_path: Path,
) -> None:
    """``first_use`` (checkpoint and alert claims, the monitor's finding claims) made by a ``SET NX``
    whose reply was lost: the retry finds the key taken, which must not read as "someone else has
    it" (no replica would then act) but as an unknown outcome, 503. A fixed-window counter is not
    retried at all: a repeat would count one call twice. Controls: clean calls answer as before."""

    async def body(redis: DefaultRedis) -> None:
        cache = _cache(redis)
        try:
            real_set, real_incr = cache.client.set, cache._incr_window

            def lose_the_first_reply(call: Any) -> Any:
                dropped: list[bool] = []

                async def once(*args: Any, **kwargs: Any) -> Any:
                    result = await call(*args, **kwargs)  # Redis did it
                    if not dropped:
                        dropped.append(True)
                        raise RedisConnectionError("Connection closed by server.")
                    return result

                return once

            now = time.time()
            cache.client.set = lose_the_first_reply(real_set)  # type: ignore[method-assign]
            with pytest.raises(StoreUnavailable):
                await cache.first_use("claim", until=int(now) + 60, now=now)
            cache.client.set = real_set  # type: ignore[method-assign]
            assert await cache.first_use("claim", until=int(now) + 60, now=now) is False  # control: taken
            assert await cache.first_use("other", until=int(now) + 60, now=now) is True

            cache._incr_window = lose_the_first_reply(real_incr)
            with pytest.raises(StoreUnavailable):
                await cache.incr_window("calls", window_ends=int(now) + 60)
            cache._incr_window = real_incr
            assert await cache.incr_window("calls", window_ends=int(now) + 60) == 2  # counted once, not twice
        finally:
            await cache.aclose()

    _run(tmp_path, body)
