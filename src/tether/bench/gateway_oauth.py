"""Gateway OAuth routes: what an upstream access token costs per call (FED-04), beside a static-secret route.

One uvicorn process plays the SaaS side: a token endpoint (client_credentials, client_secret_basic;
``/token/long`` issues hour-long tokens, ``/token/short`` one-second ones) and an API that accepts
the tokens it issued, or the static key under ``/static``. Three gateway routes call it: ``static``
(a vaulted key), ``oauth`` (the token is fetched once, then a cache hit per call) and ``oauth-miss``
(a one-second token is never cached, so every call fetches one: the cost of a cache miss, with its
audit record). One connection; the three alternate in halves so load changes hit all of them.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
from starlette.types import Receive, Scope, Send

from tether.bench.exchange import setup_task
from tether.bench.floor_app import drain, lifespan, respond
from tether.bench.harness import Actor, bench_deployment, run_loadgen, serve, summarise, tether_bin, uvicorn_command
from tether.bench.loadgen import build_request
from tether.bench.report import Row
from tether.gateway.oauth_wire import basic_authorization
from tether.gateway.vault import store_secret
from tether.urns import TOKEN_EXCHANGE
from tether.urns import TOKEN_TYPE_ACCESS as ACCESS
from tether.web.server import free_port

__all__ = ["oauth_app", "oauth_rows"]

CLIENT_ID = "bench-gateway"
CLIENT_SECRET = "bench-client/9fQ+secret=42"
STATIC_KEY = "bench_live/static+Key=42"
PATH = "/v1/items"
ROUTES = ("static", "oauth", "oauth-miss")

_BASIC = basic_authorization(CLIENT_ID, CLIENT_SECRET).encode()
_ISSUED: OrderedDict[bytes, None] = OrderedDict()
_OK = b'{"ok":true,"items":[]}'
_DENIED = b'{"error":"invalid_token"}'


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope["headers"] if key == name), None)


async def oauth_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The SaaS side: its token endpoint and its API (see the module docstring)."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    await drain(receive)
    path: str = scope["path"]
    if path.startswith("/token/"):
        if _header(scope, b"authorization") != _BASIC:
            await respond(send, 401, b'{"error":"invalid_client"}')
            return
        token = secrets.token_urlsafe(32)
        _ISSUED[token.encode()] = None
        while len(_ISSUED) > 100_000:
            _ISSUED.popitem(last=False)
        ttl = 3600 if path == "/token/long" else 1
        await respond(send, 200, json.dumps({"access_token": token, "token_type": "Bearer", "expires_in": ttl}).encode())
        return
    if path == "/healthz":
        ok = True
    elif path.startswith("/static/"):
        ok = _header(scope, b"x-api-key") == STATIC_KEY.encode()
    else:
        auth = _header(scope, b"authorization") or b""
        ok = auth.startswith(b"Bearer ") and auth[7:] in _ISSUED
    await respond(send, 200 if ok else 401, _OK if ok else _DENIED)


def _toml(port: int, saas: str) -> str:
    common = (f'allow = ["GET {PATH}"]\nowner = "bench"\njustification = "benchmark"\nexpires = 2099-12-31\n'
              "max_requests_per_task = 100000000\nmax_requests_per_second = 1000000\n")  # fmt: skip
    oauth = (f'[gateway.routes.oauth]\ngrant = "client_credentials"\nclient_id = "{CLIENT_ID}"\n'
             f'client_secret = "bench-oauth-client"\nscopes = ["items.read"]\n')  # fmt: skip
    return (
        f'[gateway]\nurl = "http://127.0.0.1:{port}"\nport = {port}\n\n'
        f'[[gateway.routes]]\nname = "static"\nupstream = "{saas}/static"\nsecret = "bench-static-key"\n'
        f'header = "X-Api-Key"\ntemplate = "{{secret}}"\n{common}\n'
        f'[[gateway.routes]]\nname = "oauth"\nupstream = "{saas}/api"\n{common}{oauth}'
        f'token_endpoint = "{saas}/token/long"\n\n'
        f'[[gateway.routes]]\nname = "oauth-miss"\nupstream = "{saas}/api"\n{common}{oauth}'
        f'token_endpoint = "{saas}/token/short"\n'
    )


class _Caller:
    """The agent: a hop token per route and pre-built requests with their own DPoP proofs."""

    def __init__(self, gateway: str, agent: Actor, tokens: dict[str, str]) -> None:
        self.gateway = gateway
        self.agent = agent
        self.tokens = tokens

    def url(self, route: str) -> str:
        return f"{self.gateway}/routes/{route}{PATH}"

    def requests(self, route: str, n: int) -> list[bytes]:
        url, token = self.url(route), self.tokens[route]
        return [build_request("GET", url, {"Authorization": f"DPoP {token}",
                                           "DPoP": self.agent.key.proof("GET", url, access_token=token)})
                for _ in range(n)]  # fmt: skip

    def call(self, http: httpx.Client, route: str) -> httpx.Response:
        url, token = self.url(route), self.tokens[route]
        proof = self.agent.key.proof("GET", url, access_token=token)
        return http.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": proof})


@contextmanager
def _rig(workdir: Path) -> Iterator[_Caller]:
    saas_port, gw_port = free_port(), free_port()
    saas = f"http://127.0.0.1:{saas_port}"
    d = bench_deployment(workdir / "gateway-oauth", extra=_toml(gw_port, saas))
    store_secret(d.config, "bench-static-key", STATIC_KEY, actor="bench:operator")
    store_secret(d.config, "bench-oauth-client", CLIENT_SECRET, actor="bench:operator")
    config = str(d.config.path)
    with ExitStack() as stack:
        stack.enter_context(serve(uvicorn_command("tether.bench.gateway_oauth:oauth_app", saas_port), saas))
        stack.enter_context(serve([tether_bin(), "serve", "--config", config], d.url))
        gw = stack.enter_context(serve([tether_bin(), "gateway", "--config", config], f"http://127.0.0.1:{gw_port}"))
        http = stack.enter_context(httpx.Client(trust_env=False, timeout=30))
        audiences = {route: f"{gw.url}/routes/{route}" for route in ROUTES}
        agent, session, _ = setup_task(d, http, list(audiences.values()))
        tokens = {route: str(agent.token({"grant_type": TOKEN_EXCHANGE, "subject_token": session,
                                           "subject_token_type": ACCESS, "resource": aud})["access_token"])
                  for route, aud in audiences.items()}  # fmt: skip
        caller = _Caller(gw.url, agent, tokens)
        deadline = time.monotonic() + 20
        for route in ROUTES:  # the gateway's revocation view may still be syncing
            while (response := caller.call(http, route)).status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"route {route}: the first call failed: {response.status_code} {response.text}")
                time.sleep(0.2)
        yield caller


def oauth_rows(workdir: Path, *, duration: float = 5.0) -> list[Row]:
    """Added p50 per call: a cached upstream token vs a static secret, and a token fetch vs a cached token."""
    part = duration / 2
    runs: dict[str, list[dict[str, Any]]] = {route: [] for route in ROUTES}
    with _rig(workdir) as caller:
        for route in ROUTES:  # warm-up: connections, the opened secrets, the first token
            run_loadgen(caller.gateway, caller.requests(route, 300), concurrency=1, duration=0.3)
        for _ in range(2):
            for route in ROUTES:
                runs[route].append(run_loadgen(caller.gateway, caller.requests(route, int(part * 3000) + 200),
                                               concurrency=1, duration=part))  # fmt: skip
    static, hit, miss = (summarise(_merged(runs[route])) for route in ROUTES)
    for route, load in zip(ROUTES, (static, hit, miss), strict=True):
        if load.ok == 0:
            raise RuntimeError(f"gateway route {route}: no call succeeded ({load.statuses})")
    notes: dict[str, Any] = {
        "static_p50_ms": round(static.p50_ms, 3),
        "oauth_cached_p50_ms": round(hit.p50_ms, 3),
        "oauth_fetch_p50_ms": round(miss.p50_ms, 3),
        "oauth_cached_p99_ms": round(hit.p99_ms, 3),
        "oauth_fetch_p99_ms": round(miss.p99_ms, 3),
        "calls": {"static": static.ok, "cached": hit.ok, "fetch": miss.ok},
        "errors": {"static": static.errors, "cached": hit.errors, "fetch": miss.errors},
        "token_endpoint": "loopback, client_secret_basic; a fetch also writes its gateway.oauth.token audit record",
    }
    return [
        Row("gateway OAuth route: latency added per call by a cached upstream token vs a static secret",
            hit.p50_ms - static.p50_ms, "ms added p50", notes=notes),
        Row("gateway OAuth route: latency added per call by fetching the upstream token (cache miss) vs cached",
            miss.p50_ms - hit.p50_ms, "ms added p50", notes={"fetch_p50_ms": round(miss.p50_ms, 3)}),
    ]  # fmt: skip


def _merged(runs: list[dict[str, Any]]) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for run in runs:
        for status, count in run["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    return {"latencies": [x for run in runs for x in run["latencies"]], "statuses": statuses,
            "elapsed": sum(run["elapsed"] for run in runs), "sent": sum(run["sent"] for run in runs)}  # fmt: skip
