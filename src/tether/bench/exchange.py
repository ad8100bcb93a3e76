"""Token exchange over HTTP: one STS process on one core, the load generator on the other.

Hop (session → hop), session (workload JWT → session) and actor (hop + service JWT →
delegated) exchanges at a fixed concurrency; a single connection for the unloaded p50;
64 connections for overload. (``tether serve --workers N`` is measured in ``scaling.py``.)
Every request is built (SVID minted, proof signed, nonce included) before the clock
starts, and every one is unique, as the replay checks require.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from tether.bench.harness import (
    Actor,
    Deployment,
    Load,
    bench_deployment,
    rss_kib,
    run_loadgen,
    serve,
    summarise,
    tether_bin,
    uvicorn_command,
)
from tether.bench.loadgen import form_request
from tether.bench.report import Row, SignatureCosts
from tether.urns import TOKEN_EXCHANGE
from tether.urns import TOKEN_TYPE_ACCESS as ACCESS
from tether.urns import TOKEN_TYPE_JWT as JWT
from tether.web.server import free_port

__all__ = [
    "ADMIN", "AGENT", "AUD_B", "AUD_C", "RESOURCES", "SVC_B", "ExchangeBench", "fresh_jwt_requests", "hop_requests",
    "setup_task",
]  # fmt: skip

AGENT = "spiffe://tether.local/agent/bench"
ADMIN = "spiffe://tether.local/admin"
SVC_B = "spiffe://tether.local/svc/b"
AUD_B = "https://b.bench.example"
AUD_C = "https://c.bench.example"
RESOURCES = f'\n[[resources]]\nuri = "{AUD_B}"\nprincipals = ["{SVC_B}"]\n'


def setup_task(
    d: Deployment, http: httpx.Client, audiences: list[str], scopes: list[str] | None = None
) -> tuple[Actor, str, str]:
    """An agent with a session token for a new, generously capped task."""
    admin = Actor(d, http)
    admin_token = admin.token({"grant_type": TOKEN_EXCHANGE, "subject_token": admin.svid(ADMIN), "subject_token_type": JWT})[
        "access_token"
    ]
    created = admin.api(
        "POST",
        "/tasks",
        admin_token,
        json={"agent": AGENT, "audiences": audiences, "scopes": scopes or ["read"], "max_tokens": 10_000_000},
    )
    created.raise_for_status()
    task_id = str(created.json()["id"])
    agent = Actor(d, http)
    session = agent.token(
        {"grant_type": TOKEN_EXCHANGE, "subject_token": agent.svid(AGENT), "subject_token_type": JWT, "task": task_id}
    )["access_token"]
    return agent, str(session), task_id


def _hop_form(subject: str, audience: str) -> dict[str, str]:
    return {"grant_type": TOKEN_EXCHANGE, "subject_token": subject, "subject_token_type": ACCESS, "resource": audience}


def hop_requests(agent: Actor, session: str, n: int) -> list[bytes]:
    url = agent.d.url + "/token"
    form = _hop_form(session, AUD_B)
    agent.token(form)  # warm-up: the subject token is verified once, then cached; the nonce is fresh
    return [form_request(url, form, {"DPoP": agent.key.proof("POST", url, nonce=agent.nonce)}) for _ in range(n)]


def fresh_jwt_requests(caller: Actor, form: dict[str, str], field: str, who: str, n: int) -> list[bytes]:
    """``n`` exchanges that each carry a fresh workload JWT for ``who`` in ``field``, proofs with the
    server's current nonce (one exchange first, to learn it)."""
    url = caller.d.url + "/token"
    caller.token({**form, field: caller.svid(who)})
    return [
        form_request(url, {**form, field: caller.svid(who)}, {"DPoP": caller.key.proof("POST", url, nonce=caller.nonce)})
        for _ in range(n)
    ]


def _notes(load: Load, **extra: object) -> dict[str, object]:
    return {
        "p50_ms": round(load.p50_ms, 2),
        "p99_ms": round(load.p99_ms, 2),
        "errors": load.errors,
        "refused_503": load.refused,
        **extra,
    }


