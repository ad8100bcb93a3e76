"""``pip install tether`` with no extra is the SDKs: an agent and a resource server work from it
against a real STS, and nothing of the server, the CLI or the scale-out store is installed or
imported; the ``tether`` command there names the extra it needs.

One fresh venv per run, installed as the README says (``pip install -c constraints.txt .``,
from a copy of the tree so the work tree gets no build output); pip's cache makes it quick.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import AGENT, FEED_SUBSCRIBER, SVC_RS, create_task, running_sts

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).with_name("base_install_probe.py")
AUDIENCE = "http://127.0.0.1:9001"  # the starter deployment's resource (create_task's default)

#: distributions of the server, postgres and test extras (and what they bring) that the SDKs must not need
NOT_IN_BASE = {
    "aiohttp", "click", "httptools", "prometheus-client", "psycopg", "psycopg-pool", "pygments", "pyyaml",
    "redis", "rich", "spiffe", "typer", "uvicorn", "uvloop", "yarl", "mcp", "pytest",
}  # fmt: skip
#: their top-level import names
NOT_IMPORTED = {
    "aiohttp", "click", "httptools", "prometheus_client", "psycopg", "psycopg_pool", "pygments", "yaml",
    "redis", "rich", "spiffe", "typer", "uvicorn", "uvloop", "yarl", "mcp",
}  # fmt: skip
BASE = {"tether", "cryptography", "joserfc", "starlette", "httpx", "sniffio", "cedarpy"}


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``bin`` folder of a fresh venv holding ``pip install -c constraints.txt .`` and nothing else.

    Built once per run: xdist workers share the base temporary folder and take turns on its lock."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "base-install"
    root.mkdir(exist_ok=True)
    bin_dir = root / "venv" / "bin"
    with (root / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "ready").exists():
            _install_base(root)
            (root / "ready").touch()
    return bin_dir


def _install_base(root: Path) -> None:
    tree = root / "tree"
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"), dirs_exist_ok=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, tree / name)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(root / "venv")], check=True)
    install = [str(root / "venv" / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done = subprocess.run(
        [*install, "-c", str(ROOT / "constraints.txt"), str(tree)], check=False, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def _distributions(bin_dir: Path) -> set[str]:
    code = "import importlib.metadata as m, json; print(json.dumps([d.metadata['Name'] for d in m.distributions()]))"
    out = subprocess.run([str(bin_dir / "python"), "-c", code], capture_output=True, text=True, check=True).stdout
    return {name.lower().replace("_", "-") for name in json.loads(out)}


def test_base_install_is_the_sdks_without_server_extras(base_venv: Path) -> None:
    installed = _distributions(base_venv)
    assert installed >= BASE
    assert not installed & NOT_IN_BASE, sorted(installed & NOT_IN_BASE)


def test_DPOP_14_sdks_from_base_install_work_against_a_real_sts(base_venv: Path, tmp_path: Path) -> None:
    """The agent SDK takes a hop token; the resource SDK, following the feed, accepts it with the
    agent's proof and refuses it with a proof from another key (DPOP-14), importing no extra."""
    with running_sts(tmp_path, extra_toml=FEED_SUBSCRIBER) as sts:
        task = create_task(sts, audiences=[AUDIENCE], scopes=["wiki:read"])
        config = sts.config
        args = [sts.url, str(config.data_dir), str(config.master_key_file), task["id"], AUDIENCE, AGENT, SVC_RS]
        run = subprocess.run(
            [str(base_venv / "python"), str(PROBE), *args], check=False, capture_output=True, text=True, timeout=120
        )
    assert run.returncode == 0, run.stderr
    result: dict[str, Any] = json.loads(run.stdout)
    assert result["refused"] == {"error": "invalid_token", "status": 401}
    assert result["seen"] == {"agent": AGENT, "task": task["id"], "scopes": ["wiki:read"], "jkt": result["agent_jkt"]}
    assert {"tether", "httpx", "joserfc", "cedarpy", "starlette"} <= set(result["modules"])
    assert not set(result["modules"]) & NOT_IMPORTED, result["modules"]


def test_cli_without_server_extra_names_the_extra(base_venv: Path) -> None:
    run = subprocess.run([str(base_venv / "tether"), "--help"], check=False, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stderr.strip() == (
        "tether: typer is not installed; the command needs the server extra: pip install 'tether[server]'"
    )
    assert run.stdout == ""
