"""Harness for scale-out tests: STS replicas as separate `tether serve` processes, and disposable
Redis / PostgreSQL servers the fault tests can kill.

Replicas share one issuer URL (as behind a load balancer): clients send each request
to a replica's own port, and DPoP proofs name the issuer's URL, exactly as they would
through the balancer.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from helpers import QUIET_MONITOR
from services import REDIS_URL, drop_schema, new_schema, require_postgres_and_redis, schema_dsn
from tether.agent.proof import DPoPKey
from tether.config import Config, load_config
from tether.identity.dev_issuer import DevTrustDomain
from tether.keys.sealed import load_master_key
from tether.provision import initialize, render_config
from tether.web.server import free_port

TETHER = str(Path(sys.prefix) / "bin" / "tether")
_PG_ROOT = Path("/usr/lib/postgresql")
PG_BIN = _PG_ROOT / (sorted(os.listdir(_PG_ROOT))[-1] if _PG_ROOT.exists() else "") / "bin"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
AGENT = "spiffe://tether.local/agent/research"
ADMIN = "spiffe://tether.local/admin"
SVC = "spiffe://tether.local/svc/tool"


def wait_until(check: Any, *, timeout: float = 15.0, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def deployment(directory: Path, *, dsn: str, redis_url: str, prefix: str, extra: str = "") -> Config:
    """A deployment directory on PostgreSQL + Redis with a free issuer port (migrated by init).

    The monitor only alerts: these tests race and refuse on purpose, and a refusal burst must
    not suspend the task under test (tests/monitor covers the actions across replicas)."""
    issuer = f"http://127.0.0.1:{free_port()}"
    directory.mkdir(parents=True, exist_ok=True)
    text = render_config(issuer).replace('store = "sqlite"', 'store = "postgres"')
    text += f'\n[postgres]\ndsn = "{dsn}"\n\n[redis]\nurl = "{redis_url}"\nprefix = "{prefix}"\n' + extra
    text += "\n" + QUIET_MONITOR + "\n"
    (directory / "tether.toml").write_text(text, encoding="utf-8")
    initialize(directory, issuer=issuer)
    return load_config(directory / "tether.toml")


@dataclass
class Replica:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_replica(config: Config, port: int, log_dir: Path) -> Replica:
    log = log_dir / f"replica-{port}.log"
    with log.open("wb") as handle:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [TETHER, "serve", "--config", str(config.path), "--port", str(port)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("TETHER_")},
        )
    replica = Replica(port, process, log)
    with httpx.Client(trust_env=False, timeout=2.0) as http:

        def healthy() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"replica {port} exited: {log.read_text(errors='replace')[-2000:]}")
            try:
                return http.get(replica.url + "/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout=30, what=f"replica {port} to serve")
    return replica


@dataclass
class Cluster:
    config: Config
    replicas: list[Replica]
    http: httpx.Client
    domain: DevTrustDomain
    nonces: dict[str, str] = field(default_factory=dict)

    @property
    def issuer(self) -> str:
        return self.config.issuer

    def svid(self, spiffe_id: str = AGENT, ttl: int = 300) -> str:
        return self.domain.issue(spiffe_id, audience=self.issuer, ttl=ttl, now=int(time.time()))

    def post_token(self, replica: int, form: dict[str, str], key: DPoPKey, *, proof: str | None = None) -> httpx.Response:
        """POST /token to one replica (proof names the issuer URL); one retry on use_dpop_nonce."""
        url = self.replicas[replica].url + "/token"
        for _ in range(2):
            sent = proof or key.proof("POST", self.issuer + "/token", nonce=self.nonces.get("sts"))
            response = self.http.post(url, data=form, headers={"DPoP": sent})
            if "dpop-nonce" in response.headers:
                self.nonces["sts"] = response.headers["dpop-nonce"]
            if proof is None and response.status_code == 400 and response.json().get("error") == "use_dpop_nonce":
                continue
            return response
        return response

    def api(self, replica: int, method: str, path: str, token: str, key: DPoPKey, **kwargs: Any) -> httpx.Response:
        url = self.replicas[replica].url + path
        for _ in range(2):
            proof = key.proof(method, self.issuer + path, nonce=self.nonces.get("sts"), access_token=token)
            response = self.http.request(method, url, headers={"Authorization": f"DPoP {token}", "DPoP": proof}, **kwargs)
            if "dpop-nonce" in response.headers:
                self.nonces["sts"] = response.headers["dpop-nonce"]
            if response.status_code == 401 and "use_dpop_nonce" in response.headers.get("www-authenticate", ""):
                continue
            return response
        return response

    def admin(self, replica: int = 0) -> tuple[DPoPKey, str]:
        key = DPoPKey()
        response = self.post_token(replica, {"grant_type": TOKEN_EXCHANGE, "subject_token": self.svid(ADMIN),
                                             "subject_token_type": JWT}, key)  # fmt: skip
        assert response.status_code == 200, response.text
        return key, str(response.json()["access_token"])

    def task(self, replica: int = 0, **fields: Any) -> dict[str, Any]:
        key, token = self.admin(replica)
        body = {"agent": AGENT, "audiences": ["https://tool.example"], "scopes": ["read"], **fields}
        response = self.api(replica, "POST", "/tasks", token, key, json=body)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    def session(self, task_id: str, key: DPoPKey, replica: int = 0) -> str:
        response = self.post_token(replica, {"grant_type": TOKEN_EXCHANGE, "subject_token": self.svid(),
                                             "subject_token_type": JWT, "task": task_id}, key)  # fmt: skip
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    @staticmethod
    def hop_form(session: str, audience: str = "https://tool.example") -> dict[str, str]:
        return {"grant_type": TOKEN_EXCHANGE, "subject_token": session, "subject_token_type": ACCESS, "resource": audience}


@contextmanager
def cluster(directory: Path, *, replicas: int, dsn: str | None = None, redis_url: str | None = None,
            extra: str = "") -> Iterator[Cluster]:  # fmt: skip
    """``replicas`` STS processes on one shared PostgreSQL schema and Redis prefix."""
    schema = None
    if dsn is None:
        require_postgres_and_redis()
        schema = new_schema()
        dsn = schema_dsn(schema)
    prefix = schema or new_schema()
    config = deployment(directory, dsn=dsn, redis_url=redis_url or REDIS_URL, prefix=prefix, extra=extra)
    first = int(config.issuer.rsplit(":", 1)[1])
    ports = [first] + [free_port() for _ in range(replicas - 1)]
    started: list[Replica] = []
    http = httpx.Client(trust_env=False, timeout=15.0)
    try:
        for port in ports:
            started.append(start_replica(config, port, directory))
        domain = DevTrustDomain.load(config.data_dir, "tether.local", load_master_key(config.master_key_file))
        yield Cluster(config=config, replicas=started, http=http, domain=domain)
    finally:
        http.close()
        for replica in started:
            replica.kill()
        if schema is not None:
            drop_schema(schema)


# -- disposable servers -----------------------------------------------------------------------------
@dataclass
class RedisServer:
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [*command, "--dir", str(self.directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

        def pong() -> bool:
            ping = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, check=False)
            return ping.stdout.strip() == b"PONG"

        wait_until(pong, what="redis-server")
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), directory).start()
    try:
        yield server
    finally:
        server.kill()


@dataclass
class PostgresServer:
    port: int
    data: Path

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=60)

    def start(self) -> PostgresServer:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.data / "log")
        self._pg(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-w", "-t", "30", "-l", log, "start")
        return self

    def kill(self) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m",
                        "immediate", "stop"], capture_output=True, check=False, timeout=60)  # fmt: skip


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    base = Path(tempfile.mkdtemp(prefix="tether-pg-"))
    data = base / "data"
    data.mkdir()
    shutil.chown(base, "postgres")
    shutil.chown(data, "postgres")
    server = PostgresServer(free_port(), data)
    server._pg(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    server.start()
    try:
        yield server
    finally:
        server.kill()
        shutil.rmtree(base, ignore_errors=True)
