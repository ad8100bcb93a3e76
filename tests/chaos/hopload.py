"""Kit for the chaos tests: hop load on real STS processes, and what must hold after a fault.

``HopLoad`` runs 16 threads, each exchanging one task's session token for hop tokens in
a loop (a fresh DPoP proof each time, the server nonce followed) against one or more STS
processes, recording every answer. The deployments are ``scalekit`` clusters: replicas as
``tether serve`` processes, on PostgreSQL + Redis or, with ``sqlite_cluster``, one process
on its SQLite file. The checks read the store the way the STS does (``open_store``) and run
``tether audit verify`` as an operator would.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
from scalekit import ADMIN, JWT_BEARER, TETHER, Cluster, Replica, start_replica, wait_until

from helpers import QUIET_MONITOR
from tether.agent.proof import DPoPKey
from tether.audit.chain import AuditRecord
from tether.config import Config, load_config
from tether.identity.dev_issuer import DevTrustDomain
from tether.keys.sealed import load_master_key
from tether.provision import initialize, render_config
from tether.store.open import open_store
from tether.store.protocol import Store
from tether.web.server import free_port

T = TypeVar("T")
WORKERS = 16


@dataclass(frozen=True)
class Answer:
    """One hop exchange as the client saw it (``status`` 0: no answer, the connection failed)."""

    url: str  # the replica's base URL
    sent: float
    received: float
    status: int
    token: str | None
    error: str | None


@dataclass
class HopLoad:
    """``workers`` threads hopping ``session`` at ``urls`` (round robin per worker) until stopped."""

    cluster: Cluster
    session: str
    key: DPoPKey
    urls: list[str]
    workers: int = WORKERS
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _nonce: str | None = None

    def start(self) -> HopLoad:
        for i in range(self.workers):
            thread = threading.Thread(target=self._run, args=(i,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _run(self, worker: int) -> None:
        form = Cluster.hop_form(self.session)
        token_url = self.cluster.issuer + "/token"
        with httpx.Client(trust_env=False, timeout=30.0) as http:
            n = worker
            while not self._stop.is_set():
                url = self.urls[n % len(self.urls)]
                n += 1
                proof = self.key.proof("POST", token_url, nonce=self._nonce)
                sent = time.monotonic()
                try:
                    response = http.post(url + "/token", data=form, headers={"DPoP": proof})
                except httpx.TransportError:
                    self._record(Answer(url, sent, time.monotonic(), 0, None, "transport"))
                    time.sleep(0.01)
                    continue
                received = time.monotonic()
                self._nonce = response.headers.get("dpop-nonce", self._nonce)
                body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
                token = body.get("access_token") if response.status_code == 200 else None
                self._record(Answer(url, sent, received, response.status_code, token, body.get("error")))

    def _record(self, answer: Answer) -> None:
        with self._lock:
            self.answers.append(answer)

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

    def wait_served(self, count: int, timeout: float = 60.0, *, after: float = 0.0, url: str | None = None) -> None:
        """Until ``count`` hops sent after ``after`` (to ``url``, or anywhere) were served."""

        def enough() -> bool:
            with self._lock:
                served = [a for a in self.answers if a.status == 200 and a.sent > after and url in (None, a.url)]
            return len(served) >= count

        wait_until(enough, timeout=timeout, what=f"{count} hop exchanges served")

    def wait_sent_after(self, moment: float, per_worker: int = 2, timeout: float = 60.0) -> None:
        """Until ``per_worker`` × workers answers came back for requests sent after ``moment``."""

        def enough() -> bool:
            with self._lock:
                return sum(1 for a in self.answers if a.sent > moment) >= per_worker * self.workers

        wait_until(enough, timeout=timeout, what="requests sent after the fault to be answered")

    def stop(self) -> list[Answer]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in self._threads), "a hop worker did not stop"
        return self.snapshot()


# -- deployments ------------------------------------------------------------------------------------
def sqlite_deployment(directory: Path, *, extra: str = "") -> Config:
    """``tether init`` on SQLite with a free issuer port; the monitor only alerts (as ``scalekit.deployment``)."""
    issuer = f"http://127.0.0.1:{free_port()}"
    directory.mkdir(parents=True, exist_ok=True)
    text = render_config(issuer) + "\n" + extra + "\n" + QUIET_MONITOR + "\n"
    (directory / "tether.toml").write_text(text, encoding="utf-8")
    initialize(directory, issuer=issuer)
    return load_config(directory / "tether.toml")


@contextmanager
def sqlite_cluster(directory: Path, *, extra: str = "") -> Iterator[Cluster]:
    """One ``tether serve`` process on a fresh SQLite deployment, as a one-replica ``Cluster``."""
    config = sqlite_deployment(directory, extra=extra)
    http = httpx.Client(trust_env=False, timeout=30.0)
    domain = DevTrustDomain.load(config.data_dir, "tether.local", load_master_key(config.master_key_file))
    c = Cluster(config=config, replicas=[], http=http, domain=domain)
    try:
        c.replicas.append(start_replica(config, int(config.issuer.rsplit(":", 1)[1]), directory))
        yield c
    finally:
        http.close()
        for replica in c.replicas:  # as restarted
            replica.kill()


def kill_9(replica: Replica) -> None:
    """SIGKILL: no shutdown, no flush, whatever was in flight is cut."""
    replica.process.kill()
    replica.process.wait(timeout=10)


def restart(c: Cluster, index: int) -> None:
    """Start replica ``index`` again on its port (same deployment): a process supervisor's restart."""
    c.replicas[index] = start_replica(c.config, c.replicas[index].port, c.replicas[index].log.parent)


# -- what must hold afterwards ----------------------------------------------------------------------
def with_store(config: Config, body: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``body`` on a store handle of the deployment, opened as another process would."""

    async def main() -> T:
        store = await open_store(config)
        try:
            return await body(store)
        finally:
            await store.aclose()

    return asyncio.run(main())


def audit_records(config: Config) -> list[AuditRecord]:
    return with_store(config, lambda store: store.audit_records(after=0, limit=1_000_000))


def audit_verify(config: Config) -> None:
    """``tether audit verify``: the chain is intact (every link, every checkpoint signature)."""
    result = subprocess.run([TETHER, "audit", "verify", "--config", str(config.path)],
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "intact" in result.stdout, result.stdout


def introspect_active(c: Cluster, replica: int, token: str) -> bool:
    """``/introspect`` as the admin, who may see every token."""
    form = {"token": token, "client_assertion": c.svid(ADMIN), "client_assertion_type": JWT_BEARER}
    response = c.http.post(c.replicas[replica].url + "/introspect", data=form)
    assert response.status_code == 200, response.text
    return bool(response.json()["active"])


def positive_control(c: Cluster, replica: int = 0) -> None:
    """A new task, its session and one hop on ``replica``: the deployment still serves."""
    task = c.task(replica)
    key = DPoPKey()
    session = c.session(task["id"], key, replica=replica)
    response = c.post_token(replica, c.hop_form(session), key)
    assert response.status_code == 200, response.text
