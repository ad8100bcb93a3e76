"""Faults under load, measured: the longer versions of the chaos suite (``tests/chaos``), as figures.

* **completion under load** — p50/p99 of ``POST /tasks/{id}/complete`` (or the kill switch's
  ``POST /principals/block``) while 16 connections hop the task's session token back to back,
  on SQLite and on two PostgreSQL replicas; revocation must win (200, never 503) and no token
  may be issued after its commit (the audit chain orders them);
* **kill -9 under load** — an STS SIGKILLed mid-load (SQLite: restarted; PostgreSQL: one of two
  replicas): tokens clients received that the store or the audit log lacks (must be 0);
* **partition** — a resource server cut from a healthy STS by a silent link: seconds from the cut
  to its first refusal (``stale_after`` bounds it), from the heal to service again, and whether a
  task completed during the cut is refused once the link heals;
* **flood** — malformed and anonymous requests: answers per second, 5xx (must be 0), audit
  records added, the STS's resident memory, and a good exchange's latency in the middle of it.

Every run ends with ``tether audit verify`` and a positive-control exchange, reported in the
row's notes. Load generators are ``tether.bench.loadgen`` processes (requests signed before
the clock starts) except where the figure needs the tokens clients received.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tether.agent.identity import DevIdentity
from tether.agent.proof import DPoPKey
from tether.bench.exchange import ADMIN, AGENT, AUD_B, RESOURCES, SVC_B
from tether.bench.harness import Actor, Deployment, bench_deployment, loadgen_command, percentile, rss_kib, serve, tether_bin
from tether.bench.loadgen import form_request
from tether.bench.partition import Partition, verdict
from tether.bench.report import Row
from tether.bench.revocation import _fresh_schema_and_prefix
from tether.resource import ResourceSettings, Verifier
from tether.resource.revocations import RevocationFeed
from tether.store.open import open_store
from tether.store.protocol import Store
from tether.urns import TOKEN_EXCHANGE
from tether.urns import TOKEN_TYPE_ACCESS as ACCESS
from tether.urns import TOKEN_TYPE_JWT as JWT
from tether.web.server import free_port

__all__ = ["chaos_rows", "completion_rows", "flood_rows", "kill_rows", "partition_rows"]

T = TypeVar("T")
WORKERS = 16
WARMUP = 3
#: hop requests signed per load generator and sample: more than the load runs through before the completion
REQUESTS_PER_SAMPLE = 200
#: the bench's own deployments: the monitor only alerts, so its detectors never suspend a task under test
QUIET_MONITOR = "\n" + "\n".join(
    f'[monitor.detectors.{name}]\nactions = ["alert"]'
    for name in ("exchange_rate_spike", "refusal_burst", "dpop_replay", "deep_delegation")
)


# -- deployments and what must hold after each run ---------------------------------------------------
@contextmanager
def _deployment(workdir: Path, store: str, postgres_dsn: str | None, redis_url: str | None) -> Iterator[Deployment]:
    """A bench deployment on SQLite, or on a fresh PostgreSQL schema and Redis prefix (removed after)."""
    if store == "sqlite":
        yield bench_deployment(workdir, extra=RESOURCES + QUIET_MONITOR)
        return
    assert postgres_dsn and redis_url
    with _fresh_schema_and_prefix(postgres_dsn, redis_url) as (dsn, prefix):
        toml = (
            f"\n[postgres]\ndsn = {json.dumps(dsn)}\n\n[redis]\nurl = {json.dumps(redis_url)}\nprefix = {json.dumps(prefix)}\n"
        )
        yield bench_deployment(workdir, extra=RESOURCES + QUIET_MONITOR, store_toml=toml)


def _serve_args(d: Deployment, port: int) -> list[str]:
    return [tether_bin(), "serve", "--config", str(d.config.path), "--port", str(port)]


@contextmanager
def _replicas(d: Deployment, count: int) -> Iterator[list[str]]:
    """``count`` STS processes of ``d`` (the first on the issuer's port), pinned to cores 0 and 1 in turn."""
    ports = [int(d.url.rsplit(":", 1)[1])] + [free_port() for _ in range(count - 1)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    with ExitStack() as stack:
        for i, (port, url) in enumerate(zip(ports, urls, strict=True)):
            stack.enter_context(serve(_serve_args(d, port), url, core=str(i % 2) if count > 1 else "0"))
        yield urls


def _with_store(d: Deployment, body: Callable[[Store], Awaitable[T]]) -> T:
    async def main() -> T:
        store = await open_store(d.config)
        try:
            return await body(store)
        finally:
            await store.aclose()

    return asyncio.run(main())


def _audit_verify(d: Deployment) -> str:
    result = subprocess.run(  # noqa: S603 - our own CLI
        [tether_bin(), "audit", "verify", "--config", str(d.config.path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return "intact" if result.returncode == 0 and "intact" in result.stdout else f"FAILED: {result.stdout[-300:]}"


def _admin(d: Deployment, http: httpx.Client) -> tuple[Actor, str]:
    admin = Actor(d, http)
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": admin.svid(ADMIN), "subject_token_type": JWT}
    return admin, str(admin.token(form)["access_token"])


def _new_task(d: Deployment, http: httpx.Client, admin: Actor, admin_token: str) -> tuple[str, Actor, str]:
    body = {"agent": AGENT, "audiences": [AUD_B], "scopes": ["read"], "max_tokens": 10_000_000}
    created = admin.api("POST", "/tasks", admin_token, json=body)
    created.raise_for_status()
    task_id = str(created.json()["id"])
    agent = Actor(d, http)
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": agent.svid(AGENT), "subject_token_type": JWT, "task": task_id}
    return task_id, agent, str(agent.token(form)["access_token"])


def _hop_form(session: str) -> dict[str, str]:
    return {"grant_type": TOKEN_EXCHANGE, "subject_token": session, "subject_token_type": ACCESS, "resource": AUD_B}


def _positive_control(d: Deployment, url: str) -> int:
    """A new task, its session and one hop, all sent to ``url`` (one replica): the status of the hop."""
    with httpx.Client(trust_env=False, timeout=30) as http:
        admin, agent = DPoPKey(), DPoPKey()
        nonce: list[str | None] = [None]

        def post(path: str, key: DPoPKey, token: str | None = None, **kwargs: Any) -> httpx.Response:
            for _ in range(2):
                headers = {"DPoP": key.proof("POST", d.url + path, nonce=nonce[0], access_token=token)}
                if token is not None:
                    headers["Authorization"] = f"DPoP {token}"
                response = http.post(url + path, headers=headers, **kwargs)
                nonce[0] = response.headers.get("dpop-nonce", nonce[0])
                challenged = response.status_code in (400, 401) and "use_dpop_nonce" in response.text + str(
                    response.headers.get("www-authenticate", "")
                )
                if not challenged:
                    break
            return response

        svid = d.domain.issue(ADMIN, audience=d.url, ttl=300, now=int(time.time()))
        admin_token = post("/token", admin, data={"grant_type": TOKEN_EXCHANGE, "subject_token": svid,
                                                  "subject_token_type": JWT}).json()["access_token"]  # fmt: skip
        body = {"agent": AGENT, "audiences": [AUD_B], "scopes": ["read"]}
        task_id = post("/tasks", admin, admin_token, json=body).json()["id"]
        svid = d.domain.issue(AGENT, audience=d.url, ttl=300, now=int(time.time()))
        form = {"grant_type": TOKEN_EXCHANGE, "subject_token": svid, "subject_token_type": JWT, "task": task_id}
        session = post("/token", agent, data=form).json()["access_token"]
        return post("/token", agent, data=_hop_form(session)).status_code


def _jti(token: str) -> str:
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"])


# -- completion and the kill switch under full hop load -------------------------------------------
@dataclass
class _Completion:
    ms: float
    status: int
    served: int  # hops served by the load in that sample
    errors_5xx: int
    hop_ms: list[float]  # every hop's round trip in that sample (served or refused)


def _start_load(
    d: Deployment, agent: Actor, session: str, url: str, tmp: Path, name: str, connections: int
) -> tuple[subprocess.Popen[bytes], Path]:
    """A loadgen process on core 1: ``connections`` keep-alive connections to ``url`` replaying signed hops."""
    token_url = d.url + "/token"
    form = _hop_form(session)
    requests = [
        form_request(url + "/token", form, {"DPoP": agent.key.proof("POST", token_url, nonce=agent.nonce)}).hex()
        for _ in range(REQUESTS_PER_SAMPLE)
    ]
    host, port = url.split("//", 1)[1].split(":")
    spec, out = tmp / f"{name}.json", tmp / f"{name}.out.json"
    spec.write_text(
        json.dumps({"host": host, "port": int(port), "concurrency": connections, "duration": 10, "requests": requests})
    )
    return subprocess.Popen(loadgen_command(spec, out)), out  # noqa: S603 - our own interpreter and module


def _one_completion(
    d: Deployment, http: httpx.Client, admin_pair: tuple[Actor, str], urls: list[str], action: str, tmp: Path
) -> tuple[_Completion, str]:
    admin, admin_token = admin_pair
    task_id, agent, session = _new_task(d, http, admin, admin_token)
    agent.token(_hop_form(session))  # the nonce is fresh and the session verified once
    # WORKERS connections in all, split evenly over the replicas
    started = [_start_load(d, agent, session, url, tmp, f"load{i}", WORKERS // len(urls)) for i, url in enumerate(urls)]
    try:
        deadline = time.monotonic() + 30
        while admin.api("GET", f"/tasks/{task_id}", admin_token).json().get("tokens_issued", 0) < 2 + 2 * WORKERS:
            if time.monotonic() > deadline:
                raise RuntimeError("the hop load did not start")
            time.sleep(0.01)
        path, body = (f"/tasks/{task_id}/complete", None) if action == "complete" else ("/principals/block", {"agent": AGENT})
        t0 = time.perf_counter()
        response = admin.api("POST", path, admin_token, json=body)
        ms = (time.perf_counter() - t0) * 1000
    finally:
        statuses: Counter[str] = Counter()
        hop_ms: list[float] = []
        for process, out in started:
            process.wait(timeout=120)
            if out.exists():
                result = json.loads(out.read_text())
                statuses.update(result["statuses"])
                hop_ms += [x * 1000 for x in result["latencies"]]
    if action == "block":
        admin.api("POST", "/principals/unblock", admin_token, json={"agent": AGENT}).raise_for_status()
    errors = sum(v for k, v in statuses.items() if k.startswith("5"))
    return _Completion(ms, response.status_code, statuses.get("200", 0), errors, hop_ms), task_id


def _issued_after_revocation(d: Deployment, tasks: list[str], action: str) -> int:
    """Tokens of ``tasks`` whose ``token.issued`` record follows the record of the task's revocation."""

    async def read(store: Store) -> int:
        records = await store.audit_records(after=0, limit=10_000_000)
        late = 0
        for task in tasks:
            if action == "complete":
                ends = [r.seq for r in records if r.kind == "task.completed" and r.task == task]
            else:
                ends = [r.seq for r in records if r.kind == "principal.blocked" and task in r.detail.get("tasks", [])]
            end = ends[0] if ends else 0
            late += sum(1 for r in records if r.kind == "token.issued" and r.task == task and (not end or r.seq > end))
        return late

    return _with_store(d, read)


def _completion_row(workdir: Path, store: str, action: str, samples: int, dsn: str | None, redis_url: str | None) -> Row:
    replicas = 1 if store == "sqlite" else 2
    with (
        _deployment(workdir, store, dsn, redis_url) as d,
        _replicas(d, replicas) as urls,
        httpx.Client(trust_env=False, timeout=60) as http,
        tempfile.TemporaryDirectory() as tmp,
    ):
        measured: list[_Completion] = []
        tasks: list[str] = []
        for i in range(WARMUP + samples):
            if i % 20 == 0:  # an admin token lives 5 minutes
                admin = _admin(d, http)
            sample, task = _one_completion(d, http, admin, urls, action, Path(tmp))
            if i >= WARMUP:
                measured.append(sample)
                tasks.append(task)
        late = _issued_after_revocation(d, tasks, action)
        verified = _audit_verify(d)
        control = _positive_control(d, urls[-1])
    ok = [s.ms for s in measured if s.status == 200]
    hops = [ms for s in measured for ms in s.hop_ms]
    where = "SQLite, one STS" if store == "sqlite" else "PostgreSQL + Redis, 2 replicas (load on both)"
    what = "task completion" if action == "complete" else "kill switch (block the agent)"
    return Row(
        f"{what} under full hop load ({where})",
        percentile(ok, 0.99),
        "ms p99",
        target="200, never 503",
        notes={
            "p50_ms": round(statistics.median(ok), 2) if ok else float("nan"),
            "p99_ms": round(percentile(ok, 0.99), 2),
            "max_ms": round(max(ok), 2) if ok else float("nan"),
            "samples": samples,
            "statuses": dict(Counter(s.status for s in measured)),
            "hops_served_per_sample_mean": round(statistics.mean(s.served for s in measured)),
            "hop_p50_ms": round(statistics.median(hops), 2) if hops else float("nan"),
            "hop_p99_ms": round(percentile(hops, 0.99), 2),
            "hop_5xx": sum(s.errors_5xx for s in measured),
            "tokens_issued_after_revocation": late,
            "audit_verify": verified,
            "positive_control": control,
            "measured": (
                f"per task: {WORKERS} connections hop its session token back to back (requests signed before, "
                "loadgen on core 1); once 32 hops are served the admin sends the request; the figure is its "
                f"HTTP round trip; {WARMUP} warm-up tasks excluded"
            ),
        },
    )


def completion_rows(
    workdir: Path,
    *,
    samples: int = 30,
    postgres_dsn: str | None = None,
    redis_url: str | None = None,
    actions: tuple[str, ...] = ("complete",),
) -> list[Row]:
    """One row per store and action; PostgreSQL + Redis only when both URLs are given."""
    stores = ["sqlite"] + (["postgres"] if postgres_dsn and redis_url else [])
    return [
        _completion_row(workdir / f"completion-{store}-{action}", store, action, samples, postgres_dsn, redis_url)
        for store in stores
        for action in actions
    ]


# -- kill -9 under load -----------------------------------------------------------------------------
@dataclass
class _Hoppers:
    """Threads hopping one session token at ``urls`` and keeping every token they receive (the client's view)."""

    d: Deployment
    session: str
    key: DPoPKey
    urls: list[str]
    received: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    nonce: str | None = None

    def run(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._worker, args=(i,), daemon=True) for i in range(WORKERS)]
        for thread in threads:
            thread.start()
        return threads

    def _worker(self, index: int) -> None:
        with httpx.Client(trust_env=False, timeout=30) as http:
            n = index
            while not self.stop.is_set():
                url = self.urls[n % len(self.urls)] + "/token"
                n += 1
                proof = self.key.proof("POST", self.d.url + "/token", nonce=self.nonce)
                try:
                    response = http.post(url, data=_hop_form(self.session), headers={"DPoP": proof})
                except httpx.TransportError:
                    with self.lock:
                        self.statuses[0] += 1
                    time.sleep(0.01)
                    continue
                self.nonce = response.headers.get("dpop-nonce", self.nonce)
                with self.lock:
                    self.statuses[response.status_code] += 1
                    if response.status_code == 200:
                        self.received.append(str(response.json()["access_token"]))


def _kill_row(workdir: Path, store: str, load_seconds: float, dsn: str | None, redis_url: str | None) -> Row:
    replicas = 1 if store == "sqlite" else 2
    with _deployment(workdir, store, dsn, redis_url) as d:
        ports = [int(d.url.rsplit(":", 1)[1])] + [free_port() for _ in range(replicas - 1)]
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        with ExitStack() as stack, httpx.Client(trust_env=False, timeout=60) as http:
            servers = [
                stack.enter_context(serve(_serve_args(d, port), url, core=str(i % 2)))
                for i, (port, url) in enumerate(zip(ports, urls, strict=True))
            ]
            admin, admin_token = _admin(d, http)
            task_id, agent, session = _new_task(d, http, admin, admin_token)
            hoppers = _Hoppers(d, session, agent.key, urls)
            threads = hoppers.run()
            time.sleep(load_seconds)
            servers[0].process.send_signal(signal.SIGKILL)
            killed = time.perf_counter()
            servers[0].process.wait(timeout=30)
            recovery_ms = float("nan")
            if store == "sqlite":  # restart on the same file, as a supervisor would
                with serve(_serve_args(d, ports[0]), urls[0]):
                    recovery_ms = (time.perf_counter() - killed) * 1000
                    time.sleep(load_seconds / 2)
                    hoppers.stop.set()
                    for thread in threads:
                        thread.join(timeout=60)
                    control = _positive_control(d, urls[0])
            else:
                time.sleep(load_seconds / 2)
                hoppers.stop.set()
                for thread in threads:
                    thread.join(timeout=60)
                control = _positive_control(d, urls[1])
        received = {_jti(t) for t in hoppers.received}

        async def check(store_: Store) -> tuple[int, int, int]:
            missing = [jti for jti in received if await store_.get_token(jti) is None]
            records = await store_.audit_records(after=0, limit=10_000_000)
            issued = {r.jti for r in records if r.kind == "token.issued" and r.task == task_id}
            return len(missing), len(received - issued), len(issued - received)

        missing_store, missing_audit, never_delivered = _with_store(d, check)
        verified = _audit_verify(d)
    where = "SQLite: the STS, restarted on its file" if store == "sqlite" else "PostgreSQL + Redis: one of 2 replicas"
    return Row(
        f"kill -9 under {WORKERS}-client hop load ({where}): received tokens lost",
        float(missing_store + missing_audit),
        "tokens",
        target="0",
        notes={
            "tokens_received": len(received),
            "missing_from_store": missing_store,
            "missing_from_audit": missing_audit,
            "issued_never_delivered": never_delivered,
            "statuses": {str(k): v for k, v in sorted(hoppers.statuses.items())},
            "dropped_connections": hoppers.statuses.get(0, 0),
            "restart_to_serving_ms": round(recovery_ms, 1),
            "audit_verify": verified,
            "positive_control": control,
        },
    )


def kill_rows(
    workdir: Path, *, load_seconds: float = 3.0, postgres_dsn: str | None = None, redis_url: str | None = None
) -> list[Row]:
    stores = ["sqlite"] + (["postgres"] if postgres_dsn and redis_url else [])
    return [_kill_row(workdir / f"kill-{store}", store, load_seconds, postgres_dsn, redis_url) for store in stores]


# -- a resource server partitioned from the STS ------------------------------------------------------
async def _partitioned(d: Deployment, link: Partition, stale_after: float, kept: tuple[str, DPoPKey],
                       ended: tuple[str, str, DPoPKey], complete: Callable[[str], int]) -> dict[str, Any]:  # fmt: skip
    async with httpx.AsyncClient(trust_env=False, timeout=5.0) as http:
        feed = RevocationFeed(link.url, http, identity=DevIdentity(d.domain, SVC_B), audience=d.url, stale_after=stale_after)
        settings = ResourceSettings(issuer=d.url, resource=AUD_B, jwks_uri=link.url + "/jwks", stale_after=stale_after)
        verifier = Verifier(settings, http=http, feed=feed)

        async def outcome(token: str, key: DPoPKey) -> str:
            return await verdict(verifier, AUD_B, token, key)

        async def until(token: str, key: DPoPKey, wanted: str, since: float) -> float:
            while (got := await outcome(token, key)) != wanted:
                if time.perf_counter() - since > stale_after * 3 + 30:
                    raise RuntimeError(f"still {got!r} waiting for {wanted!r}")
                await asyncio.sleep(0.01)
            return time.perf_counter() - since

        feed.start()
        try:
            await feed.wait_synced()
            await asyncio.sleep(1.0)
            if (await outcome(*kept), await outcome(ended[1], ended[2])) != ("accepted", "accepted"):
                raise RuntimeError("the tokens were not accepted before the cut")
            cut = time.perf_counter()
            link.cut()
            completed = await asyncio.to_thread(complete, ended[0])
            revoked_at = time.perf_counter()
            refused_s = await until(*kept, "unavailable", cut)
            revoked_accepted_s = await until(ended[1], ended[2], "unavailable", revoked_at)
            heal = time.perf_counter()
            link.heal()
            recovered_s = await until(*kept, "accepted", heal)
            ended_after = await outcome(ended[1], ended[2])
        finally:
            await feed.aclose()
            await verifier.aclose()
    return {
        "refused_after_cut_s": round(refused_s, 2),
        "recovered_after_heal_s": round(recovered_s, 2),
        "completion_during_cut": completed,
        "revoked_token_still_accepted_s": round(revoked_accepted_s, 2),
        "revoked_token_after_heal": ended_after,
    }


def partition_rows(workdir: Path, *, stale_after: float = 10.0) -> list[Row]:
    d = bench_deployment(workdir / "partition", extra=RESOURCES + QUIET_MONITOR)
    with (
        serve([tether_bin(), "serve", "--config", str(d.config.path)], d.url),
        httpx.Client(trust_env=False, timeout=60) as http,
    ):
        admin, admin_token = _admin(d, http)
        tokens = []
        for _ in range(2):
            task_id, agent, session = _new_task(d, http, admin, admin_token)
            tokens.append((task_id, str(agent.token(_hop_form(session))["access_token"]), agent.key))

        def complete(task_id: str) -> int:
            return admin.api("POST", f"/tasks/{task_id}/complete", admin_token).status_code

        link = Partition(int(d.url.rsplit(":", 1)[1]))
        try:
            notes = asyncio.run(_partitioned(d, link, stale_after, tokens[0][1:], tokens[1], complete))
        finally:
            link.close()
        notes["audit_verify"] = _audit_verify(d)
        notes["positive_control"] = _positive_control(d, d.url)
    notes["stale_after_s"] = stale_after
    notes["heartbeat_s"] = min(2.0, stale_after / 3)
    return [
        Row(
            "resource server partitioned from the STS (silent link): first refusal after the cut",
            float(notes["refused_after_cut_s"]),
            "s",
            target=f"≤ stale_after ({stale_after:g} s)",
            notes=notes,
        )
    ]


# -- a flood of malformed and anonymous requests ----------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _flood_requests(issuer: str) -> list[Callable[[httpx.Client, DPoPKey], httpx.Response]]:
    header, claims = _b64(b'{"alg":"ES256","kid":"nobody"}'), _b64(b'{"sub":"x","exp":9999999999}')
    forged = f"{header}.{claims}.{_b64(b'x' * 64)}"
    exchange = {"grant_type": TOKEN_EXCHANGE, "subject_token": forged, "subject_token_type": JWT}
    token_url, form = issuer + "/token", {"content-type": "application/x-www-form-urlencoded"}
    return [
        lambda h, k: h.post(token_url),
        lambda h, k: h.post(token_url, content=b"\xff\xfe\x00=%%%", headers=form),
        lambda h, k: h.post(token_url, data={"grant_type": "password"}, headers={"DPoP": k.proof("POST", token_url)}),
        lambda h, k: h.post(token_url, data=exchange, headers={"DPoP": "not.a.proof"}),
        lambda h, k: h.post(token_url, data=exchange, headers={"DPoP": k.proof("POST", token_url)}),
        lambda h, k: h.post(token_url, content=b"a=" + b"b" * 200_000, headers=form),
        lambda h, k: h.get(issuer + "/tasks", headers={"Authorization": "DPoP " + forged}),
        lambda h, k: h.post(issuer + "/introspect", data={"token": "x", "client_assertion": "y"}),
        lambda h, k: h.post(issuer + "/principals/block", json={"agent": AGENT}),
        lambda h, k: h.get(issuer + "/no/such/path"),
    ]


def flood_rows(workdir: Path, *, requests: int = 20_000) -> list[Row]:
    d = bench_deployment(workdir / "flood", extra=RESOURCES + QUIET_MONITOR)
    kinds = _flood_requests(d.url)
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    peak = [0]

    def worker(index: int) -> None:
        key = DPoPKey()
        with httpx.Client(trust_env=False, timeout=60) as http:
            for n in range(index, requests, WORKERS):
                status = kinds[n % len(kinds)](http, key).status_code
                with lock:
                    statuses[status] += 1

    with serve([tether_bin(), "serve", "--config", str(d.config.path)], d.url) as sts:
        pid = sts.process.pid
        for n in range(len(kinds) * 20):  # warm-up
            with httpx.Client(trust_env=False, timeout=60) as http:
                kinds[n % len(kinds)](http, DPoPKey())
        control_before = _positive_control(d, d.url)
        baseline = rss_kib(pid)
        before = _with_store(d, lambda s: s.audit_records(after=0, limit=10_000_000))
        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(WORKERS)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        t0 = time.perf_counter()
        control_during = _positive_control(d, d.url)
        good_ms = (time.perf_counter() - t0) * 1000
        while any(t.is_alive() for t in threads):
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.1)
        elapsed = time.perf_counter() - started
        after = rss_kib(pid)
        added = _with_store(d, lambda s: s.audit_records(after=0, limit=10_000_000))[len(before) :]
        verified = _audit_verify(d)
        control_after = _positive_control(d, d.url)
    return [
        Row(
            f"flood of {requests:,} malformed and anonymous requests ({WORKERS} clients, SQLite)",
            sum(statuses.values()) / elapsed,
            "answers/s",
            target="no 5xx; audit bounded; memory back near baseline",
            notes={
                "statuses": {str(k): v for k, v in sorted(statuses.items())},
                "errors_5xx": sum(v for k, v in statuses.items() if k >= 500),
                "audit_records_added": len(added),
                "audit_added_by_kind": dict(Counter(f"{r.kind}:{r.error}" for r in added)),
                "rss_baseline_mib": round(baseline / 1024, 1),
                "rss_peak_mib": round(peak[0] / 1024, 1),
                "rss_after_mib": round(after / 1024, 1),
                "good_session_and_hop_during_flood_ms": round(good_ms, 1),
                "positive_control": [control_before, control_during, control_after],
                "audit_verify": verified,
            },
        )
    ]


def chaos_rows(
    workdir: Path,
    *,
    samples: int = 30,
    flood: int = 20_000,
    load_seconds: float = 3.0,
    postgres_dsn: str | None = None,
    redis_url: str | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> list[Row]:
    """Every chaos figure; the PostgreSQL + Redis rows only when both URLs are given (and answer)."""
    rows: list[Row] = []
    progress("completion and the kill switch under full hop load")
    rows += completion_rows(
        workdir, samples=samples, postgres_dsn=postgres_dsn, redis_url=redis_url, actions=("complete", "block")
    )
    progress("kill -9 under load")
    rows += kill_rows(workdir, load_seconds=load_seconds, postgres_dsn=postgres_dsn, redis_url=redis_url)
    progress("a resource server partitioned from the STS")
    rows += partition_rows(workdir)
    progress("flood")
    rows += flood_rows(workdir, requests=flood)
    return rows
