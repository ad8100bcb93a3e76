"""Redis for the fast, expiring state every replica shares (redis-py asyncio).

``first_use`` is the DPoP ``jti`` replay cache (``SET NX EXAT``: a proof accepted by one
replica is a replay at every other); ``incr_window`` keeps fixed-window counters; a pub/sub
channel announces each committed revocation so every replica's streams wake at once. Any
Redis failure raises ``StoreUnavailable``: with no replay cache nothing is accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

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


class RedisCache:
    def __init__(self, client: aioredis.Redis, *, prefix: str) -> None:
        self.client = client
        self._incr_window = client.register_script(_INCR_WINDOW)
        self.prefix = prefix
        self.channel = f"{prefix}:revocations"
        self._listener: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str, *, prefix: str) -> RedisCache:
        client = aioredis.Redis.from_url(
            url, socket_timeout=2.0, socket_connect_timeout=2.0, health_check_interval=10, decode_responses=False
        )
        return cls(client, prefix=prefix)

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await op()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    async def ping(self) -> None:
        await self._call(self.client.ping)

    async def first_use(self, key: str, *, until: int, now: float) -> bool:
        if until <= now:
            return False
        name = f"{self.prefix}:replay:{key}"
        result = await self._call(lambda: self.client.set(name, b"1", nx=True, exat=int(until)))
        return bool(result)

    async def incr_window(self, key: str, *, window_ends: int) -> int:
        """Increment a fixed-window counter; returns the new value.

        The window is set once, by the call that starts it, and ``INCR`` keeps it: a later
        ``window_ends`` never stretches it (as in the SQLite store). Setting the expiry on
        every call made the window slide, so calls spaced just under a window apart kept
        adding up for ever.
        """
        name = f"{self.prefix}:count:{key}"
        return int(await self._call(lambda: self._incr_window(keys=[name], args=[int(window_ends)])))

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
