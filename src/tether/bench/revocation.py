"""Revocation propagation: task completion at the STS → refusal at a subscribed resource server.

The clock runs from just before the agent's ``POST /tasks/{id}/complete`` until a real
request (the task's hop token, a fresh proof), accepted just before, is refused by an
in-process ``Verifier``: the whole window in which an ended task's token still works. On
SQLite one STS serves the subscriber; on PostgreSQL + Redis the task is completed on replica
A while the subscriber follows replica B, so the Redis announcement is in the figure. Set-up
and a few warm-up tasks stay outside the clock.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tether.agent.identity import DevIdentity, IdentitySource
from tether.agent.proof import DPoPKey
from tether.bench.exchange import ADMIN, AGENT, AUD_B, RESOURCES, SVC_B
from tether.bench.harness import Actor, Deployment, bench_deployment, percentile, serve, tether_bin
from tether.bench.report import Row
from tether.errors import InvalidToken, OAuthError
from tether.resource import ResourceSettings, Verifier
from tether.resource.revocations import RevocationFeed
from tether.urns import TOKEN_EXCHANGE
from tether.urns import TOKEN_TYPE_ACCESS as ACCESS
from tether.urns import TOKEN_TYPE_JWT as JWT
from tether.web.server import free_port

__all__ = ["ObservedFeed", "revocation_rows"]

TARGET = "p99 ≤ 50 ms"
NAME = "revocation propagation: task completion → refusal at a subscribed resource server"
RS_PATH = "/bench/revocation"
WARMUP = 5
PROPAGATION_TIMEOUT = 5.0
REVOKED = "token has been revoked"


class ObservedFeed(RevocationFeed):
    """The SDK feed, unchanged, plus a hook: resolve a waiter when an entry naming it is applied."""

    def __init__(self, sts_url: str, http: httpx.AsyncClient, *, identity: IdentitySource, audience: str | None = None) -> None:
        super().__init__(sts_url, http, identity=identity, audience=audience)
        self.waiting: dict[str, asyncio.Future[float]] = {}

    def apply(self, entry: dict[str, Any]) -> None:
        super().apply(entry)
        value = entry.get("value")
        waiter = self.waiting.pop(value, None) if isinstance(value, str) else None
        if waiter is not None and not waiter.done():
            waiter.set_result(time.perf_counter())


@dataclass
class _Samples:
    refused_ms: list[float] = field(default_factory=list)  # completion sent → real request refused
    applied_ms: list[float] = field(default_factory=list)  # completion sent → feed entry applied at the RS
    completion_ms: list[float] = field(default_factory=list)  # completion sent → its HTTP response
    after_response_ms: list[float] = field(default_factory=list)  # completion's response → refused (< 0: push first)
    push_first: int = 0  # the push reached the RS before the completion's own response
    nonce_retries: int = 0


@dataclass
class _Task:
    task_id: str
    session: str
    hop: str


class _Driver:
    """The agent and the admin, against the replica that takes the writes (synchronous, harness ``Actor``)."""

    def __init__(self, d: Deployment, http: httpx.Client) -> None:
        self.admin = Actor(d, http)
        self.agent = Actor(d, http)
        self.admin_token = str(
            self.admin.token(
                {"grant_type": TOKEN_EXCHANGE, "subject_token": self.admin.svid(ADMIN), "subject_token_type": JWT}
            )["access_token"]
        )

    def new_task(self) -> _Task:
        """Like ``exchange.setup_task`` but with one admin token and one agent key for every task."""
        body = {"agent": AGENT, "audiences": [AUD_B], "scopes": ["read"], "max_tokens": 10}
        created = self.admin.api("POST", "/tasks", self.admin_token, json=body)
        created.raise_for_status()
        task_id = str(created.json()["id"])
        session = str(
            self.agent.token(
                {
                    "grant_type": TOKEN_EXCHANGE,
                    "subject_token": self.agent.svid(AGENT),
                    "subject_token_type": JWT,
                    "task": task_id,
                }
            )["access_token"]
        )
        hop = self.agent.token(
            {
                "grant_type": TOKEN_EXCHANGE,
                "subject_token": session,
                "subject_token_type": ACCESS,
                "resource": AUD_B,
            }
        )["access_token"]
        return _Task(task_id, session, str(hop))


async def _call(verifier: Verifier, key: DPoPKey, token: str) -> None:
    """One request at the resource server: the token and a fresh proof for this method and URL."""
    proof = key.proof("GET", AUD_B + RS_PATH, access_token=token)
    await verifier.verify(method="GET", path=RS_PATH, headers={"authorization": f"DPoP {token}", "dpop": proof})


async def _complete(http: httpx.AsyncClient, agent: Actor, task: _Task, proof: str) -> tuple[httpx.Response, int]:
    """``POST /tasks/{id}/complete`` with the session token; one retry if the STS wants a new nonce."""
    url = f"{agent.d.url}/tasks/{task.task_id}/complete"
    retries = 0
    while True:
        response = await http.post(url, headers={"Authorization": f"DPoP {task.session}", "DPoP": proof})
        agent.nonce = response.headers.get("dpop-nonce", agent.nonce)
        if retries or response.status_code != 401 or "use_dpop_nonce" not in response.headers.get("www-authenticate", ""):
            return response, retries
        retries += 1
        proof = agent.key.proof("POST", url, nonce=agent.nonce, access_token=task.session)


async def _one(
    driver: _Driver, verifier: Verifier, feed: ObservedFeed, http: httpx.AsyncClient, samples: _Samples | None
) -> None:
    task = await asyncio.to_thread(driver.new_task)
    agent = driver.agent
    await _call(verifier, agent.key, task.hop)  # accepted: a refusal here raises and ends the run
    url = f"{agent.d.url}/tasks/{task.task_id}/complete"
    proof = agent.key.proof("POST", url, nonce=agent.nonce, access_token=task.session)
    loop = asyncio.get_running_loop()
    applied: asyncio.Future[float] = loop.create_future()
    feed.waiting[task.task_id] = applied
    responded: list[float] = []

    async def complete() -> tuple[httpx.Response, int]:
        result = await _complete(http, agent, task, proof)
        responded.append(time.perf_counter())
        return result

    t0 = time.perf_counter()
    completion = asyncio.create_task(complete())
    try:
        t_applied = await asyncio.wait_for(asyncio.shield(applied), PROPAGATION_TIMEOUT)
    except TimeoutError:
        feed.waiting.pop(task.task_id, None)
        response, _ = await completion
        raise RuntimeError(
            f"task {task.task_id}: no revocation reached the resource server within {PROPAGATION_TIMEOUT} s"
            f" (completion answered {response.status_code})"
        ) from None
    try:
        await _call(verifier, agent.key, task.hop)
    except InvalidToken as exc:
        t1 = time.perf_counter()
        if exc.description != REVOKED:
            raise RuntimeError(f"refused for another reason: {exc.description}") from exc
    except OAuthError as exc:
        raise RuntimeError(f"refused with {exc.error}: {exc.description}, not the revocation") from exc
    else:
        raise RuntimeError(f"task {task.task_id}: feed entry applied but the token was still accepted")
    response, retries = await completion
    if response.status_code != 200 or response.json().get("state") != "completed":
        raise RuntimeError(f"completion answered {response.status_code}: {response.text[:300]}")
    if samples is not None:
        samples.refused_ms.append((t1 - t0) * 1000)
        samples.applied_ms.append((t_applied - t0) * 1000)
        samples.completion_ms.append((responded[0] - t0) * 1000)
        samples.after_response_ms.append((t1 - responded[0]) * 1000)
        samples.push_first += t_applied < responded[0]
        samples.nonce_retries += retries


async def _measure(d: Deployment, feed_url: str, tasks: int) -> _Samples:
    """Subscribe a resource server to ``feed_url``, then complete ``tasks`` tasks on ``d.url`` one at a time."""
    samples = _Samples()
    async with (
        httpx.AsyncClient(trust_env=False, timeout=10.0) as rs_http,
        httpx.AsyncClient(trust_env=False, timeout=10.0) as sts_http,
    ):
        # the resource server subscribes as B, the workload registered for AUD_B; its assertions name the issuer
        feed = ObservedFeed(feed_url, rs_http, identity=DevIdentity(d.domain, SVC_B), audience=d.url)
        settings = ResourceSettings(issuer=d.url, resource=AUD_B, jwks_uri=feed_url + "/jwks")
        verifier = Verifier(settings, http=rs_http, feed=feed)
        feed.start()
        try:
            await _wait_subscribed(feed)
            with httpx.Client(trust_env=False, timeout=30.0) as http:
                driver = await asyncio.to_thread(_Driver, d, http)
                for i in range(WARMUP + tasks):
                    await _one(driver, verifier, feed, sts_http, samples if i >= WARMUP else None)
        finally:
            await feed.aclose()
            await verifier.aclose()
    return samples


async def _wait_subscribed(feed: RevocationFeed, timeout: float = 15.0) -> None:
    try:
        await feed.wait_synced(timeout)
    except TimeoutError:
        raise RuntimeError("the resource server did not subscribe to the revocation feed") from None
    if feed.connects < 1 or not feed.fresh(time.time()):
        raise RuntimeError("the resource server's revocation view is not fresh")


def _row(store: str, samples: _Samples, tasks: int, path: str) -> Row:
    p99 = percentile(samples.refused_ms, 0.99)
    return Row(
        f"{NAME} ({store})",
        p99,
        "ms p99",
        target=TARGET,
        notes={
            "p50_ms": round(statistics.median(samples.refused_ms), 2),
            "p99_ms": round(p99, 2),
            "max_ms": round(max(samples.refused_ms), 2),
            "tasks": tasks,
            "completion_call_p50_ms": round(statistics.median(samples.completion_ms), 2),
            "completion_call_p99_ms": round(percentile(samples.completion_ms, 0.99), 2),
            "feed_applied_p50_ms": round(statistics.median(samples.applied_ms), 2),
            "refused_after_completion_response_p50_ms": round(statistics.median(samples.after_response_ms), 2),
            "push_before_completion_response": samples.push_first,
            "nonce_retries": samples.nonce_retries,
            "path": path,
            "measured": (
                "per task, one at a time: clock from sending POST /tasks/{id}/complete (agent's session token) "
                "until the task's hop token with a fresh DPoP proof is refused by tether.resource.Verifier with "
                f"'{REVOKED}' (accepted just before); {WARMUP} warm-up tasks excluded"
            ),
        },
    )


def _sqlite_row(workdir: Path, tasks: int) -> Row:
    d = bench_deployment(workdir, extra=RESOURCES)
    with serve([tether_bin(), "serve", "--config", str(d.config.path)], d.url):
        samples = asyncio.run(_measure(d, d.url, tasks))
    path = "one STS process on SQLite; the resource server subscribes to the same process (in-process wake-up)"
    return _row("SQLite", samples, tasks, path)


def _with_search_path(dsn: str, schema: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}options=-csearch_path%3D{schema}"


@contextmanager
def _fresh_schema_and_prefix(postgres_dsn: str, redis_url: str) -> Iterator[tuple[str, str]]:
    """A new PostgreSQL schema (created by ``tether init``'s migration) and Redis prefix; both removed after."""
    import psycopg
    import redis

    name = "bench_rev_" + secrets.token_hex(5)
    try:
        yield _with_search_path(postgres_dsn, name), name
    finally:
        try:
            with psycopg.connect(postgres_dsn, autocommit=True, connect_timeout=3) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')  # name is ours: hex only
        except psycopg.Error:
            pass
        try:
            client = redis.Redis.from_url(redis_url)
            try:
                keys = list(client.scan_iter(match=f"{name}:*", count=1000))
                if keys:
                    client.delete(*keys)
            finally:
                client.close()
        except redis.RedisError:
            pass


def _postgres_row(workdir: Path, tasks: int, postgres_dsn: str, redis_url: str) -> Row:
    with _fresh_schema_and_prefix(postgres_dsn, redis_url) as (dsn, prefix):
        store_toml = (
            f"\n[postgres]\ndsn = {json.dumps(dsn)}\n\n[redis]\nurl = {json.dumps(redis_url)}\nprefix = {json.dumps(prefix)}\n"
        )
        d = bench_deployment(workdir, extra=RESOURCES, store_toml=store_toml)
        port_a = int(d.url.rsplit(":", 1)[1])
        port_b = free_port()
        url_b = f"http://127.0.0.1:{port_b}"

        def replica(port: int) -> list[str]:
            return [tether_bin(), "serve", "--config", str(d.config.path), "--port", str(port)]

        with serve(replica(port_a), d.url, core="0"), serve(replica(port_b), url_b, core="1"):
            samples = asyncio.run(_measure(d, url_b, tasks))
    path = (
        "2 STS replicas on one PostgreSQL schema + Redis prefix (same issuer, own ports, pinned to cores 0 and 1): "
        "task completed on replica A, resource server subscribed to replica B (feed + JWKS) — "
        "A commits to PostgreSQL, announces on Redis pub/sub, B's listener wakes its feed, B re-reads PostgreSQL, SSE push"
    )
    return _row("PostgreSQL + Redis, cross-replica", samples, tasks, path)


def revocation_rows(
    workdir: Path, *, tasks: int = 200, postgres_dsn: str | None = None, redis_url: str | None = None
) -> list[Row]:
    """One row for SQLite; a second for PostgreSQL + Redis when both ``postgres_dsn`` and ``redis_url`` are given."""
    rows = [_sqlite_row(workdir / "revocation-sqlite", tasks)]
    if postgres_dsn and redis_url:
        rows.append(_postgres_row(workdir / "revocation-postgres", tasks, postgres_dsn, redis_url))
    return rows