class ExchangeBench:
    def __init__(self, workdir: Path, costs: SignatureCosts, *, duration: float, store_toml: str = "") -> None:
        self.workdir = workdir
        self.costs = costs
        self.duration = duration
        self.store_toml = store_toml
        self.rows: list[Row] = []
        self.http_floor_rps = 0.0
        self.sts_rss_kib = 0

    def _load(self, url: str, requests: list[bytes], concurrency: int, duration: float | None = None) -> Load:
        return summarise(run_loadgen(url, requests, concurrency=concurrency, duration=duration or self.duration))

    def http_floor(self, concurrency: int) -> None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        args = uvicorn_command("tether.bench.floor_app:app", port)
        form = {**_hop_form("x" * 640, AUD_B)}
        request = form_request(url + "/token", form, {"DPoP": "y" * 560})
        with serve(args, url, health="/"):
            load = self._load(url, [request] * int(self.duration * 25000), concurrency)
            single = self._load(url, [request] * 3000, 1, min(self.duration, 3))
        self.http_floor_rps = load.throughput
        self.rows.append(
            Row(
                f"minimal ASGI handler on the same stack, c={concurrency} (floor)",
                load.throughput,
                "req/s",
                notes={
                    "p50_ms": round(load.p50_ms, 3),
                    "p99_ms": round(load.p99_ms, 3),
                    "one_connection_p50_ms": round(single.p50_ms, 3),
                },
            )
        )

    def floor(self, *, verifies: int, signs: int) -> float:
        return self.costs.floor_rate(verifies=verifies, signs=signs, extra_s=1 / self.http_floor_rps)

    def run(self, concurrency: int = 16) -> None:
        self.http_floor(concurrency)
        d = bench_deployment(self.workdir / "exchange", extra=RESOURCES, store_toml=self.store_toml)
        with (
            httpx.Client(trust_env=False, timeout=30) as http,
            serve([tether_bin(), "serve", "--config", str(d.config.path)], d.url) as sts,
        ):
            agent, session, task_id = setup_task(d, http, [AUD_B, AUD_C])
            n = int(self.duration * 6000)
            hop = self._load(d.url, hop_requests(agent, session, n), concurrency)
            self.rows.append(
                Row(
                    f"hop exchange (session → hop), c={concurrency}, 1 STS core",
                    hop.throughput,
                    "req/s",
                    self.floor(verifies=1, signs=1),
                    "req/s",
                    "≥ 1,500/s · p99 ≤ 20 ms · ≥ 60 % of floor",
                    _notes(hop),
                )
            )
            single = self._load(d.url, hop_requests(agent, session, 3000), 1, min(self.duration, 3))
            self.rows.append(
                Row(
                    "hop exchange on one connection (p50)",
                    single.p50_ms,
                    "ms",
                    target="p50 ≤ 1 ms",
                    notes={"p99_ms": round(single.p99_ms, 2)},
                )
            )
            over = self._load(d.url, hop_requests(agent, session, n), 64)
            self.rows.append(
                Row(
                    "overload: hop exchange at c=64, p99 ÷ p50",
                    over.p99_ms / over.p50_ms,
                    "×",
                    target="≤ 10× · excess refused fast (503)",
                    notes=_notes(over, served_per_s=round(over.throughput)),
                )
            )
            self._session(d, agent, task_id, concurrency)
            self._actor(d, http, concurrency)
            self.sts_rss_kib = rss_kib(sts.process.pid)

    def _session(self, d: Deployment, agent: Actor, task_id: str, concurrency: int) -> None:
        form = {"grant_type": TOKEN_EXCHANGE, "subject_token_type": JWT, "task": task_id}
        label = f"session exchange (workload JWT → session), c={concurrency}"
        self._fresh_jwts(d, agent, form, "subject_token", AGENT, label, concurrency, "≥ 1,200/s · ≥ 60 % of floor")

    def _actor(self, d: Deployment, http: httpx.Client, concurrency: int) -> None:
        """Service B exchanges the agent's hop token for B with its own JWT-SVID as actor, for C."""
        agent, session, _ = setup_task(d, http, [AUD_B, AUD_C])
        b_token = str(agent.token(_hop_form(session, AUD_B))["access_token"])
        form = {**_hop_form(b_token, AUD_C), "actor_token_type": JWT}
        label = f"actor exchange (hop + service JWT → delegated), c={concurrency}"
        self._fresh_jwts(d, Actor(d, http), form, "actor_token", SVC_B, label, concurrency, "")

    def _fresh_jwts(
        self, d: Deployment, caller: Actor, form: dict[str, str], field: str, who: str, label: str, c: int, target: str
    ) -> None:
        """Exchanges that each carry a fresh workload JWT for ``who`` in ``field`` (two verifies, one sign)."""
        load = self._load(d.url, fresh_jwt_requests(caller, form, field, who, int(self.duration * 3000)), c)
        self.rows.append(Row(label, load.throughput, "req/s", self.floor(verifies=2, signs=1), "req/s", target, _notes(load)))
