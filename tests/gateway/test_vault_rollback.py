"""Vault entries cannot be rolled back by a database writer (issue 21 finding 7).

The seal of a vault value binds the entry's name, creation time and version, so an old
(perhaps leaked, rotated-out) value written back over a newer version does not open, and a
running gateway never accepts an older (creation, version) of an entry than one it has
opened. Real stores (SQLite and PostgreSQL), real sealing; the rows are rewritten with SQL,
as someone with database access but no master key would.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from services import Writer, run_tampered
from tether.gateway.vault import SecretCache, SecretRefused, put_secret
from tether.keys.legacy import reseal_legacy
from tether.keys.sealed import legacy_vault_aad, seal
from tether.store.protocol import Store

NOW = 1_800_000_000.0
MASTER = secrets.token_bytes(32)
BACKENDS = ["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.redis])]


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def two_versions(store: Store) -> bytes:
    """``crm`` at version 2 ("new-key"); returns version 1's sealed value ("leaked-key")."""
    first = await put_secret(store, MASTER, "crm", b"leaked-key", now=NOW, actor="test")
    await put_secret(store, MASTER, "crm", b"new-key", now=NOW + 10, actor="test")
    return first.sealed


def test_an_old_value_written_over_a_newer_version_is_refused(kind: str, tmp_path: Path) -> None:
    async def body(store: Store, sql: Writer) -> None:
        old = await two_versions(store)
        cache = SecretCache(store, MASTER, ttl=0)
        assert await cache.get("crm") == "new-key"  # positive control
        sql("UPDATE vault SET sealed = ? WHERE name = ?", (old, "crm"))
        with pytest.raises(SecretRefused):
            await cache.get("crm")
        with pytest.raises(SecretRefused):  # a gateway started afterwards refuses it too
            await SecretCache(store, MASTER, ttl=0).get("crm")

    run_tampered(kind, tmp_path, body)


def test_a_row_rolled_back_with_its_version_is_refused_by_a_running_gateway(kind: str, tmp_path: Path) -> None:
    async def body(store: Store, sql: Writer) -> None:
        old = await two_versions(store)
        cache = SecretCache(store, MASTER, ttl=0)
        assert await cache.get("crm") == "new-key"
        sql("UPDATE vault SET sealed = ?, version = 1 WHERE name = ?", (old, "crm"))
        with pytest.raises(SecretRefused):
            await cache.get("crm")
        # positive control: the operator rotates the key again, and the new value is served
        await put_secret(store, MASTER, "crm", b"rotated-key", now=NOW + 20, actor="test")
        assert await cache.get("crm") == "rotated-key"

    run_tampered(kind, tmp_path, body)


def test_a_value_sealed_for_another_entry_is_refused(kind: str, tmp_path: Path) -> None:
    async def body(store: Store, sql: Writer) -> None:
        await put_secret(store, MASTER, "crm", b"crm-key", now=NOW, actor="test")
        other = await put_secret(store, MASTER, "billing", b"billing-key", now=NOW, actor="test")
        sql("UPDATE vault SET sealed = ? WHERE name = ?", (other.sealed, "crm"))
        with pytest.raises(SecretRefused):
            await SecretCache(store, MASTER, ttl=0).get("crm")

    run_tampered(kind, tmp_path, body)


def test_legacy_entries_are_resealed_once_and_bound_from_then_on(kind: str, tmp_path: Path) -> None:
    async def body(store: Store, sql: Writer) -> None:
        await put_secret(store, MASTER, "crm", b"placeholder", now=NOW, actor="test")
        sql("UPDATE vault SET sealed = ? WHERE name = ?", (seal(MASTER, b"legacy-key", aad=legacy_vault_aad("crm")), "crm"))
        with pytest.raises(SecretRefused):
            await SecretCache(store, MASTER, ttl=0).get("crm")
        assert await reseal_legacy(store, MASTER, now=NOW) == ["vault entry crm"]
        assert await SecretCache(store, MASTER, ttl=0).get("crm") == "legacy-key"
        assert await reseal_legacy(store, MASTER, now=NOW) == []

    run_tampered(kind, tmp_path, body)


def test_a_legacy_entry_beside_bound_ones_is_not_resealed(kind: str, tmp_path: Path) -> None:
    """After the upgrade a legacy-sealed entry is an old row put back: it stays refused."""

    async def body(store: Store, sql: Writer) -> None:
        await put_secret(store, MASTER, "billing", b"billing-key", now=NOW, actor="test")  # sealed the new way
        await put_secret(store, MASTER, "crm", b"placeholder", now=NOW, actor="test")
        sql("UPDATE vault SET sealed = ? WHERE name = ?", (seal(MASTER, b"leaked-key", aad=legacy_vault_aad("crm")), "crm"))
        assert await reseal_legacy(store, MASTER, now=NOW) == []
        with pytest.raises(SecretRefused):
            await SecretCache(store, MASTER, ttl=0).get("crm")
        assert await SecretCache(store, MASTER, ttl=0).get("billing") == "billing-key"

    run_tampered(kind, tmp_path, body)
