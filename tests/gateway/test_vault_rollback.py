"""Vault entries cannot be rolled back by a database writer (issue 21 finding 7, issue 12 finding 2).

The seal of a vault value binds the entry's name, creation time and version, so an old
(perhaps leaked, rotated-out) value written back over a newer version does not open. A whole
old row put back (its seal genuine for its own old state) is refused when it is older than
what the gateway host has opened before (its state file, across restarts) or than the newest
``vault.put``/``vault.rotated`` audit record naming the entry. Real stores (SQLite and
PostgreSQL), real sealing; the rows are rewritten with SQL, as someone with database access
but no master key would. A restart is a new ``SecretCache`` on the same state file, read
again from disk.
"""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path

import pytest
from gwkit import KEY, GatewayEnv, gateway_toml, put_secret_sync, route_toml, tether_cli, wait_until

from helpers import make_deployment
from services import Writer, run_tampered, store_sql
from tether.audit.chain import AuditEvent
from tether.errors import ConfigError
from tether.gateway.app import build_gateway
from tether.gateway.vault import STATE_FILE, SecretCache, SecretRefused, put_secret
from tether.keys.legacy import reseal_legacy
from tether.keys.sealed import legacy_vault_aad, seal, vault_aad
from tether.localstate import LocalState
from tether.store.protocol import Store
from tether.store.records import VaultEntry
from tether.web.server import free_port

NOW = 1_800_000_000.0
MASTER = secrets.token_bytes(32)
# a test taking `kind` opens a store of that kind whatever TETHER_TEST_STORE says: the PostgreSQL pass
# of scripts/test would run it unchanged, so it leaves it out
BACKENDS = [
    pytest.param("sqlite", marks=pytest.mark.store_independent),
    pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.redis, pytest.mark.store_independent]),
]


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def gateway_cache(store: Store, directory: Path) -> SecretCache:
    """A gateway's cache as it starts (or restarts): its state file in ``directory``, read from disk."""
    return SecretCache(store, MASTER, LocalState(directory / STATE_FILE), ttl=0)


def put_back(sql: Writer, row: VaultEntry) -> None:
    """Write a saved row back whole: its seal is genuine for its own (old) state."""
    sql("UPDATE vault SET sealed = ?, created_at = ?, version = ? WHERE name = ?",
        (row.sealed, row.created_at, row.version, row.name))  # fmt: skip


async def old_release_put(store: Store, value: bytes, *, version: int, now: float) -> VaultEntry:
    """``crm`` stored as a release before this one did: sealed to its state, but its audit record
    does not say which state (no anchor in the audit log)."""
    event = AuditEvent(kind="vault.put" if version == 1 else "vault.rotated", outcome="ok", principal="test",
                       detail={"name": "crm", "bytes": len(value)})  # fmt: skip
    sealed = seal(MASTER, value, aad=vault_aad("crm", created_at=NOW, version=version))
    return await store.vault_put("crm", sealed, version=version, now=now, audit=event)


async def recreate(store: Store, name: str, value: bytes) -> None:
    """What the operator does after a refusal: delete the entry and put it again (``tether vault delete``/``put``)."""
    assert await store.vault_delete(name, now=NOW + 20, audit=AuditEvent(kind="vault.deleted", outcome="ok"))
    await put_secret(store, MASTER, name, value, now=NOW + 21, actor="test")


async def two_versions(store: Store) -> bytes:
    """``crm`` at version 2 ("new-key"); returns version 1's sealed value ("leaked-key")."""
    first = await put_secret(store, MASTER, "crm", b"leaked-key", now=NOW, actor="test")
    await put_secret(store, MASTER, "crm", b"new-key", now=NOW + 10, actor="test")
    return first.sealed


