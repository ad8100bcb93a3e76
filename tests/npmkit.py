"""Independent Node.js clients for interop tests, installed from npm into a cache (never into the repo).

``tests/interop`` holds a ``package.json`` with exact versions and its ``package-lock.json``;
``interop_dir`` copies them and the client scripts into ``~/.cache/tether-tests/npm/<lock digest>``
and runs ``npm ci`` there once (the registry is reachable on this machine and in CI). Without
``node``/``npm`` the test is skipped locally and fails under ``CI=true``: an interop test that
silently does not run proves nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

SOURCE = Path(__file__).resolve().parent / "interop"


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"interop test cannot run under CI: {reason}")
    pytest.skip(reason)


def interop_dir() -> Path:
    """A directory holding the interop clients with their ``node_modules`` installed."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            _missing(f"`{tool}` is not installed")
    files = sorted(p for p in SOURCE.iterdir() if p.is_file())
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()[:16]
    target = Path.home() / ".cache" / "tether-tests" / "npm" / digest
    target.mkdir(parents=True, exist_ok=True)
    with (target.parent / f"{digest}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # xdist workers: one `npm ci` per directory at a time
        _install(target, files)
    return target


def _install(target: Path, files: list[Path]) -> None:
    if not (target / "node_modules" / ".installed").exists():
        for p in files:
            shutil.copy(p, target / p.name)
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=target, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            _missing(f"npm ci failed: {done.stderr[-500:]}")
        (target / "node_modules" / ".installed").touch()


def run_node(script: str, payload: dict[str, Any], *, timeout: float = 60.0) -> dict[str, Any]:
    """Run ``script`` (a file in ``tests/interop``) with ``payload`` as JSON on stdin; its stdout is JSON."""
    directory = interop_dir()
    done = subprocess.run(
        ["node", str(directory / script)],
        input=json.dumps(payload), capture_output=True, text=True, timeout=timeout, cwd=directory, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise AssertionError(f"{script} failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def stop_node(process: subprocess.Popen[str]) -> None:
    """Stop a node server a kit started: SIGTERM, then SIGKILL after 10 s; its pipe closed."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    if process.stdout is not None:
        process.stdout.close()
