"""``tether init`` and ``tether serve``: files, modes, idempotence, one-line config errors (exit 2)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from cli_support import one_line, serving, tether

from helpers import free_port

# runs the same whatever TETHER_TEST_STORE says: the PostgreSQL pass of scripts/test leaves it out
pytestmark = pytest.mark.store_independent


def _init(directory: Path, port: int, *extra: str) -> str:
    result = tether("init", "--dir", str(directory), "--issuer", f"http://127.0.0.1:{port}", *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _signing_keys(directory: Path) -> list[dict[str, Any]]:
    """The issuer keys as stored (public parts and state), read straight from the SQLite file."""
    conn = sqlite3.connect(directory / ".tether" / "tether.db")
    try:
        rows = conn.execute("SELECT kid, alg, retired_at, not_after, public_jwk FROM signing_keys ORDER BY rowid").fetchall()
    finally:
        conn.close()
    return [{"kid": r[0], "alg": r[1], "retired_at": r[2], "not_after": r[3], "jwk": json.loads(r[4])} for r in rows]


def _bundle_kids(directory: Path) -> list[str]:
    bundle = json.loads((directory / ".tether" / "bundles" / "tether.local.json").read_text())
    return [k["kid"] for k in bundle["keys"]]


def test_init_creates_config_master_key_and_keys(tmp_path: Path) -> None:
    port = free_port()
    out = _init(tmp_path, port)
    assert "created" in out
    config = tmp_path / "tether.toml"
    data = tmp_path / ".tether"
    assert config.is_file()
    assert f'issuer = "http://127.0.0.1:{port}"' in config.read_text()
    master = data / "master.key"
    assert stat.S_IMODE(master.stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert (data / "tether.db").is_file()
    sealed_path = data / "dev" / "tether.local.key.sealed"
    assert stat.S_IMODE(sealed_path.stat().st_mode) == 0o600
    bundle = json.loads((data / "bundles" / "tether.local.json").read_text())
    assert bundle["keys"] and all("d" not in k for k in bundle["keys"])
    (key,) = _signing_keys(tmp_path)
    assert key["alg"] == "ES256"
    assert key["retired_at"] is None
    assert "d" not in key["jwk"]
    # private keys are sealed at rest: no JWK private member or PEM in the clear
    sealed = sealed_path.read_text()
    assert '"d"' not in sealed and "PRIVATE KEY" not in sealed
    conn = sqlite3.connect(data / "tether.db")
    try:
        blob = conn.execute("SELECT sealed_private FROM signing_keys").fetchone()[0]
    finally:
        conn.close()
    assert b'"d"' not in bytes(blob) and b"PRIVATE KEY" not in bytes(blob)


def test_init_twice_keeps_every_key(tmp_path: Path) -> None:
    port = free_port()
    _init(tmp_path, port)
    master = (tmp_path / ".tether" / "master.key").read_bytes()
    sealed = (tmp_path / ".tether" / "dev" / "tether.local.key.sealed").read_bytes()
    bundle = _bundle_kids(tmp_path)
    signing = _signing_keys(tmp_path)

    again = _init(tmp_path, port)
    assert "kept" in again
    assert "created" not in again
    assert (tmp_path / ".tether" / "master.key").read_bytes() == master
    assert (tmp_path / ".tether" / "dev" / "tether.local.key.sealed").read_bytes() == sealed
    assert _bundle_kids(tmp_path) == bundle
    assert _signing_keys(tmp_path) == signing


def test_init_force_replaces_dev_key_and_adds_signing_key_but_never_the_master_key(tmp_path: Path) -> None:
    port = free_port()
    _init(tmp_path, port)
    master = (tmp_path / ".tether" / "master.key").read_bytes()
    bundle = _bundle_kids(tmp_path)
    (old,) = _signing_keys(tmp_path)

    _init(tmp_path, port, "--force")
    assert (tmp_path / ".tether" / "master.key").read_bytes() == master  # else every sealed key would be lost
    assert _bundle_kids(tmp_path) != bundle
    keys = {k["kid"]: k for k in _signing_keys(tmp_path)}
    assert set(keys) > {old["kid"]}
    assert keys[old["kid"]]["retired_at"] is not None  # still published until its tokens expire
    assert len([k for k in keys.values() if k["retired_at"] is None]) == 1


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``tether init`` for the module; each test works on a copy with its own port."""
    directory = tmp_path_factory.mktemp("template")
    _init(directory, 8700)
    return directory


def _deployment(template: Path, target: Path) -> tuple[Path, int]:
    shutil.copytree(template, target)  # keeps the 0600 / 0700 modes
    port = free_port()
    config = target / "tether.toml"
    config.write_text(config.read_text().replace("8700", str(port)))
    return target, port


def _serves(directory: Path, port: int, tmp_path: Path) -> None:
    with serving(directory / "tether.toml", f"http://127.0.0.1:{port}", log=tmp_path / "serve.log") as proc:
        assert proc.poll() is None


@pytest.mark.parametrize(
    ("breakage", "key"),
    [
        ("unknown_key", "tokens.hop_tll"),
        ("wrong_type", "tokens.hop_ttl"),
        ("bad_value", "tokens.clock_skew"),
        ("env_wrong_type", "tokens.hop_ttl"),
        ("master_key_permissions", "master_key"),
    ],
)
def test_serve_with_broken_config_exits_2_with_one_line_naming_the_key(
    template: Path, tmp_path: Path, breakage: str, key: str
) -> None:
    directory, port = _deployment(template, tmp_path / "d")
    config = directory / "tether.toml"
    original = config.read_text()
    master = directory / ".tether" / "master.key"
    env: dict[str, str] = {}
    if breakage == "unknown_key":
        config.write_text(original.replace("hop_ttl = 300", "hop_ttl = 300\nhop_tll = 300"))
    elif breakage == "wrong_type":
        config.write_text(original.replace("hop_ttl = 300", 'hop_ttl = "300"'))
    elif breakage == "bad_value":
        config.write_text(original.replace("clock_skew = 10", "clock_skew = 1000"))
    elif breakage == "env_wrong_type":
        env["TETHER_TOKENS_HOP_TTL"] = "soon"
    else:
        os.chmod(master, 0o644)

    result = tether("serve", "--config", str(config), env=env, timeout=30)
    assert result.returncode == 2, (result.stdout, result.stderr)
    line = one_line(result.stderr)
    assert key in line, line
    assert "Traceback" not in result.stderr

    # positive control: repaired, the same deployment serves
    config.write_text(original)
    os.chmod(master, 0o600)
    _serves(directory, port, tmp_path)


def test_serve_with_missing_config_exits_2(template: Path, tmp_path: Path) -> None:
    result = tether("serve", "--config", str(tmp_path / "nope.toml"), timeout=30)
    assert result.returncode == 2
    assert "config" in one_line(result.stderr)
    directory, port = _deployment(template, tmp_path / "d")
    _serves(directory, port, tmp_path)