def test_an_old_value_written_over_a_newer_version_is_refused(kind: str, tmp_path: Path) -> None:
    async def body(store: Store, sql: Writer) -> None:
        old = await two_versions(store)
        cache = gateway_cache(store, tmp_path)
        assert await cache.get("crm") == "new-key"  # positive control
        sql("UPDATE vault SET sealed = ? WHERE name = ?", (old, "crm"))
        with pytest.raises(SecretRefused):
            await cache.get("crm")
        with pytest.raises(SecretRefused):  # a gateway started afterwards refuses it too
            await gateway_cache(store, tmp_path).get("crm")

    run_tampered(kind, tmp_path, body)


def test_a_row_rolled_back_with_its_version_is_refused_by_a_running_gateway(kind: str, tmp_path: Path) -> None:
    async def body(store: Store, sql: Writer) -> None:
        old = await two_versions(store)
        cache = gateway_cache(store, tmp_path)
        assert await cache.get("crm") == "new-key"
        sql("UPDATE vault SET sealed = ?, version = 1 WHERE name = ?", (old, "crm"))
        with pytest.raises(SecretRefused):
            await cache.get("crm")
        # positive control: the operator re-creates the entry (delete, put), and the new value is served
        await recreate(store, "crm", b"rotated-key")
        assert await cache.get("crm") == "rotated-key"

    run_tampered(kind, tmp_path, body)


def test_a_value_sealed_for_another_entry_is_refused(kind: str, tmp_path: Path) -> None:
    async def body(store: Store, sql: Writer) -> None:
        await put_secret(store, MASTER, "crm", b"crm-key", now=NOW, actor="test")
        other = await put_secret(store, MASTER, "billing", b"billing-key", now=NOW, actor="test")
        sql("UPDATE vault SET sealed = ? WHERE name = ?", (other.sealed, "crm"))
        with pytest.raises(SecretRefused):
            await gateway_cache(store, tmp_path).get("crm")

    run_tampered(kind, tmp_path, body)


def test_legacy_entries_are_resealed_once_and_bound_from_then_on(kind: str, tmp_path: Path) -> None:
    async def body(store: Store, sql: Writer) -> None:
        await put_secret(store, MASTER, "crm", b"placeholder", now=NOW, actor="test")
        sql("UPDATE vault SET sealed = ? WHERE name = ?", (seal(MASTER, b"legacy-key", aad=legacy_vault_aad("crm")), "crm"))
        with pytest.raises(SecretRefused):
            await gateway_cache(store, tmp_path).get("crm")
        assert await reseal_legacy(store, MASTER, now=NOW) == ["vault entry crm"]
        assert await gateway_cache(store, tmp_path).get("crm") == "legacy-key"
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
            await gateway_cache(store, tmp_path).get("crm")
        assert await gateway_cache(store, tmp_path).get("billing") == "billing-key"

    run_tampered(kind, tmp_path, body)


# -- issue 12 finding 2: across restarts, and on a host that never opened the entry ------------------
def test_the_reviewers_attack_is_refused_after_a_restart(kind: str, tmp_path: Path) -> None:
    """Version 1 saved, version 2 stored and opened, version 1's row written back, the gateway restarted."""

    async def body(store: Store, sql: Writer) -> None:
        saved = await put_secret(store, MASTER, "crm", b"leaked-key", now=NOW, actor="test")
        await put_secret(store, MASTER, "crm", b"new-key", now=NOW + 10, actor="test")
        assert await gateway_cache(store, tmp_path).get("crm") == "new-key"
        put_back(sql, saved)
        with pytest.raises(SecretRefused) as refused:
            await gateway_cache(store, tmp_path).get("crm")
        message = str(refused.value)
        assert "`crm` is at version 1" in message and "version 2" in message and "opened here before" in message
        assert "leaked-key" not in message and "new-key" not in message
        # positive control: the operator re-creates the entry after the restart, and that value is served
        await recreate(store, "crm", b"rotated-key")
        assert await gateway_cache(store, tmp_path).get("crm") == "rotated-key"

    run_tampered(kind, tmp_path, body)


