"""The vault: legacy secrets sealed under the master key, and a short-lived cache of opened ones.

Values go in through ``put_secret`` (the CLI reads them from stdin or a file, never
argv) and come out only inside the gateway process, to be injected upstream. The
associated data binds each sealed value to its name, the time its entry was created and its
version (``keys.sealed.vault_aad``), so a blob cannot be moved to another entry, nor an old
value (perhaps leaked, rotated out) restored over a newer one: a row whose version or creation
time was rolled back with it does not open under the newer state, and a running gateway never
accepts an older (creation, version) than one it has already opened. The gateway caches an opened secret for a few seconds, so a
``vault rotate`` takes effect within that time without a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from tether.audit.chain import AuditEvent
from tether.config import Config
from tether.errors import TetherError
from tether.keys.sealed import SealError, load_master_key, seal, unseal, vault_aad
from tether.store.open import open_store
from tether.store.protocol import Store
from tether.store.records import VaultEntry

__all__ = ["MissingSecret", "SecretCache", "SecretRefused", "put_secret", "store_secret", "vault_aad"]

MAX_SECRET_BYTES = 16 * 1024


class MissingSecret(TetherError):
    """A route names a vault entry that does not exist."""


class SecretRefused(MissingSecret):
    """A vault entry that does not open under its stored state, or is older than one already opened."""


async def put_secret(store: Store, master: bytes, name: str, value: bytes, *, now: float, actor: str) -> VaultEntry:
    """Seal and store ``value`` under ``name`` (a second put is a rotation); the audit names, never shows."""
    if not value or len(value) > MAX_SECRET_BYTES:
        raise ValueError(f"a secret must be 1 to {MAX_SECRET_BYTES} bytes")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError("a secret must be UTF-8 text") from exc
    if not text.isprintable():
        raise ValueError("a secret must not contain control characters (it is injected into headers)")
    existing = await store.vault_get(name)
    kind = "vault.rotated" if existing else "vault.put"
    created, version = (existing.created_at, existing.version + 1) if existing else (now, 1)
    detail = {"name": name, "bytes": len(value), "version": version}
    event = AuditEvent(kind=kind, outcome="ok", principal=actor, detail=detail)
    sealed = seal(master, value, aad=vault_aad(name, created_at=created, version=version))
    return await store.vault_put(name, sealed, version=version, now=now, audit=event)


def store_secret(config: Config, name: str, value: str, *, actor: str) -> VaultEntry:
    """``put_secret`` from synchronous provisioning code (the demo, the benchmarks)."""

    async def run() -> VaultEntry:
        store = await open_store(config)
        try:
            master = load_master_key(config.master_key_file)
            return await put_secret(store, master, name, value.encode(), now=time.time(), actor=actor)
        finally:
            await store.aclose()

    return asyncio.run(run())


class SecretCache:
    def __init__(self, store: Store, master: bytes, *, ttl: float = 30.0, on_open: Callable[[str], None] | None = None) -> None:
        """``on_open`` is told every value opened (the gateway registers it with its log redaction)."""
        self._store = store
        self._master = master
        self._ttl = ttl
        self._on_open = on_open
        self._opened: dict[str, tuple[float, str]] = {}
        #: the newest (created_at, version) opened per entry: an older one is a rollback
        self._newest: dict[str, tuple[float, int]] = {}

    async def get(self, name: str) -> str:
        now = time.monotonic()
        cached = self._opened.get(name)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        entry = await self._store.vault_get(name)
        if entry is None:
            self._opened.pop(name, None)
            raise MissingSecret(name)
        state = (entry.created_at, entry.version)
        if state < self._newest.get(name, state):
            raise SecretRefused(f"vault entry `{name}` went back to version {entry.version} (rolled back)")
        try:
            aad = vault_aad(name, created_at=entry.created_at, version=entry.version)
            value = unseal(self._master, entry.sealed, aad=aad).decode("utf-8")
        except (SealError, UnicodeDecodeError) as exc:
            raise SecretRefused(f"vault entry `{name}` does not open under its stored version: {exc}") from exc
        self._newest[name] = state
        self._opened[name] = (now, value)
        if self._on_open is not None:
            self._on_open(value)
        return value
