"""Gateway overhead: the latency one proxied call adds over calling the legacy upstream directly.

The gateway is paid per call, so the target is at most 1 ms added at the median. A minimal
legacy API (``upstream_app``), the STS and ``tether gateway`` share core 0 and the load
generator has core 1; every request is pre-built with its own DPoP proof. On one connection,
direct and gateway calls alternate in halves so load changes hit both, and the figure is
``p50(gateway) - p50(direct)``; a run at concurrency 16 gives throughput, and ``/proc`` the
gateway's CPU time per call. OAuth routes add their own two figures (``tether.bench.gateway_oauth``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.types import Receive, Scope, Send

from tether.bench.exchange import setup_task
from tether.bench.floor_app import drain, lifespan, respond
from tether.bench.gateway_oauth import oauth_rows
from tether.bench.harness import (
    CORES,
    Actor,
    Deployment,
    Load,
    bench_deployment,
    run_loadgen,
    serve,
    summarise,
    tether_bin,
    uvicorn_command,
)
from tether.bench.loadgen import build_request
from tether.bench.report import Row
from tether.gateway.vault import store_secret
from tether.urns import TOKEN_EXCHANGE
from tether.urns import TOKEN_TYPE_ACCESS as ACCESS
from tether.web.server import free_port

__all__ = ["gateway_rows", "upstream_app"]

#: The legacy API's static key: the upstream accepts only this, the gateway injects it.
SECRET = "bench_live/9fQ+legacy=StaticKey42"
SECRET_NAME = "bench-legacy-key"
HEADER = "X-Api-Key"
ROUTE = "legacy"
PATH = "/v1/items"
CONCURRENCY = 16

_BODY = b'{"ok":true,"items":[]}'
_DENIED = b'{"error":"invalid api key"}'
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_HEADER_KEY = HEADER.lower().encode()
_SECRET_BYTES = SECRET.encode()


# -- the legacy upstream (its own uvicorn process) ---------------------------------------------
async def upstream_app(scope: Scope, receive: Receive, send: Send) -> None:
    """A bearer-only legacy API: 200 with a small JSON body if ``X-Api-Key`` is the key, else 401."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    await drain(receive)
    keys = [value for name, value in scope["headers"] if name == _HEADER_KEY]
    ok = scope["path"] == "/healthz" or keys == [_SECRET_BYTES]
    await respond(send, 200 if ok else 401, _BODY if ok else _DENIED)


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several load-generator results as one (latencies pooled, statuses and time summed)."""
    statuses: dict[str, int] = {}
    for run in runs:
        for status, count in run["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    return {
        "latencies": [x for run in runs for x in run["latencies"]],
        "statuses": statuses,
        "elapsed": sum(run["elapsed"] for run in runs),
        "sent": sum(run["sent"] for run in runs),
    }


# -- the deployment ------------------------------------------------------------------------
def _gateway_toml(port: int, upstream: str) -> str:
    return f"""
[gateway]
url = "http://127.0.0.1:{port}"
port = {port}

[[gateway.routes]]
name = "{ROUTE}"
upstream = "{upstream}"
secret = "{SECRET_NAME}"
inject = "header"
header = "{HEADER}"
template = "{{secret}}"
allow = ["GET {PATH}"]
owner = "bench"
justification = "benchmark: a legacy API that only takes a static key"
expires = 2099-12-31
max_requests_per_task = 100000000
max_requests_per_second = 1000000
"""


def _store_secret(d: Deployment) -> None:
    store_secret(d.config, SECRET_NAME, SECRET, actor="bench:operator")


@dataclass
class _Rig:
    """The running upstream, STS and gateway, and an agent holding a hop token for the route."""

    upstream: str
    gateway: str
    gateway_pid: int
    agent: Actor
    token: str
    nonce: str | None = None

    @property
    def route_url(self) -> str:
        return f"{self.gateway}/routes/{ROUTE}{PATH}"

    def direct_request(self) -> bytes:
        return build_request("GET", self.upstream + PATH, {HEADER: SECRET})

    def gateway_request(self) -> bytes:
        proof = self.agent.key.proof("GET", self.route_url, nonce=self.nonce, access_token=self.token)
        return build_request("GET", self.route_url, {"Authorization": f"DPoP {self.token}", "DPoP": proof})

    def gateway_requests(self, n: int) -> list[bytes]:
        return [self.gateway_request() for _ in range(n)]

    def call(self, http: httpx.Client) -> httpx.Response:
        """One gateway call over httpx, taking up a DPoP nonce if the gateway demands one."""
        for _ in range(2):
            proof = self.agent.key.proof("GET", self.route_url, nonce=self.nonce, access_token=self.token)
            response = http.get(self.route_url, headers={"Authorization": f"DPoP {self.token}", "DPoP": proof})
            self.nonce = response.headers.get("dpop-nonce", self.nonce)
            if response.status_code == 401 and "use_dpop_nonce" in response.headers.get("www-authenticate", ""):
                continue
            return response
        return response

    def failure(self, what: str, load: Load) -> RuntimeError:
        with httpx.Client(trust_env=False, timeout=10) as http:
            response = self.call(http)
        return RuntimeError(f"{what}: no call succeeded ({load.statuses}); a call now: {response.status_code} {response.text}")


@contextmanager
def _rig(workdir: Path) -> Iterator[_Rig]:
    up_port, gw_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    d = bench_deployment(workdir / "gateway", extra=_gateway_toml(gw_port, upstream))
    _store_secret(d)
    config = str(d.config.path)
    with ExitStack() as stack:
        stack.enter_context(serve(uvicorn_command("tether.bench.gateway:upstream_app", up_port), upstream))
        stack.enter_context(serve([tether_bin(), "serve", "--config", config], d.url))
        gw = stack.enter_context(serve([tether_bin(), "gateway", "--config", config], f"http://127.0.0.1:{gw_port}"))
        http = stack.enter_context(httpx.Client(trust_env=False, timeout=30))
        audience = f"{gw.url}/routes/{ROUTE}"
        agent, session, _ = setup_task(d, http, [audience])
        form = {"grant_type": TOKEN_EXCHANGE, "subject_token": session, "subject_token_type": ACCESS, "resource": audience}
        rig = _Rig(upstream, gw.url, gw.process.pid, agent, str(agent.token(form)["access_token"]))
        deadline = time.monotonic() + 20
        while (response := rig.call(http)).status_code != 200:  # the gateway's revocation view may still be syncing
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway refused the first call: {response.status_code} {response.text}")
            time.sleep(0.2)
        yield rig


# -- the row -------------------------------------------------------------------------------
def _ms(value: float) -> float:
    return round(value, 3)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/PID/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _measure(rig: _Rig, requests: list[bytes], concurrency: int, duration: float) -> tuple[dict[str, Any], float]:
    """A gateway run and the gateway's CPU seconds spent during it."""
    before = _cpu_seconds(rig.gateway_pid)
    raw = run_loadgen(rig.gateway, requests, concurrency=concurrency, duration=duration)
    return raw, _cpu_seconds(rig.gateway_pid) - before


