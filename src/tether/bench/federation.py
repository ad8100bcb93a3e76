"""Federation: the cross-domain exchange rate and revocation across the border, beside their local twins.

Two deployments, trust domains ``a.example`` and ``b.example`` (two ``tether init
--trust-domain``, two ``tether serve`` processes, SQLite each): B trusts A as ``[[federation]]``
peer ``a`` and follows A's revocation feed; A trusts B's trust domain and lists B's follower.

- Exchange rate, one client, sequential: a local session exchange at A (workload JWT → session)
  against one crossing (A: session → hop token for B's issuer; B: that token as an RFC 7523
  ``jwt-bearer`` grant → a session of the linked task). Client-side signing is included. B's
  ``max_crossings_per_minute`` is raised: this measures the exchange, not the cap.
- Revocation latency: per task, from sending A's ``POST /tasks/{id}/complete`` until a resource
  server subscribed to B's feed applies the entry ending B's linked task (A's feed → B's follower →
  B's store → B's feed); the in-domain twin completes a task at B and times the same subscriber.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

import tether.features  # noqa: F401  (the feature tables are registered before a config is loaded)
from tether.agent.identity import DevIdentity
from tether.agent.proof import DPoPKey
from tether.bench.harness import percentile, serve, tether_bin
from tether.bench.report import Row
from tether.bench.revocation import ObservedFeed
from tether.config import load_config
from tether.identity.dev_issuer import DevTrustDomain
from tether.keys.sealed import load_master_key
from tether.provision import initialize
from tether.urns import JWT_BEARER_GRANT, TOKEN_EXCHANGE
from tether.urns import TOKEN_TYPE_ACCESS as ACCESS
from tether.urns import TOKEN_TYPE_JWT as JWT
from tether.web.server import free_port

__all__ = ["federation_rows"]

AGENT_PATH = "agent/research"
WIKI_B = "https://wiki.b.example"
WIKI_A = "https://wiki.a.example"
WARMUP = 3


@dataclass
class _Side:
    name: str
    url: str
    domain: DevTrustDomain
    key: DPoPKey
    http: httpx.Client
    nonce: str | None = None

    def principal(self, path: str) -> str:
        return f"spiffe://{self.name}/{path}"

    def svid(self, path: str) -> str:
        return self.domain.issue(self.principal(path), audience=self.url, ttl=300, now=int(time.time()))

    def token(self, form: dict[str, str], key: DPoPKey | None = None) -> str:
        url, key = self.url + "/token", key or self.key
        for _ in range(2):
            response = self.http.post(url, data=form, headers={"DPoP": key.proof("POST", url, nonce=self.nonce)})
            self.nonce = response.headers.get("dpop-nonce", self.nonce)
            if response.status_code == 400 and response.json().get("error") == "use_dpop_nonce":
                continue
            if response.status_code != 200:
                raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:300]}")
            return str(response.json()["access_token"])
        raise RuntimeError(f"{url} kept asking for a new nonce")

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        token = self.token({"grant_type": TOKEN_EXCHANGE, "subject_token": self.svid("admin"), "subject_token_type": JWT})
        url = self.url + path
        for _ in range(2):
            proof = self.key.proof(method, url, nonce=self.nonce, access_token=token)
            response = self.http.request(method, url, headers={"Authorization": f"DPoP {token}", "DPoP": proof}, **kwargs)
            self.nonce = response.headers.get("dpop-nonce", self.nonce)
            if response.status_code == 401 and "use_dpop_nonce" in response.headers.get("www-authenticate", ""):
                continue
            return response
        return response

    def task(self, agent: str, audiences: list[str]) -> str:
        body = {"agent": agent, "audiences": audiences, "scopes": ["wiki:read"], "max_tokens": 1_000_000}
        created = self.admin("POST", "/tasks", json=body)
        if created.status_code != 201:
            raise RuntimeError(f"task not created: {created.text[:300]}")
        return str(created.json()["id"])


def _deployment(directory: Path, name: str, issuer: str, extra: str) -> Path:
    """``tether init --trust-domain NAME`` with big task caps, plus ``extra``."""
    result = initialize(directory, issuer=issuer, trust_domain=name)
    text = result.config_path.read_text(encoding="utf-8").replace("max_tokens = 10000", "max_tokens = 10000000")
    result.config_path.write_text(text + "\n" + extra + "\n", encoding="utf-8")
    return result.config_path


def _pair(workdir: Path) -> tuple[Path, Path]:
    a_issuer, b_issuer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    b_path = _deployment(workdir / "b", "b.example", b_issuer, (
        f'[[federation]]\nname = "a"\nissuer = "{a_issuer}"\njwks_uri = "{a_issuer}/jwks"\n'
        f'agents = ["spiffe://a.example/agent/*"]\naudiences = ["{WIKI_B}"]\nscopes = ["wiki:read"]\n'
        f'max_tokens = 100000\nmax_ttl = 900\nstale_after = 10\nmax_crossings_per_minute = 1000000\n'
        f'feed_principal = "spiffe://b.example/feed"\n\n'
        f'[revocations]\nsubscribers = ["spiffe://b.example/svc/rs"]'
    ))  # fmt: skip
    bundle = DevTrustDomain.bundle_path(workdir / "b" / ".tether", "b.example")
    a_path = _deployment(workdir / "a", "a.example", a_issuer, (
        f'[[trust_domains]]\nname = "b.example"\nbundle_file = "{bundle}"\n\n'
        f'[revocations]\nsubscribers = ["spiffe://b.example/feed"]'
    ))  # fmt: skip
    return a_path, b_path


def _side(config_path: Path, http: httpx.Client) -> _Side:
    config = load_config(config_path)
    name = config.dev.trust_domain
    domain = DevTrustDomain.load(config.data_dir, name, load_master_key(config.master_key_file))
    return _Side(name, config.issuer, domain, DPoPKey(), http)


def _rate(duration: float, one: Callable[[], object]) -> tuple[float, int]:
    for _ in range(WARMUP):
        one()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < duration:
        one()
        count += 1
    return count / (time.perf_counter() - start), count


def _exchange_rows(a: _Side, b: _Side, duration: float) -> list[Row]:
    local_task = a.task(a.principal(AGENT_PATH), [WIKI_A])
    cross_task = a.task(a.principal(AGENT_PATH), [b.url])
    agent = DPoPKey()
    session = a.token({"grant_type": TOKEN_EXCHANGE, "subject_token": a.svid(AGENT_PATH), "subject_token_type": JWT,
                       "task": cross_task}, agent)  # fmt: skip

    def local() -> None:
        a.token({"grant_type": TOKEN_EXCHANGE, "subject_token": a.svid(AGENT_PATH), "subject_token_type": JWT,
                 "task": local_task}, agent)  # fmt: skip

    def crossing() -> None:
        hop = a.token({"grant_type": TOKEN_EXCHANGE, "subject_token": session, "subject_token_type": ACCESS,
                       "resource": b.url}, agent)  # fmt: skip
        b.token({"grant_type": JWT_BEARER_GRANT, "assertion": hop}, agent)

    local_rate, local_n = _rate(duration, local)
    cross_rate, cross_n = _rate(duration, crossing)
    note = "one client, sequential, over loopback HTTP; client-side SVID and DPoP signing included"
    return [
        Row("federation: local session exchange at A (workload JWT → session)", local_rate, "ops/s",
            notes={"requests": local_n, "measured": note}),
        Row("federation: cross-domain exchange (A hop for B's issuer + B jwt-bearer → linked session)", cross_rate,
            "ops/s", floor=local_rate, floor_unit="local session ops/s",
            notes={"crossings": cross_n, "measured": note + "; two round trips per crossing"}),
    ]  # fmt: skip


async def _latencies(a: _Side, b: _Side, samples: int) -> tuple[list[float], list[float]]:
    async with httpx.AsyncClient(trust_env=False, timeout=10.0) as http:
        feed = ObservedFeed(b.url, http, identity=DevIdentity(b.domain, b.principal("svc/rs")))
        feed.start()
        try:
            await feed.wait_synced(15.0)
            cross = [await _one_crossing(a, b, feed) for _ in range(WARMUP + samples)][WARMUP:]
            local = [await _one_local(b, feed) for _ in range(WARMUP + samples)][WARMUP:]
        finally:
            await feed.aclose()
    return cross, local


async def _timed_end(side: _Side, task_id: str, watched: str, feed: ObservedFeed) -> float:
    applied: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    feed.waiting[watched] = applied
    start = time.perf_counter()
    response = await asyncio.to_thread(side.admin, "POST", f"/tasks/{task_id}/complete")
    if response.status_code != 200:
        raise RuntimeError(f"completion answered {response.status_code}: {response.text[:300]}")
    try:
        return (await asyncio.wait_for(applied, 10.0) - start) * 1000
    except TimeoutError:
        raise RuntimeError(f"no revocation of {watched} reached B's subscriber within 10 s") from None


async def _one_crossing(a: _Side, b: _Side, feed: ObservedFeed) -> float:
    def setup() -> tuple[str, str]:
        task = a.task(a.principal(AGENT_PATH), [b.url])
        key = DPoPKey()
        session = a.token({"grant_type": TOKEN_EXCHANGE, "subject_token": a.svid(AGENT_PATH), "subject_token_type": JWT,
                           "task": task}, key)  # fmt: skip
        hop = a.token({"grant_type": TOKEN_EXCHANGE, "subject_token": session, "subject_token_type": ACCESS,
                       "resource": b.url}, key)  # fmt: skip
        linked = b.token({"grant_type": JWT_BEARER_GRANT, "assertion": hop}, key)
        return task, _claim(linked, "txn")

    task, linked_task = await asyncio.to_thread(setup)
    return await _timed_end(a, task, linked_task, feed)


async def _one_local(b: _Side, feed: ObservedFeed) -> float:
    task = await asyncio.to_thread(b.task, b.principal(AGENT_PATH), [WIKI_B])
    return await _timed_end(b, task, task, feed)


def _claim(token: str, name: str) -> str:
    import base64
    import json

    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))[name])


def _latency_row(name: str, values: list[float], *, floor: float | None = None, path: str) -> Row:
    p99 = percentile(values, 0.99)
    notes = {"p50_ms": round(statistics.median(values), 2), "p99_ms": round(p99, 2), "samples": len(values), "path": path}
    return Row(name, p99, "ms p99", floor=floor, floor_unit="in-domain ms p99" if floor else "", notes=notes)


def federation_rows(workdir: Path, *, duration: float = 5.0, samples: int = 30) -> list[Row]:
    a_path, b_path = _pair(workdir)
    a_url, b_url = load_config(a_path).issuer, load_config(b_path).issuer
    with (
        serve([tether_bin(), "serve", "--config", str(a_path)], a_url, core="0"),
        serve([tether_bin(), "serve", "--config", str(b_path)], b_url, core="1"),
        httpx.Client(trust_env=False, timeout=30.0) as http,
    ):
        a, b = _side(a_path, http), _side(b_path, http)
        _wait_fresh(b)
        rows = _exchange_rows(a, b, duration)
        cross, local = asyncio.run(_latencies(a, b, samples))
    local_row = _latency_row("federation: in-domain revocation (task completed at B → B's subscriber)", local,
                             path="B's task completed at B; entry pushed on B's feed")  # fmt: skip
    cross_row = _latency_row(
        "federation: cross-domain revocation (A's task completed → B's subscriber sees the linked task end)", cross,
        floor=local_row.value, path="A's feed → B's follower ends the linked task → B's feed → subscriber",
    )  # fmt: skip
    return [*rows, local_row, cross_row]


def _wait_fresh(b: _Side, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while b.http.get(b.url + "/healthz").json().get("federation") != {"fresh": 1, "stale": 0}:
        if time.monotonic() > deadline:
            raise RuntimeError("B never heard A's revocation feed")
        time.sleep(0.1)