def test_the_state_file_alone_refuses_a_rollback_across_restarts(kind: str, tmp_path: Path) -> None:
    """Entries written by an older release give the audit log no anchor: the state file refuses on
    its own, and a brand-new host with no state file trusts the row (what remains, README)."""

    async def body(store: Store, sql: Writer) -> None:
        saved = await old_release_put(store, b"leaked-key", version=1, now=NOW)
        await old_release_put(store, b"new-key", version=2, now=NOW + 10)
        assert await gateway_cache(store, tmp_path).get("crm") == "new-key"
        assert json.loads((tmp_path / STATE_FILE).read_text()) == {"crm": [NOW, 2]}
        put_back(sql, saved)
        with pytest.raises(SecretRefused):
            await gateway_cache(store, tmp_path).get("crm")
        assert await gateway_cache(store, tmp_path / "new-host").get("crm") == "leaked-key"

    run_tampered(kind, tmp_path, body)


def test_a_host_that_never_opened_the_entry_refuses_a_row_older_than_the_audit_log(kind: str, tmp_path: Path) -> None:
    async def body(store: Store, sql: Writer) -> None:
        saved = await put_secret(store, MASTER, "crm", b"leaked-key", now=NOW, actor="test")
        await put_secret(store, MASTER, "crm", b"new-key", now=NOW + 10, actor="test")
        # positive control: a new host is served the current version
        assert await gateway_cache(store, tmp_path / "first-host").get("crm") == "new-key"
        put_back(sql, saved)
        with pytest.raises(SecretRefused) as refused:
            await gateway_cache(store, tmp_path / "new-host").get("crm")
        assert "version 2" in str(refused.value) and "audit log (seq " in str(refused.value)
        assert not (tmp_path / "new-host" / STATE_FILE).exists(), "a refused row must not become a mark"

    run_tampered(kind, tmp_path, body)


def test_an_appended_record_naming_the_old_state_does_not_unlock_a_rollback(kind: str, tmp_path: Path) -> None:
    # a database writer without the master key can append a correctly linked record (the chain is
    # unkeyed until a checkpoint signs it) naming version 1, then put version 1's row back: a new
    # host still refuses it, as the greatest state ever recorded is version 2
    async def body(store: Store, sql: Writer) -> None:
        saved = await put_secret(store, MASTER, "crm", b"leaked-key", now=NOW, actor="test")
        await put_secret(store, MASTER, "crm", b"new-key", now=NOW + 10, actor="test")
        forged = AuditEvent(kind="vault.put", outcome="ok", principal="test",
                            detail={"name": "crm", "created_at": saved.created_at, "version": 1})  # fmt: skip
        await store.append_audit(forged, now=NOW + 30)
        assert await gateway_cache(store, tmp_path / "first-host").get("crm") == "new-key"  # control
        put_back(sql, saved)
        with pytest.raises(SecretRefused) as refused:
            await gateway_cache(store, tmp_path / "new-host").get("crm")
        assert "version 2" in str(refused.value)

    run_tampered(kind, tmp_path, body)


def test_a_recreated_entry_is_served_and_its_old_incarnation_refused(kind: str, tmp_path: Path) -> None:
    """Deleted and put again, an entry is version 1 of a newer creation: served above the old
    version 2 (positive control), and the old entry's last row, put back, is refused."""

    async def body(store: Store, sql: Writer) -> None:
        await two_versions(store)
        assert await gateway_cache(store, tmp_path).get("crm") == "new-key"
        stale = await store.vault_get("crm")
        assert stale is not None
        await store.vault_delete("crm", now=NOW + 30, audit=AuditEvent(kind="vault.deleted", outcome="ok"))
        await put_secret(store, MASTER, "crm", b"fresh-key", now=NOW + 40, actor="test")
        assert await gateway_cache(store, tmp_path).get("crm") == "fresh-key"
        put_back(sql, stale)
        for host in (tmp_path, tmp_path / "new-host"):  # by the state file, and by the audit log
            with pytest.raises(SecretRefused):
                await gateway_cache(store, host).get("crm")

    run_tampered(kind, tmp_path, body)


