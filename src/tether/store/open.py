"""Open the configured store: embedded SQLite (default) or PostgreSQL + Redis."""

from __future__ import annotations

from tether.config import Config
from tether.errors import ConfigError
from tether.store.protocol import Store
from tether.store.sqlite.store import SqliteStore

__all__ = ["open_store"]


async def open_store(config: Config, *, migrate: bool | None = None) -> Store:
    """The store named by ``store`` in the config (``TETHER_STORE``).

    SQLite migrates itself by default (it is embedded); PostgreSQL does only when asked
    (``tether migrate``) and otherwise refuses to serve a schema behind the code.
    """
    if config.store == "sqlite":
        return SqliteStore.open(config.data_dir / "tether.db", migrate_schema=True if migrate is None else migrate)
    from tether.store.postgres.store import PostgresRedisStore

    dsn, redis_url = config.postgres.dsn, config.redis.url
    if not dsn:
        raise ConfigError("postgres.dsn", 'is required when store = "postgres" (or set TETHER_POSTGRES_DSN)')
    if not redis_url:
        raise ConfigError("redis.url", 'is required when store = "postgres" (or set TETHER_REDIS_URL)')
    return await PostgresRedisStore.open(dsn, redis_url, prefix=config.redis.prefix, migrate=bool(migrate))
