"""``tether mcp pin|tools`` with the real executable against the real files MCP server.

pin -> tools (no drift, exit 0) -> the server changes under the same route (rug pull) ->
tools shows `changed` (exit 1) -> a pin file edited to approve the change is refused (exit 2)
-> pinning again approves the new definition and says it changed. Each pin is an ``mcp.pinned`` audit record. An HTTP route is
pinned with its vaulted secret injected, as the gateway would.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "mcp"))

from catalogue_kit import SECRET, SECRET_HEADER, SERVER, http_upstream
from cli_support import tether

from helpers import make_deployment
from tether.audit.chain import AuditRecord
from tether.config import Config
from tether.gateway.vault import store_secret
from tether.mcp.pins import PinsTampered, load_pins, pin_tools, pins_path, save_pins
from tether.store.open import open_store

ROUTE = """
[[gateway.mcp]]
name = "{name}"
{upstream}
tools = ["read_file", "list_directory"]
owner = "team-docs"
justification = "agents read the shared drive"
expires = 2099-01-01
timeout = 60
"""


def stdio_toml(marker: Path, *, stderr: str = "") -> str:
    env = f"FILES_SERVER_RUG_PULL_FILE = {json.dumps(str(marker))}" + (f', FILES_SERVER_STDERR = "{stderr}"' if stderr else "")
    upstream = f"command = {json.dumps([sys.executable, str(SERVER)])}\nenv = {{ {env} }}"
    return ROUTE.format(name="files", upstream=upstream)


def audit(config: Config, kind: str) -> list[AuditRecord]:
    async def read() -> list[AuditRecord]:
        store = await open_store(config)
        try:
            return [r for r in await store.audit_records(after=0, limit=10_000) if r.kind == kind]
        finally:
            await store.aclose()

    return asyncio.run(read())


def mcp(config: Config, *args: str) -> tuple[int, str, str]:
    done = tether("mcp", *args, "--config", str(config.path), timeout=120)
    return done.returncode, done.stdout, done.stderr


def as_json(out: str) -> Any:
    return json.loads(out)


def test_MCP_13_pin_then_rug_pull_then_tampered_pin_refused(tmp_path: Path) -> None:
    marker = tmp_path / "rug-pull"
    config = make_deployment(tmp_path / "d", extra_toml=stdio_toml(marker))

    code, out, _ = mcp(config, "tools", "files")
    assert code == 1 and "not pinned" in out  # nothing pinned: the route serves nothing, which is drift

    code, out, err = mcp(config, "pin", "files", "--json")
    assert code == 0, err
    pinned = as_json(out)
    assert {t["name"]: t["status"] for t in pinned["tools"]} == {"list_directory": "new", "read_file": "new",
                                                                  "write_file": "new"}  # fmt: skip
    assert {t["name"] for t in pinned["tools"] if not t["allowed"]} == {"write_file"}
    (record,) = audit(config, "mcp.pinned")
    assert record.principal == "operator:cli" and record.detail["route"] == "files"
    assert record.detail["tools"] == {t["name"]: t["digest"] for t in pinned["tools"]}

    code, out, _ = mcp(config, "tools", "files")
    assert code == 0 and "no drift" in out

    marker.touch()  # the upstream changes read_file behind the operator's back
    code, out, _ = mcp(config, "tools", "files", "--json")
    assert code == 1
    assert as_json(out)["drift"] == {"added": [], "removed": [], "changed": ["read_file"]}

    path = pins_path(config, "files")
    saved = path.read_text()
    document = json.loads(saved)
    document["tools"]["read_file"] = as_json(out)["tools"][1]["current"]  # approve the new definition by hand
    path.write_text(json.dumps(document))
    code, out, err = mcp(config, "tools", "files")
    assert code == 2 and "does not verify" in err and "tether mcp pin files" in err

    path.write_text(saved)  # positive control: the file as pinned verifies, and pinning again approves the change
    code, out, err = mcp(config, "pin", "files", "--json")
    assert code == 0, err
    assert {t["name"]: t["status"] for t in as_json(out)["tools"]}["read_file"] == "changed"
    assert len(audit(config, "mcp.pinned")) == 2


def test_unknown_route_is_a_configuration_error_and_verbose_shows_upstream_stderr(tmp_path: Path) -> None:
    config = make_deployment(tmp_path / "d", extra_toml=stdio_toml(tmp_path / "m", stderr="files server \\u001b[1mready"))
    code, _, err = mcp(config, "pin", "nope")
    assert code == 2 and "no MCP route `nope`" in err and "files" in err
    code, _, err = mcp(config, "tools", "files")
    assert code == 1 and "ready" not in err  # the upstream's stderr is logged, not shown...
    code, _, err = mcp(config, "tools", "files", "--verbose")
    assert code == 1 and "MCP upstream files stderr: files server \\x1b[1mready" in err  # ...unless asked, escaped


@pytest.fixture
def http_config(tmp_path: Path) -> Any:
    with http_upstream() as url:
        upstream = (f'url = "{url}"\nsecret = "files-key"\nheader = "{SECRET_HEADER}"\n'
                    'template = "{secret}"')  # fmt: skip
        yield make_deployment(tmp_path / "d", extra_toml=ROUTE.format(name="files-http", upstream=upstream))


def test_http_route_pinned_with_its_vaulted_secret(http_config: Config) -> None:
    code, _, err = mcp(http_config, "pin", "files-http")
    assert code == 1 and "files-key" in err and not pins_path(http_config, "files-http").exists()  # no secret yet
    store_secret(http_config, "files-key", SECRET, actor="test")
    code, out, err = mcp(http_config, "pin", "files-http")
    assert code == 0, err
    assert SECRET not in out + err
    code, out, _ = mcp(http_config, "tools", "files-http", "--json")
    assert code == 0 and as_json(out)["pinned"] is True


def test_master_key_rotation_re_signs_the_pins(tmp_path: Path) -> None:
    """A pin made under the old master key still verifies after ``tether master-key rotate``, and the
    old key no longer verifies it (it was re-signed, not left alone)."""
    config = make_deployment(tmp_path / "d", extra_toml=stdio_toml(tmp_path / "m"))
    catalogue = pin_tools("files", [{"name": "read_file", "description": "Read."}], now=1.0, by="operator:cli")
    save_pins(config, catalogue)
    old = config.master_key_file.read_bytes()
    done = tether("master-key", "rotate", "--config", str(config.path))
    assert done.returncode == 0, done.stderr
    assert "1 MCP pin file(s) re-signed" in done.stdout
    assert load_pins(config, "files") == catalogue
    config.master_key_file.write_bytes(old)
    with pytest.raises(PinsTampered, match="another master key"):
        load_pins(config, "files")
