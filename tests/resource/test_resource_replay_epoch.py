"""The resource middleware learns the replay cache's epoch once, not per request (review finding 3).

``TetherMiddleware`` calls ``Verifier.start`` on every request (apps without lifespan events),
and ``Verifier.start`` learns the shared replay cache's epoch — with Redis, a script and an
``INFO`` per call — so every request, even an unauthenticated one, cost a Redis round trip.
The epoch is read once; later it is learnt from each proof's spend. The cache here counts its
epoch reads (the Redis script itself is tested in tests/store/test_redis_epoch.py).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import MutableMapping
from typing import Any

import pytest

from tether.resource import ResourceSettings, TetherMiddleware, Verifier
from tether.rules.replay_epoch import ReplayEpoch

# runs the same whatever TETHER_TEST_STORE says: the PostgreSQL pass of scripts/test leaves it out
pytestmark = pytest.mark.store_independent

ISSUER = "http://127.0.0.1:8700"
RESOURCE = "http://127.0.0.1:9001"


class _CountingEpochCache:
    def __init__(self) -> None:
        self.epoch = ReplayEpoch(secrets.token_hex(8), 0.0)
        self.reads = 0

    async def first_use(self, key: str, *, until: int, now: float) -> bool:
        raise AssertionError("spend_proof must be used when the cache has it")

    async def replay_epoch(self) -> ReplayEpoch:
        self.reads += 1
        return self.epoch

    async def spend_proof(self, key: str, *, until: int, now: float) -> tuple[bool, ReplayEpoch]:
        return True, self.epoch


async def _app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("an unauthenticated request never reaches the app")


async def _get(middleware: TetherMiddleware, path: str) -> int:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "headers": [],
             "query_string": b"", "client": ("127.0.0.1", 1234), "scheme": "http", "server": ("127.0.0.1", 9001)}  # fmt: skip
    await middleware(scope, receive, send)
    return int(sent[0]["status"])


def test_DPOP_12_the_replay_epoch_is_read_once_not_per_request() -> None:
    async def body() -> None:
        cache = _CountingEpochCache()
        settings = ResourceSettings(issuer=ISSUER, resource=RESOURCE, revocation_feed=False, nonce=True)
        verifier = Verifier(settings, replay=cache)
        middleware = TetherMiddleware(_app, verifier)
        try:
            statuses = [await _get(middleware, "/data") for _ in range(5)]
        finally:
            await verifier.aclose()
        assert statuses == [401] * 5  # no token: refused, after the start
        assert cache.reads == 1  # learnt once (control: it was learnt at all)

    asyncio.run(asyncio.wait_for(body(), timeout=30))