def gateway_rows(workdir: Path, *, duration: float = 5.0) -> list[Row]:
    """Added p50 latency of one gateway call over a direct upstream call, on one connection."""
    half = duration / 2
    with _rig(workdir) as rig:
        direct_request = rig.direct_request()
        # warm-up of both paths (connections, JWKS, the opened secret) and the gateway's rate on one connection
        run_loadgen(rig.upstream, [direct_request] * 2000, concurrency=1, duration=0.5)
        warm = summarise(run_loadgen(rig.gateway, rig.gateway_requests(1500), concurrency=1, duration=1.0))
        if warm.ok == 0:
            raise rig.failure("gateway warm-up", warm)
        rate = warm.throughput
        direct_runs, gateway_runs, cpu = [], [], 0.0
        for _ in range(2):
            direct_runs.append(run_loadgen(rig.upstream, [direct_request] * int(half * 20_000), concurrency=1, duration=half))
            requests = rig.gateway_requests(int(rate * half * 2) + 200)  # unique proofs, built before the clock
            raw, spent = _measure(rig, requests, 1, half)
            gateway_runs.append(raw)
            cpu += spent
        direct, via = summarise(_merge(direct_runs)), summarise(_merge(gateway_runs))
        if direct.ok == 0:
            answer = httpx.get(rig.upstream + PATH, headers={HEADER: SECRET}, trust_env=False)
            raise RuntimeError(
                f"direct calls: none succeeded ({direct.statuses}); a call now: {answer.status_code} {answer.text}"
            )
        if via.ok == 0:
            raise rig.failure("gateway, one connection", via)
        requests = rig.gateway_requests(int(rate * duration * 3) + 500)
        raw, loaded_cpu = _measure(rig, requests, CONCURRENCY, duration)
        loaded = summarise(raw)
        if loaded.ok == 0:
            raise rig.failure(f"gateway, c={CONCURRENCY}", loaded)
    notes: dict[str, Any] = {
        "direct_p50_ms": _ms(direct.p50_ms),
        "direct_p99_ms": _ms(direct.p99_ms),
        "gateway_p50_ms": _ms(via.p50_ms),
        "gateway_p99_ms": _ms(via.p99_ms),
        "added_p99_ms": _ms(via.p99_ms - direct.p99_ms),
        "gateway_cpu_ms_per_call": _ms(1000 * cpu / via.ok),
        "calls": {"direct": direct.ok, "gateway": via.ok},
        f"gateway_c{CONCURRENCY}_req_per_s": round(loaded.throughput),
        f"gateway_c{CONCURRENCY}_p50_ms": round(loaded.p50_ms, 2),
        f"gateway_c{CONCURRENCY}_p99_ms": round(loaded.p99_ms, 2),
        f"gateway_c{CONCURRENCY}_cpu_ms_per_call": _ms(1000 * loaded_cpu / loaded.ok),
        "errors": {"direct": direct.errors, "gateway": via.errors, f"gateway_c{CONCURRENCY}": loaded.errors},
        "refused_503": via.refused + loaded.refused,
        "request_bytes": {"direct": len(direct_request), "gateway": len(rig.gateway_request())},
        "setup": "upstream, STS and gateway on core 0; load generator on core 1; direct and gateway runs alternate"
        if CORES >= 2
        else "everything shares the one core",
    }
    if via.errors or loaded.errors or direct.errors:
        notes["statuses"] = {"direct": direct.statuses, "gateway": via.statuses, f"c{CONCURRENCY}": loaded.statuses}
    row = Row(
        "gateway: latency added per proxied call vs the upstream directly, one connection",
        via.p50_ms - direct.p50_ms,
        "ms added p50",
        target="≤ 1 ms p50",
        notes=notes,
    )
    return [row, *oauth_rows(workdir, duration=duration)]  # OAuth routes: a cached token, and a fetch per call
