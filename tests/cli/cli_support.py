"""Run the real ``tether`` executable of this venv, with a timeout, and a ``tether serve`` subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

TETHER = str(Path(sys.prefix) / "bin" / "tether")


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update({"COLUMNS": "200", "NO_COLOR": "1", **(extra or {})})
    return env


def tether(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TETHER, *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd, env=_env(env))


def one_line(stderr: str) -> str:
    """Configuration errors are ONE clear line on stderr."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@contextlib.contextmanager
def serving(
    config: Path, url: str, *, log: Path, timeout: float = 20, verify: ssl.SSLContext | bool = True, args: tuple[str, ...] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    """``tether serve --config`` as a subprocess; yields once ``/healthz`` answers, kills it afterwards.
    ``verify``: how an https ``url`` is checked (an ``ssl.SSLContext`` trusting the dev CA)."""
    with log.open("wb") as sink:
        proc = subprocess.Popen([TETHER, "serve", "--config", str(config), *args], stdout=sink, stderr=sink, env=_env())
        try:
            deadline = time.monotonic() + timeout
            with httpx.Client(timeout=2.0, trust_env=False, verify=verify) as http:
                while True:
                    if proc.poll() is not None:
                        raise AssertionError(f"tether serve exited {proc.returncode}: {log.read_text()}")
                    try:
                        if http.get(url + "/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline:
                        raise AssertionError(f"tether serve did not become healthy: {log.read_text()}")
                    time.sleep(0.1)
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
