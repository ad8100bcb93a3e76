"""Redis for the fast, expiring state every replica shares (redis-py asyncio).

``first_use`` is the DPoP ``jti`` replay cache (``SET NX EXAT``: a proof accepted by one
replica is a replay at every other); ``spend_proof`` does the same and also returns the
current cache's epoch (the replay-epoch marker, ``rules.replay_epoch``), so a cache that lost
keys is never taken for one that remembers them; ``incr_window`` keeps fixed-window counters; a pub/sub
channel announces each committed revocation so every replica's streams wake at once. Any
Redis failure raises ``StoreUnavailable``: with no replay cache nothing is accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from tether.rules.replay_epoch import ReplayEpoch
from tether.store.errors import StoreUnavailable

__all__ = ["RedisCache"]

log = logging.getLogger("tether.store")
T = TypeVar("T")


# INCR, and EXPIREAT only when this call started the window: atomic, any Redis version
_INCR_WINDOW = """
local value = redis.call('INCR', KEYS[1])
if value == 1 then redis.call('EXPIREAT', KEYS[1], ARGV[1]) end
return value
"""


# The replay-epoch marker is read, and recreated when it is missing (a restart without
# persistence, an eviction, a flush) or was written by another Redis run or replication
# history (a restart that reloaded an older RDB/AOF, a failover to a replica: run_id changes
# with the process, master_replid with a failover or a full resync), or when Redis evicted
# keys since it was written (evicted_keys moved: an evicted jti mark is a forgotten proof,
# and the marker cannot tell which), in the same script as the SET NX: no spend can slip
# between a loss and its detection. A new marker takes a new random epoch id and Redis's own
# TIME as its start (no replica's clock: rules.replay_epoch). Missing INFO fields are an
# error (503), never compared as ''.
# KEYS: 1 the marker, 2 the jti mark (absent: only read the marker).
# ARGV: 1 a random epoch id for a new marker, 2 the jti mark's expiry, 3 'empty' when the
# deployment has never accepted a proof (a schema just created): a marker that is missing
# then begins at 0, since the empty cache has lost nothing.
_REPLAY_EPOCH = """
redis.replicate_commands()
local info = redis.call('INFO', 'server') .. redis.call('INFO', 'replication') .. redis.call('INFO', 'stats')
local run = string.match(info, 'run_id:(%x+)')
local replid = string.match(info, 'master_replid:(%x+)')
local evicted = string.match(info, 'evicted_keys:(%d+)')
if not run or not replid or not evicted then
  return redis.error_reply('ERR tether: no run_id, master_replid or evicted_keys in INFO')
