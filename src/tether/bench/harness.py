"""Benchmark plumbing: deployments, server processes pinned to a core, the load-generator process.

The server under test runs alone on core 0 and the load generator on core 1
(``taskset``), so "per core" figures are what one core of STS achieves.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

import tether.features  # noqa: F401  (the feature tables are registered before a config is loaded)
from tether.agent.proof import DPoPKey
from tether.bench.procstat import core_busy_seconds, cpu_seconds
from tether.config import Config, load_config
from tether.identity.dev_issuer import DevTrustDomain
from tether.keys.sealed import load_master_key
from tether.provision import initialize, render_config
from tether.web.server import free_port

__all__ = [
    "Load",
    "Server",
    "bench_deployment",
    "core_busy_seconds",
    "cpu_seconds",
    "loadgen_command",
    "percentile",
    "rss_kib",
    "run_loadgen",
    "serve",
    "serve_process",
    "summarise",
    "uvicorn_command",
]

CORES = os.cpu_count() or 1


def _pin(core: str) -> list[str]:
    return ["taskset", "-c", core] if shutil.which("taskset") and CORES >= 2 else []


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class Load:
    ok: int
    refused: int
    errors: int
    elapsed: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int]

    @property
    def throughput(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0


def summarise(raw: dict[str, Any], ok_status: int = 200) -> Load:
    statuses = raw["statuses"]
    latencies = [x * 1000 for x in raw["latencies"]]
    ok = statuses.get(str(ok_status), 0)
    refused = statuses.get("503", 0)
    return Load(
        ok=ok,
        refused=refused,
        errors=sum(statuses.values()) - ok - refused,
        elapsed=raw["elapsed"],
        p50_ms=statistics.median(latencies) if latencies else float("nan"),
        p99_ms=percentile(latencies, 0.99),
        statuses=statuses,
    )


def loadgen_command(spec: Path, out: Path) -> list[str]:
    """The load generator process, pinned to core 1 (the server under test has core 0)."""
    return [*_pin("1"), sys.executable, "-m", "tether.bench.loadgen", str(spec), str(out)]


def uvicorn_command(app: str, port: int) -> list[str]:
    """``python -m uvicorn APP`` on the stack tether serves with (httptools, uvloop), quietly."""
    return [sys.executable, "-m", "uvicorn", app, "--port", str(port), "--http", "httptools", "--loop", "uvloop",
            "--log-level", "warning", "--no-access-log"]  # fmt: skip


def run_loadgen(
    url: str,
    requests: list[bytes],
    *,
    concurrency: int,
    duration: float,
    tls: dict[str, str] | None = None,
    new_connection: bool = False,
    watch: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Replay ``requests`` against ``url`` from a separate process pinned to core 1 (``tls``:
    ``loadgen.tls_context``'s files, for an https ``url``; ``watch``: ``{"pid", "core"}`` of the
    server, whose CPU the generator reads at the edges of its window)."""
    host, port = url.split("//", 1)[1].split(":")
    with tempfile.TemporaryDirectory() as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec.write_text(
            json.dumps(
                {
                    "host": host,
                    "port": int(port),
                    "concurrency": concurrency,
                    "duration": duration,
                    "requests": [r.hex() for r in requests],
                    "tls": tls,
                    "new_connection": new_connection,
                    "watch": watch,
                }
            )
        )
        subprocess.run(  # noqa: S603 - our own interpreter and module
            loadgen_command(spec, out),
            check=True,
            timeout=duration + 120,
        )
        result: dict[str, Any] = json.loads(out.read_text())
        return result


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


@contextmanager
def serve(
    args: list[str], url: str, *, core: str = "0", health: str = "/healthz", verify: ssl.SSLContext | bool = True
) -> Iterator[Server]:
    """Start ``tether ARGS`` (or ``python -m ...``) pinned to ``core`` and wait until it answers
    (``verify``: how to check an https server's certificate)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    with serve_process(args, url, core=core, health=health, verify=verify, env=env) as server:
        yield server


@contextmanager
def serve_process(
    args: list[str],
    url: str,
    *,
    core: str = "0",
    health: str = "/healthz",
    verify: ssl.SSLContext | bool = True,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[Server]:
    """Start any server process pinned to ``core``, wait until ``url + health`` answers 200, stop it after."""
    command = [*_pin(core), *args]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd)  # noqa: S603
    server = Server(url, process)
    try:
        deadline = time.monotonic() + 30
        with httpx.Client(trust_env=False, timeout=1.0, verify=verify) as http:
            while True:
                try:
                    if http.get(url + health).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{' '.join(args[:2])} did not start")
                time.sleep(0.05)
        yield server
    finally:
        server.stop()


def tether_bin() -> str:
    return str(Path(sys.prefix) / "bin" / "tether")


@dataclass
class Deployment:
    config: Config
    domain: DevTrustDomain

    @property
    def url(self) -> str:
        return self.config.issuer


def bench_deployment(directory: Path, *, extra: str = "", store_toml: str = "") -> Deployment:
    """A deployment tuned for load: big task caps, long-lived SVIDs for the pre-built requests."""
    issuer = f"http://127.0.0.1:{free_port()}"
    directory.mkdir(parents=True, exist_ok=True)
    text = render_config(issuer).replace("max_tokens = 10000", "max_tokens = 10000000")
    if store_toml:
        text = text.replace('store = "sqlite"', 'store = "postgres"') + store_toml
    (directory / "tether.toml").write_text(text + extra, encoding="utf-8")
    initialize(directory, issuer=issuer)
    config = load_config(directory / "tether.toml")
    domain = DevTrustDomain.load(config.data_dir, "tether.local", load_master_key(config.master_key_file))
    return Deployment(config, domain)


class Actor:
    """A client of the STS under test: its own DPoP key and the server's current nonce."""

    def __init__(self, deployment: Deployment, http: httpx.Client, key: DPoPKey | None = None) -> None:
        self.d = deployment
        self.http = http
        self.key = key or DPoPKey()
        self.nonce: str | None = None

    def token(self, form: dict[str, str]) -> dict[str, Any]:
        url = self.d.url + "/token"
        for _ in range(2):
            response = self.http.post(url, data=form, headers={"DPoP": self.key.proof("POST", url, nonce=self.nonce)})
            self.nonce = response.headers.get("dpop-nonce", self.nonce)
            if response.status_code == 400 and response.json().get("error") == "use_dpop_nonce":
                continue
            response.raise_for_status()
            body: dict[str, Any] = response.json()
            return body
        raise RuntimeError(response.text)

    def api(self, method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
        url = self.d.url + path
        for _ in range(2):
            proof = self.key.proof(method, url, nonce=self.nonce, access_token=token)
            response = self.http.request(method, url, headers={"Authorization": f"DPoP {token}", "DPoP": proof}, **kwargs)
            self.nonce = response.headers.get("dpop-nonce", self.nonce)
            if response.status_code == 401 and "use_dpop_nonce" in response.headers.get("www-authenticate", ""):
                continue
            return response
        return response

    def svid(self, spiffe_id: str, ttl: int = 600) -> str:
        return self.d.domain.issue(spiffe_id, audience=self.d.url, ttl=ttl, now=int(time.time()))
