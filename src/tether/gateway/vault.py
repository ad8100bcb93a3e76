"""The vault: legacy secrets sealed under the master key, and a short-lived cache of opened ones.

Values go in through ``put_secret`` (never from argv) and come out only inside the gateway, to
be injected upstream. Each seal's associated data binds the value to its name, its entry's
creation time and its version (``keys.sealed.vault_aad``), so a blob cannot move between
entries. A whole old row, genuinely sealed for its old state, is refused when older than
what this host has opened (``gateway-vault.state``, via ``tether.localstate``) or than the
newest ``vault.put``/``vault.rotated`` audit record naming it: the chain is hash-linked and
signed, so a database writer cannot quietly drop that record.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable

from tether.audit.chain import AuditEvent, AuditRecord
from tether.config import Config
from tether.errors import ConfigError, TetherError
from tether.keys.sealed import SealError, load_master_key, seal, unseal, vault_aad
from tether.localstate import LocalState
from tether.store.open import open_store
from tether.store.protocol import Store
from tether.store.records import VaultEntry

__all__ = ["STATE_FILE", "MissingSecret", "SecretCache", "SecretRefused", "opened_marks", "put_secret", "store_secret",
           "vault_aad"]  # fmt: skip

MAX_SECRET_BYTES = 16 * 1024
#: the gateway's newest opened (created_at, version) per entry, in the data directory
STATE_FILE = "gateway-vault.state"

State = tuple[float, int]


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
    recorded = _recorded_state(await store.vault_latest_audit(name)) if existing else None
    if existing is not None and recorded is not None and (existing.created_at, existing.version) < recorded:
        # rotating on top of a row put back would give the new value a version an old one had
        raise ValueError(
            f"vault entry `{name}` was rolled back (its row is at version {existing.version}, the audit log"
            f" recorded version {recorded[1]}): delete it and put it again"
        )
    kind = "vault.rotated" if existing else "vault.put"
    created, version = (existing.created_at, existing.version + 1) if existing else (now, 1)
    # the state the value is sealed for: the gateway refuses a row older than the newest recorded
    detail = {"name": name, "bytes": len(value), "version": version, "created_at": created}
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


def opened_marks(config: Config) -> LocalState:
    """The gateway's ``STATE_FILE``. One it cannot read is a startup error (``ConfigError``): starting
    without it would forget every entry's newest state, which is what a rollback needs."""
    try:
        return LocalState(config.data_dir / STATE_FILE)
    except OSError as exc:
        raise ConfigError(
            "data_dir", f"{exc}; restore it from a backup, or remove it (this host then checks vault rows "
            "against the audit log only)",
        ) from exc  # fmt: skip


class SecretCache:
    def __init__(self, store: Store, master: bytes, marks: LocalState, *, ttl: float = 30.0,
                 on_open: Callable[[str], None] | None = None) -> None:  # fmt: skip
        """``marks`` keeps the newest (created_at, version) opened per entry (``opened_marks``);
        ``on_open`` is told every value opened (the gateway registers it with its log redaction)."""
        self._store = store
        self._master = master
        self._marks = marks
        self._ttl = ttl
        self._on_open = on_open
        self._opened: dict[str, tuple[float, str]] = {}

    def forget(self, name: str) -> None:
        """Open ``name`` from the store next time (the gateway has just rotated it, or is about to present it once)."""
        self._opened.pop(name, None)

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
        opened = self._opened_state(name)
        await self._refuse_older(name, state, opened)
        try:
            aad = vault_aad(name, created_at=entry.created_at, version=entry.version)
            value = unseal(self._master, entry.sealed, aad=aad).decode("utf-8")
        except (SealError, UnicodeDecodeError) as exc:
            raise SecretRefused(f"vault entry `{name}` does not open under its stored version: {exc}") from exc
        if opened is None or state > opened:
            self._marks.put(name, list(state))
        self._opened[name] = (now, value)
        if self._on_open is not None:
            self._on_open(value)
        return value

    async def _refuse_older(self, name: str, state: State, opened: State | None) -> None:
        """Refuse a row older than this host has opened, or than the newest state the audit log records."""
        if opened is not None and state < opened:
            raise SecretRefused(_rolled_back(name, state, opened, "was opened here before"))
        record = await self._store.vault_latest_audit(name)
        recorded = _recorded_state(record)
        if record is not None and recorded is not None and state < recorded:
            raise SecretRefused(_rolled_back(name, state, recorded, f"is recorded in the audit log (seq {record.seq})"))

    def _opened_state(self, name: str) -> State | None:
        mark = self._marks.get(name)
        if mark is None:
            return None
        state = _state(mark)
        if state is None:  # edited by hand: nothing can be trusted against it
            raise SecretRefused(f"`{self._marks.path}` holds no readable state for vault entry `{name}`")
        return state


def _state(value: object) -> State | None:
    """A (created_at, version) from JSON: ``[number, integer]``, else None."""
    match value:
        case [int() | float() as created, int() as version] if not isinstance(version, bool):
            return float(created), version
    return None


def _recorded_state(record: AuditRecord | None) -> State | None:
    """The state a ``vault.put``/``vault.rotated`` record says was stored (None from releases that did not say)."""
    if record is None:
        return None
    return _state([record.detail.get("created_at"), record.detail.get("version")])


def _rolled_back(name: str, state: State, newer: State, where: str) -> str:
    """The refusal (logged by the gateway): the entry and both versions, never a value."""
    return f"vault entry `{name}` is at {_shown(state)} but {_shown(newer)} {where}: an old row was put back"


def _shown(state: State) -> str:
    created = dt.datetime.fromtimestamp(state[0], dt.UTC).isoformat(timespec="milliseconds")
    return f"version {state[1]} (entry created {created})"