end
run = run .. '/' .. replid
local marker = redis.call('HMGET', KEYS[1], 'since', 'run', 'epoch', 'evicted')
local since, epoch = marker[1], marker[3]
if not since or not epoch or marker[2] ~= run or marker[4] ~= evicted then
  local t = redis.call('TIME')
  since = tostring(tonumber(t[1]) + 1)
  if ARGV[3] == 'empty' and not marker[1] and not marker[2] then since = '0' end
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'since', since, 'run', run, 'epoch', epoch, 'evicted', evicted)
end
local fresh = 0
if KEYS[2] and redis.call('SET', KEYS[2], '1', 'NX', 'EXAT', ARGV[2]) then fresh = 1 end
return {fresh, since, epoch}
"""


def _epoch(since: object, epoch: object) -> ReplayEpoch:
    return ReplayEpoch(id=_text(epoch), since=float(_text(since)))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisCache:
    def __init__(self, client: aioredis.Redis, *, prefix: str) -> None:
        self.client = client
        self._incr_window = client.register_script(_INCR_WINDOW)
        self._replay_epoch = client.register_script(_REPLAY_EPOCH)
        self.prefix = prefix
        self.epoch_key = f"{prefix}:replay-epoch"
        self.channel = f"{prefix}:revocations"
        self._listener: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str, *, prefix: str) -> RedisCache:
        client = aioredis.Redis.from_url(
            url, socket_timeout=2.0, socket_connect_timeout=2.0, health_check_interval=10, decode_responses=False
        )
        return cls(client, prefix=prefix)

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        """``op`` (idempotent: a read, or a write whose repeat changes nothing), any Redis failure
        raised as ``StoreUnavailable`` (503, fail closed)."""
        return (await self._call_retried(op))[0]

    async def _claim(self, op: Callable[[], Awaitable[Any]]) -> bool:
        """A once-only write (``SET NX``): True when this call made it. Retried after a lost
        connection and then found taken, the first attempt may have made it itself (its reply
        lost): that outcome is unknown, so ``StoreUnavailable``, never a false "taken"."""
        made, retried = await self._call_retried(op)
        if retried and not made:
            raise StoreUnavailable("redis: a once-only write was retried after a lost reply; its outcome is unknown")
        return bool(made)

    async def _once(self, op: Callable[[], Awaitable[T]]) -> T:
        """``op`` without the retry (a write whose repeat would count twice)."""
        try:
            return await op()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    async def _call_retried(self, op: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """``op`` and whether it had to be retried; any Redis failure is ``StoreUnavailable``.

        A connection error is retried once: after Redis restarts, the first command on the
        pool's old connections fails with "connection closed" although Redis is back. The
        first attempt may still have run (its reply lost): callers whose command is not
        idempotent read the answer knowing it was retried (``spend_proof``)."""
        try:
            return await op(), False
        except RedisConnectionError:
            pass
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        try:
            return await op(), True
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    async def ping(self) -> None:
        await self._call(self.client.ping)

    async def first_use(self, key: str, *, until: int, now: float) -> bool:
        if until <= now:
            return False
        name = f"{self.prefix}:replay:{key}"
        return await self._claim(lambda: self.client.set(name, b"1", nx=True, exat=int(until)))

    async def spend_proof(self, key: str, *, until: int, now: float) -> tuple[bool, ReplayEpoch]:
        """``first_use`` for a DPoP proof, and the replay cache's current epoch.

        One script: the epoch marker is checked (and recreated if lost) in the same step that
        spends ``key``, so every spend learns the epoch from Redis itself, never from what this
        replica remembers (RFC 9449 §11.1; ``rules.replay_epoch``). A spend that had to be
        retried after a lost connection and then finds the mark set may have set it itself on
        the first attempt: that is ``StoreUnavailable`` (503, retry), not a replay.
        """
        if until <= now:
            return False, ReplayEpoch(id="", since=math.inf)  # refused as spent either way
        keys = [self.epoch_key, f"{self.prefix}:replay:{key}"]
        args: list[str | int] = [secrets.token_hex(8), int(until)]
        answer: list[Any] = []

        async def spend() -> bool:
            answer[:] = await self._replay_epoch(keys=keys, args=args)
            return bool(answer[0])

        fresh = await self._claim(spend)
        return fresh, _epoch(answer[1], answer[2])

    async def replay_epoch(self) -> ReplayEpoch:
        """The replay cache's current epoch, creating the marker if it is missing or stale
        (a replica learns it when it starts, so the nonces it mints pass from the first)."""
        args: list[str | int] = [secrets.token_hex(8)]
        _, since, epoch = await self._call(lambda: self._replay_epoch(keys=[self.epoch_key], args=args))
        return _epoch(since, epoch)

    async def begin_empty(self) -> ReplayEpoch:
        """The first epoch of a deployment that has never accepted a proof: if no marker exists,
        it begins at 0 (nothing can have been forgotten), so the first clients are not
        challenged as after a loss. Called only by the store that has just created its schema."""
        args: list[str | int] = [secrets.token_hex(8), 0, "empty"]
        _, since, epoch = await self._call(lambda: self._replay_epoch(keys=[self.epoch_key], args=args))
        return _epoch(since, epoch)

    async def check_eviction(self) -> str | None:
        """A warning when Redis may evict keys (``maxmemory`` with a policy other than
        ``noeviction``): each eviction begins a new replay epoch (the marker cannot tell which
        ``jti`` marks went), so every client is challenged again after it. ``None`` when
        eviction is off; a warning too when the settings cannot be read."""
        try:
            raw: dict[Any, Any] = dict(await self.client.config_get("maxmemory*"))
        except (RedisError, OSError) as exc:
            return f"cannot read redis maxmemory settings ({type(exc).__name__}); make sure maxmemory-policy is noeviction"
        config = {_text(name): _text(value) for name, value in raw.items()}
        policy, limit = config.get("maxmemory-policy", ""), config.get("maxmemory", "0")
        if limit not in ("", "0") and policy != "noeviction":
            return (
                f"redis maxmemory-policy is {policy} with maxmemory {limit}: every eviction resets the dpop "
                "replay cache (clients are challenged for a new nonce again); set maxmemory-policy noeviction"
            )
        return None

    async def incr_window(self, key: str, *, window_ends: int) -> int:
        """Increment a fixed-window counter; returns the new value.

        The window is set once, by the call that starts it, and ``INCR`` keeps it: a later
        ``window_ends`` never stretches it (as in the SQLite store). Setting the expiry on
        every call made the window slide, so calls spaced just under a window apart kept
        adding up for ever.
        """
        name = f"{self.prefix}:count:{key}"
        # never retried: a repeat after a lost reply would count the call twice
        return int(await self._once(lambda: self._incr_window(keys=[name], args=[int(window_ends)])))

    async def first_seen(self, key: str, *, now: float, until: int) -> float:
        """``SET NX EXAT`` a timestamp, then read it: the first caller's time wins everywhere."""
        name = f"{self.prefix}:seen:{key}"

        async def op() -> Any:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(name, repr(float(now)).encode(), nx=True, exat=int(until))
                pipe.get(name)
                return await pipe.execute()

        values = await self._call(op)
        return float(values[1])

    async def publish_revocation(self) -> None:
        """Best effort: subscribers also re-read the feed on every heartbeat, so a lost message costs latency only."""
        try:
            await self.client.publish(self.channel, b"1")
        except (RedisError, OSError) as exc:
            log.warning("revocation announcement not published: %s", exc)

    def listen(self, on_message: Callable[[], None]) -> None:
        """Start (once) a background subscriber that calls ``on_message`` for each announcement."""
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(on_message), name="tether-revocation-listener")

    async def _listen(self, on_message: Callable[[], None]) -> None:
        while True:
            try:
                pubsub = self.client.pubsub()
                async with pubsub:
                    await pubsub.subscribe(self.channel)
                    on_message()  # anything published while we were away is read from the feed now
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            on_message()
            except (RedisError, OSError) as exc:
                log.warning("revocation listener lost redis (%s); retrying", exc)
            await asyncio.sleep(0.5)

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await self.client.aclose()
