"""MCP overhead: what tether adds to one ``tools/call``, at a protected server and through the gateway.

Two pairs, each the same call with and without tether, measured with the official SDK's
client from this process (so the client's own cost is in both figures of a pair):

* a protected server: ``notes_server()`` served plain and behind ``tether.mcp.protect``
  (``tether.bench.mcp_apps``, one process on core 0); the protected calls carry a hop token
  and a fresh DPoP proof each (``session.mcp_auth()``) and are verified, authorized per tool
  by the scope convention and Cedar, and checked against the revocation view;
* the gateway: the demo's stdio drive server called directly over stdio, and through
  ``tether gateway`` (``[[gateway.mcp]]``, pinned), which adds an HTTP hop, the same checks,
  an audit record before and after the call, and the stdio hop to its own upstream process.

The pairs alternate in halves, so a change of load hits both; each figure is the difference
of the medians (p99s in the notes).
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

import httpx

from tether.agent.identity import DevIdentity
from tether.agent.session import Agent, TaskSession
from tether.bench.exchange import AGENT, setup_task
from tether.bench.harness import bench_deployment, percentile, serve, tether_bin
from tether.bench.mcp_apps import SERVICE
from tether.bench.report import Row
from tether.web.server import free_port

__all__ = ["mcp_rows"]

ROUTE = "drive"
#: calls per figure (two halves); one call is a millisecond or two
CALLS = 600


def _toml(port: int, protected: str) -> str:
    """The gateway's MCP route, and the protected server registered as a resource (it follows the feed)."""
    command = ", ".join(f'"{part}"' for part in (sys.executable, "-m", "tether.demo.mcp_servers", "drive"))
    return f"""
[[resources]]
uri = "{protected}"
principals = ["{SERVICE}"]

[gateway]
url = "http://127.0.0.1:{port}"
port = {port}

[[gateway.mcp]]
name = "{ROUTE}"
command = [{command}]
tools = ["*"]
owner = "bench"
justification = "benchmark: the demo's stdio MCP server"
expires = 2099-12-31
max_calls_per_task = 100000000
max_calls_per_second = 1000000
"""


Call = Callable[[], Awaitable[Any]]


async def _time(call: Call, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        result = await call()
        out.append((time.perf_counter() - started) * 1000)
        if getattr(result, "is_error", False):
            raise RuntimeError(f"a benchmark call failed: {result}")
    return out


async def _pair(plain: Call, tethered: Call, calls: int) -> tuple[list[float], list[float]]:
    for call in (plain, tethered):
        await _time(call, 30)  # warm-up: connections, JWKS, the hop token, the upstream process
    a: list[float] = []
    b: list[float] = []
    for _ in range(2):
        a += await _time(plain, calls // 2)
        b += await _time(tethered, calls // 2)
    return a, b


def _row(name: str, plain: list[float], tethered: list[float], labels: tuple[str, str]) -> Row:
    p50 = statistics.median
    notes = {
        f"{labels[0]}_p50_ms": round(p50(plain), 3),
        f"{labels[0]}_p99_ms": round(percentile(plain, 99), 3),
        f"{labels[1]}_p50_ms": round(p50(tethered), 3),
        f"{labels[1]}_p99_ms": round(percentile(tethered, 99), 3),
        "calls": len(plain),
    }
    return Row(name, p50(tethered) - p50(plain), "ms added p50", notes=notes)


async def _measure(session: TaskSession, urls: dict[str, str], calls: int) -> list[Row]:
    import httpx2
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters
    from mcp.client.streamable_http import streamable_http_client

    async with AsyncExitStack() as stack:

        async def client(url: str, auth: Any = None) -> Any:
            http = await stack.enter_async_context(httpx2.AsyncClient(auth=auth, trust_env=False, timeout=30.0))
            return await stack.enter_async_context(Client(streamable_http_client(url, http_client=http)))

        plain = await client(urls["plain"])
        protected = await client(urls["protected"], session.mcp_auth())
        gateway = await client(urls["gateway"], session.mcp_auth())
        stdio = StdioServerParameters(command=sys.executable, args=["-m", "tether.demo.mcp_servers", "drive"])
        direct = await stack.enter_async_context(Client(stdio))
        search = {"query": "demo"}
        read = {"path": "/shared/q3-plan.md"}
        a, b = await _pair(
            lambda: plain.call_tool("search_notes", search), lambda: protected.call_tool("search_notes", search), calls
        )
        c, d = await _pair(lambda: direct.call_tool("read_file", read), lambda: gateway.call_tool("read_file", read), calls)
    return [
        _row("MCP tools/call: added by tether.mcp.protect vs the same server plain", a, b, ("plain", "protected")),
        _row("MCP tools/call: added by the gateway vs the stdio server directly", c, d, ("direct", "gateway")),
    ]


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url, trust_env=False, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer")
        time.sleep(0.05)


def mcp_rows(workdir: Path, *, calls: int = CALLS) -> list[Row]:
    plain_port, protected_port, gw_port = free_port(), free_port(), free_port()
    d = bench_deployment(workdir / "mcp", extra=_toml(gw_port, f"http://127.0.0.1:{protected_port}/mcp"))
    config = str(d.config.path)
    gateway_url = f"http://127.0.0.1:{gw_port}"
    urls = {
        "plain": f"http://127.0.0.1:{plain_port}/mcp",
        "protected": f"http://127.0.0.1:{protected_port}/mcp",
        "gateway": f"{gateway_url}/mcp/{ROUTE}",
    }
    subprocess.run([tether_bin(), "mcp", "pin", ROUTE, "--config", config], check=True, capture_output=True, timeout=120)  # noqa: S603
    with ExitStack() as stack:
        stack.enter_context(serve([tether_bin(), "serve", "--config", config], d.url))
        apps = [sys.executable, "-m", "tether.bench.mcp_apps", config, str(plain_port), str(protected_port)]
        stack.enter_context(serve(apps, f"http://127.0.0.1:{plain_port}"))
        _wait_ready(f"http://127.0.0.1:{protected_port}/healthz")  # the same process serves both ports
        stack.enter_context(serve([tether_bin(), "gateway", "--config", config], gateway_url))
        http = stack.enter_context(httpx.Client(trust_env=False, timeout=30))
        scopes = ["tool:search_notes", "tool:read_file"]
        _, _, task_id = setup_task(d, http, [urls["protected"], urls["gateway"]], scopes)
        session = Agent(d.url, DevIdentity(d.domain, AGENT)).session(task_id)
        return asyncio.run(_measure(session, urls, calls))