@pytest.mark.parametrize("damage", ["garbage", "not an object", "a directory"])
def test_a_state_file_the_gateway_cannot_read_stops_its_start(damage: str, tmp_path: Path) -> None:
    extra = gateway_toml(free_port()) + route_toml("crm", "http://127.0.0.1:9/crm", secret="crm")
    config = make_deployment(tmp_path / "deployment", extra_toml=extra)
    state = config.data_dir / STATE_FILE
    # positive control: a readable state file is loaded as the gateway is built
    state.write_text(json.dumps({"crm": [NOW, 2]}), encoding="utf-8")
    assert build_gateway(config).vault_marks.get("crm") == [NOW, 2]
    if damage == "a directory":
        state.unlink()
        state.mkdir()
    else:
        state.write_text("{not json" if damage == "garbage" else "[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigError, match="not readable local state"):
        build_gateway(config)
    result = tether_cli("gateway", "--config", str(config.path))
    output = (result.stdout + result.stderr).decode()
    assert result.returncode == 2, output
    assert str(state) in output and "not readable local state" in output and "Traceback" not in output


def test_a_rolled_back_entry_answers_502_and_logs_the_entry_and_both_versions(
    gw: GatewayEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """At the running gateway (route ``rolled``), once its one-second cache of the value passes."""
    caplog.set_level(logging.ERROR, logger="tether.gateway")
    put_secret_sync(gw.config, "rolled-key", "leaked-old-key")
    [saved] = store_sql(gw.config, "SELECT sealed, created_at, version FROM vault WHERE name = ?", ("rolled-key",))
    put_secret_sync(gw.config, "rolled-key", KEY)
    agent = gw.caller("rolled")
    before = len(gw.upstream.log)
    assert agent.get("rolled", "/v1/items").status_code == 200  # version 2 opened
    store_sql(gw.config, "UPDATE vault SET sealed = ?, created_at = ?, version = ? WHERE name = ?", (*saved, "rolled-key"))
    wait_until(lambda: agent.get("rolled", "/v1/items").status_code == 502, what="the rolled-back row refused")
    refused = agent.get("rolled", "/v1/items")
    assert (refused.status_code, refused.json()["error"]) == (502, "bad_gateway")
    sent = [r["headers"].get("x-api-key") for r in gw.upstream.log[before:]]
    assert ["leaked-old-key"] not in sent, "the rolled-back value reached the upstream"
    logged = [r.getMessage() for r in caplog.records if "rolled-key" in r.getMessage()]
    assert any("`rolled-key` is at version 1" in m and "version 2" in m for m in logged), logged
    assert not any("leaked-old-key" in m or KEY in m for m in logged)
    # positive control: the operator re-creates the entry (delete, put), and the gateway serves it
    assert tether_cli("vault", "delete", "rolled-key", "--config", str(gw.config.path)).returncode == 0
    put_secret_sync(gw.config, "rolled-key", KEY)
    wait_until(lambda: agent.get("rolled", "/v1/items").status_code == 200, what="the rotated entry served")


def test_rotating_a_rolled_back_entry_is_refused_and_delete_then_put_works(kind: str, tmp_path: Path) -> None:
    """A rotation on top of a row put back would seal the new value for a version an old value had."""

    async def body(store: Store, sql: Writer) -> None:
        old = await two_versions(store)
        sql("UPDATE vault SET sealed = ?, version = 1 WHERE name = ?", (old, "crm"))
        with pytest.raises(ValueError, match="rolled back"):
            await put_secret(store, MASTER, "crm", b"rotated-key", now=NOW + 20, actor="test")
        assert await store.vault_delete("crm", now=NOW + 21, audit=AuditEvent(kind="vault.deleted", outcome="ok"))
        await put_secret(store, MASTER, "crm", b"fresh-key", now=NOW + 22, actor="test")
        assert await gateway_cache(store, tmp_path).get("crm") == "fresh-key"

    run_tampered(kind, tmp_path, body)
