"""A deployment's first replay epoch (``RedisCache.begin_empty``), on PostgreSQL + Redis.

A store that has just created its schema has never accepted a proof, so the empty replay
cache has lost nothing: its first epoch begins at 0 and the first clients are not
challenged as after a loss. Anything else — a schema that already existed, a marker already
there — is left to the loss detection of ``spend_proof`` (SECURITY.md DPOP-12).
"""

from __future__ import annotations

import asyncio

import pytest

from services import REDIS_URL, drop_schema, new_schema, require_postgres_and_redis, schema_dsn
from tether.store.postgres.store import PostgresRedisStore

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def test_DPOP_12_a_new_schemas_first_epoch_begins_at_zero_and_a_later_open_keeps_it() -> None:
    require_postgres_and_redis()
    schema = new_schema()

    async def body() -> None:
        first = await PostgresRedisStore.open(schema_dsn(schema), REDIS_URL, prefix=schema, migrate=True)
        try:
            epoch = await first.replay_epoch()
            assert epoch.since == 0  # nothing was ever accepted: nothing can have been forgotten
        finally:
            await first.aclose()
        again = await PostgresRedisStore.open(schema_dsn(schema), REDIS_URL, prefix=schema, migrate=True)
        try:
            assert await again.replay_epoch() == epoch  # the schema existed: the epoch is kept
        finally:
            await again.aclose()

    try:
        asyncio.run(body())
    finally:
        drop_schema(schema)


def test_DPOP_12_a_marker_already_there_is_not_moved_back_by_a_new_schema() -> None:
    require_postgres_and_redis()
    schema, prefix = new_schema(), new_schema()

    async def body() -> None:
        # another deployment on this Redis prefix already began an epoch (it may have accepted proofs)
        other = await PostgresRedisStore.open(schema_dsn(schema), REDIS_URL, prefix=prefix, migrate=True)
        try:
            await other.cache.client.delete(other.cache.epoch_key)
            began = await other.replay_epoch()  # a marker begun now, as after a loss
            assert began.since > 0
        finally:
            await other.aclose()
        drop_schema(schema)
        fresh = await PostgresRedisStore.open(schema_dsn(schema), REDIS_URL, prefix=prefix, migrate=True)
        try:
            assert await fresh.replay_epoch() == began
        finally:
            await fresh.aclose()

    try:
        asyncio.run(body())
    finally:
        drop_schema(schema)
