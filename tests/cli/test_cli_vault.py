"""``tether vault put|rotate|list|delete`` and ``tether master-key rotate``, with the real executable.

Values come from stdin or ``--file``, never argv, and are never printed; ``vault list``
shows names, versions and ages only; a value with a control character is refused (it
would be injected into a header). Against a running gateway and a real upstream:
``vault rotate`` takes effect after the secret cache time, ``vault delete`` makes the
route answer 502 with a generic description, and after ``master-key rotate`` the STS
(restarted on the same directory) and the gateway still work with the unchanged
secret, while the old master key no longer opens the vault.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gateway"))

from gwkit import (
    GatewayEnv,
    Upstream,
    gateway_toml,
    route_toml,
    serve_gateway,
    serve_upstream,
    tether_cli,
    wait_until,
)

from helpers import RunningSts, running_sts
from tether.config import Config, load_config
from tether.keys.sealed import SealError, load_master_key, unseal, vault_aad
from tether.store.open import open_store
from tether.store.records import VaultEntry
from tether.sts.bootstrap import build_sts
from tether.web.server import ServerThread, free_port

VALUE = "crm_live/A1+b2=C3d4!e5f6g7"
OTHER = "crm_live/rotated+Z9=y8x7"


def entry(config: Config, name: str) -> VaultEntry | None:
    async def read() -> VaultEntry | None:
        store = await open_store(config)
        try:
            return await store.vault_get(name)
        finally:
            await store.aclose()

    return asyncio.run(read())


def opened(config: Config, name: str) -> str:
    found = entry(config, name)
    assert found is not None, f"no vault entry {name}"
    return unseal(
        load_master_key(config.master_key_file),
        found.sealed,
        aad=vault_aad(name, created_at=found.created_at, version=found.version),
    ).decode()


def vault(config: Config, *args: str, stdin: bytes | None = None) -> tuple[int, str]:
    result = tether_cli("vault", *args, "--config", str(config.path), stdin=stdin)
    output = (result.stdout + result.stderr).decode("utf-8", errors="replace")
    for secret in (VALUE, OTHER):
        assert secret not in output, f"`tether vault {' '.join(args)}` printed the value"
    return result.returncode, output


# -- put / rotate / list / delete ----------------------------------------------------------------
def test_put_reads_the_value_from_stdin(sts: RunningSts) -> None:
    code, output = vault(sts.config, "put", "crm-key", stdin=(VALUE + "\n").encode())
    assert code == 0, output
    assert "version 1" in output
    assert opened(sts.config, "crm-key") == VALUE  # the one trailing newline of `echo` is not part of it


def test_put_reads_the_value_from_a_file(sts: RunningSts, tmp_path: Path) -> None:
    source = tmp_path / "value.txt"
    source.write_text(VALUE + "\r\n", encoding="utf-8")
    code, output = vault(sts.config, "put", "crm-key", "--file", str(source))
    assert code == 0, output
    assert opened(sts.config, "crm-key") == VALUE


def test_the_value_cannot_be_given_on_the_command_line(sts: RunningSts) -> None:
    help_text = tether_cli("vault", "put", "--help").stdout.decode()
    assert "stdin" in help_text and "--file" in help_text
    usage = next(line for line in help_text.splitlines() if "Usage:" in line)
    assert usage.split("[OPTIONS]")[1].split() == ["{name}"]  # one argument: the name, no value
    assert "--value" not in help_text
    result = tether_cli("vault", "put", "crm-key", VALUE, "--config", str(sts.config.path))
    assert result.returncode == 2
    assert entry(sts.config, "crm-key") is None
    code, _ = vault(sts.config, "put", "crm-key", stdin=VALUE.encode())  # positive control
    assert code == 0 and opened(sts.config, "crm-key") == VALUE


BAD_VALUES = [b"abc\ndef", b"abc\r\ndef", b"abc\rdef", b"a\tb", b"a\x00b", b"a\x1b[31mb", "a\u2028b".encode(),
              b"\xff\xfe", b"\n", b""]  # fmt: skip


def test_a_value_with_control_characters_is_refused(sts: RunningSts) -> None:
    """A newline in a value injected into a header would be header injection (or request splitting)."""
    with ThreadPoolExecutor(max_workers=4) as pool:  # independent processes; none of them may store anything
        results = list(pool.map(lambda bad: vault(sts.config, "put", "crm-key", stdin=bad), BAD_VALUES))
    for bad, (code, output) in zip(BAD_VALUES, results, strict=True):
        assert code == 2, (bad, output)
        if len(bad) > 3:
            assert bad.decode("utf-8", errors="replace") not in output  # the refusal does not echo it
    assert entry(sts.config, "crm-key") is None
    code, _ = vault(sts.config, "put", "crm-key", stdin=b"plain value with spaces")  # positive control
    assert code == 0 and opened(sts.config, "crm-key") == "plain value with spaces"


def test_list_shows_names_versions_and_ages_only(sts: RunningSts) -> None:
    assert vault(sts.config, "put", "a-key", stdin=VALUE.encode())[0] == 0
    assert vault(sts.config, "put", "b-key", stdin=OTHER.encode())[0] == 0
    assert vault(sts.config, "rotate", "a-key", stdin=OTHER.encode())[0] == 0
    code, output = vault(sts.config, "list", "--json")
    assert code == 0
    rows = json.loads(output)
    assert [(r["name"], r["version"]) for r in rows] == [("a-key", 2), ("b-key", 1)]
    assert all(set(r) == {"name", "version", "age_days", "rotated_days_ago"} for r in rows)
    assert all(r["age_days"] >= 0 and r["rotated_days_ago"] >= 0 for r in rows)
    code, table = vault(sts.config, "list")
    assert code == 0 and "a-key" in table and "b-key" in table


def test_rotate_needs_an_existing_entry_and_bumps_the_version(sts: RunningSts) -> None:
    code, output = vault(sts.config, "rotate", "crm-key", stdin=OTHER.encode())
    assert code != 0 and "no vault entry" in output
    assert entry(sts.config, "crm-key") is None
    assert vault(sts.config, "put", "crm-key", stdin=VALUE.encode())[0] == 0
    code, output = vault(sts.config, "rotate", "crm-key", stdin=OTHER.encode())
    assert code == 0 and "version 2" in output
    assert opened(sts.config, "crm-key") == OTHER
    found = entry(sts.config, "crm-key")
    assert found is not None and found.version == 2


def test_delete(sts: RunningSts) -> None:
    assert vault(sts.config, "put", "crm-key", stdin=VALUE.encode())[0] == 0
    assert vault(sts.config, "delete", "crm-key")[0] == 0
    assert entry(sts.config, "crm-key") is None
    code, output = vault(sts.config, "delete", "crm-key")
    assert code != 0 and "no vault entry" in output
    assert json.loads(vault(sts.config, "list", "--json")[1]) == []


def test_vault_changes_are_audited_by_name_never_by_value(sts: RunningSts) -> None:
    assert vault(sts.config, "put", "crm-key", stdin=VALUE.encode())[0] == 0
    assert vault(sts.config, "rotate", "crm-key", stdin=OTHER.encode())[0] == 0
    assert vault(sts.config, "delete", "crm-key")[0] == 0
    records = [r for r in sts.audit() if r.kind.startswith("vault.")]
    assert [(r.kind, r.detail["name"]) for r in records] == [("vault.put", "crm-key"), ("vault.rotated", "crm-key"),
                                                             ("vault.deleted", "crm-key")]  # fmt: skip
    export = tether_cli("audit", "export", "--config", str(sts.config.path)).stdout.decode()
    assert "vault.rotated" in export and VALUE not in export and OTHER not in export


# -- with a running gateway ----------------------------------------------------------------------
@contextlib.contextmanager
def gateway_for(sts: RunningSts, upstream: Upstream) -> Iterator[GatewayEnv]:
    with serve_gateway(sts.config, sts) as gateway:
        env = GatewayEnv(sts=sts, config=sts.config, gateway=gateway, upstream=upstream, elsewhere=upstream, down_port=0)
        try:
            yield env
        finally:
            env.close()


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[RunningSts, Upstream]]:
    upstream = Upstream(key=VALUE)
    port = free_port()
    with serve_upstream(upstream) as up:
        extra = gateway_toml(port, secret_cache_seconds=1) + route_toml(
            "crm", f"{up.url}/apikey", secret="crm-key", inject="header", header="X-Api-Key", template="{secret}",
            max_requests_per_second=1000)  # fmt: skip
        with running_sts(tmp_path / "deploy", extra_toml=extra) as sts:
            yield sts, upstream


def test_rotate_is_used_by_the_gateway_after_its_cache_time(deployment: tuple[RunningSts, Upstream]) -> None:
    sts, upstream = deployment
    assert vault(sts.config, "put", "crm-key", stdin=VALUE.encode())[0] == 0
    with gateway_for(sts, upstream) as env:
        caller = env.caller("crm")
        assert caller.get("crm", "/v1/items").status_code == 200
        assert upstream.last()["headers"]["x-api-key"] == [VALUE]
        upstream.key = OTHER  # the vendor now takes only the new key
        assert vault(sts.config, "rotate", "crm-key", stdin=OTHER.encode())[0] == 0
        wait_until(lambda: caller.get("crm", "/v1/items").status_code == 200, timeout=5, what="the rotated value")
        assert upstream.last()["headers"]["x-api-key"] == [OTHER]


def test_delete_makes_the_route_answer_502_with_a_generic_description(deployment: tuple[RunningSts, Upstream]) -> None:
    sts, upstream = deployment
    assert vault(sts.config, "put", "crm-key", stdin=VALUE.encode())[0] == 0
    with gateway_for(sts, upstream) as env:
        caller = env.caller("crm")
        assert caller.get("crm", "/v1/items").status_code == 200
        assert vault(sts.config, "delete", "crm-key")[0] == 0
        wait_until(lambda: caller.get("crm", "/v1/items").status_code == 502, timeout=5, what="the deletion")
        response = caller.get("crm", "/v1/items")
        assert response.json() == {"error": "bad_gateway", "error_description": "upstream credential unavailable"}
        assert "crm-key" not in response.text
        assert vault(sts.config, "put", "crm-key", stdin=VALUE.encode())[0] == 0  # positive control
        wait_until(lambda: caller.get("crm", "/v1/items").status_code == 200, timeout=5, what="the new entry")


def test_master_key_rotate_rewraps_without_changing_the_secret(deployment: tuple[RunningSts, Upstream]) -> None:
    sts, upstream = deployment
    assert vault(sts.config, "put", "crm-key", stdin=VALUE.encode())[0] == 0
    old_master = load_master_key(sts.config.master_key_file)
    with gateway_for(sts, upstream) as env:
        assert env.caller("crm").get("crm", "/v1/items").status_code == 200
    result = tether_cli("master-key", "rotate", "--config", str(sts.config.path))
    assert result.returncode == 0, result.stderr
    assert VALUE.encode() not in result.stdout + result.stderr
    new_master = load_master_key(sts.config.master_key_file)
    assert new_master != old_master

    sealed = entry(sts.config, "crm-key")
    assert sealed is not None
    with pytest.raises(SealError):  # the old master key no longer opens the vault
        unseal(old_master, sealed.sealed, aad=vault_aad("crm-key", created_at=sealed.created_at, version=sealed.version))
    previous = sts.config.master_key_file.with_name(sts.config.master_key_file.name + ".previous")
    assert load_master_key(previous) == old_master  # kept aside for the operator, not used
    assert opened(sts.config, "crm-key") == VALUE  # the value itself is unchanged

    # restart the STS on the same directory and port: it must open its re-wrapped signing key
    port = int(sts.config.issuer.rsplit(":", 1)[1])
    sts.thread.stop()
    config = load_config(sts.config.path)
    rebuilt = build_sts(config, clock=sts.clock)
    thread = ServerThread(rebuilt.app, port).start()
    restarted = RunningSts(config=config, clock=sts.clock, sts=rebuilt, thread=thread)
    try:
        with gateway_for(restarted, upstream) as env:
            before = len(upstream.log)
            response = env.caller("crm").get("crm", "/v1/items")  # new task, new tokens, the restarted STS
            assert response.status_code == 200, response.text
            assert upstream.log[before]["headers"]["x-api-key"] == [VALUE]  # the upstream still accepts it
    finally:
        for http in restarted.clients:
            http.close()
        thread.stop()
