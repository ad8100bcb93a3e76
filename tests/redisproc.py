"""A redis-server of the test's own, on default persistence, that the test can kill -9 and restart.

Its config names only ``port`` and ``dir`` (everything else is Redis's default: RDB snapshots
on the default schedule, no AOF), as an operator who installed Redis and changed nothing
would run it. Never the shared server on 6379.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tether.web.server import free_port

__all__ = ["DefaultRedis", "default_redis", "require_redis_server"]


def require_redis_server() -> None:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("redis-server not installed (CI=true: these tests may not be skipped)")
        pytest.skip("redis-server not installed")


@dataclass
class DefaultRedis:
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def config(self) -> Path:
        return self.directory / "redis.conf"

    def cli(self, *args: str) -> str:
        done = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, check=False, timeout=30)
        return done.stdout.decode(errors="replace").strip()

    def start(self) -> DefaultRedis:
        self.config.write_text(f"port {self.port}\ndir {self.directory}\n", encoding="utf-8")
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(["redis-server", str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while self.cli("ping") != "PONG":
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("redis-server did not start: " + (self.directory / "redis.log").read_text()[-2000:])
            time.sleep(0.05)
        # answering PING while still loading its RDB would be a different fault; wait it out
        while "loading:0" not in self.cli("info", "persistence"):
            if time.monotonic() > deadline:
                raise AssertionError("redis-server never finished loading")
            time.sleep(0.05)
        return self

    def kill9(self) -> None:
        """SIGKILL: no shutdown save, as when the host or the process dies."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def snapshot(self) -> None:
        """An RDB snapshot now, as the default ``save`` schedule takes one on a busy server."""
        assert self.cli("save") == "OK"


@contextmanager
def default_redis(directory: Path) -> Iterator[DefaultRedis]:
    require_redis_server()
    directory.mkdir(parents=True, exist_ok=True)
    server = DefaultRedis(free_port(), directory).start()
    try:
        yield server
    finally:
        server.kill9()
