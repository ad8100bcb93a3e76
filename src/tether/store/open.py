"""Open the configured store: embedded SQLite by default (issue 6 adds PostgreSQL + Redis)."""

from __future__ import annotations

from tether.config import Config
from tether.errors import ConfigError
from tether.store.sqlite.store import SqliteStore

__all__ = ["open_store", "sqlite_path"]


def sqlite_path(config: Config) -> str:
    return str(config.data_dir / "tether.db")


def open_store(config: Config, *, migrate: bool = True) -> SqliteStore:
    kind = config.values[""]["store"]
    if kind != "sqlite":
        raise ConfigError("store", f"`{kind}` is not available in this build")
    return SqliteStore.open(config.data_dir / "tether.db", migrate_schema=migrate)
