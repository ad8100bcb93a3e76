"""``tether bench profile``: where one exchange's CPU goes, by component, deterministically.

The STS application runs in this process on uvloop with its upkeep jobs, and is driven
through ASGI directly with pre-built requests (the same bytes the load generator sends, minus
the socket), one at a time or ``concurrency`` at a time, under ``cProfile``. Every function's
own time is attributed to a component by its source file; time in C functions (a SQLite
statement, an ECDSA verify, ``json.dumps``' encoder) goes to the component of the Python
function that called it, split by caller exactly as ``pstats`` records it. cProfile adds a
fixed cost per Python call, so call-heavy components read a little larger than they run; the
ranking and the before/after differences are what it is for. The server's HTTP parsing
(uvicorn, httptools) is not in it: ``tether bench``'s floor row measures that. The profiler's
clock is this process's CPU time, so another process on the core stretches the run, not the figures.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

import tether.features  # noqa: F401  (the feature tables are registered before a config is loaded)
from tether.bench.exchange import RESOURCES
from tether.bench.harness import bench_deployment, serve, tether_bin
from tether.bench.versus import TetherRequests

__all__ = ["COMPONENTS", "ComponentTime", "component_of", "profile_exchange"]

#: (component, path fragments) in order: the first that matches a function's file wins.
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("JWS signature checks (joserfc, cryptography, rules/jws)", ("/joserfc/", "/cryptography/", "tether/rules/jws")),
    ("DPoP proof rules (rules/dpop, proofs, nonces)", ("tether/rules/dpop", "tether/proofs", "tether/rules/nonce",
                                                       "tether/rules/replay_epoch")),
    ("workload identity (SPIFFE JWT-SVID)", ("tether/identity/",)),
    ("store: SQLite statements and group commit", ("tether/store/",)),
    ("audit hash chain", ("tether/audit/",)),
    ("policy (Cedar) and its cache", ("tether/policy/", "/cedarpy/")),
    ("monitor (detectors over the audit tail)", ("tether/monitor/",)),
    ("form and header parsing", ("tether/web/forms", "tether/web/dpop_request", "/urllib/", "tether/streams")),
    ("Starlette routing, middleware, responses", ("/starlette/", "tether/web/")),
    ("metrics (prometheus_client)", ("/prometheus_client/", "tether/metrics")),
    ("exchange rules and use case (rules/, sts/)", ("tether/rules/", "tether/sts/", "tether/model", "tether/lru",
                                                    "tether/clock")),
    ("JSON (stdlib)", ("/json/",)),
    ("event loop, asyncio", ("/asyncio/", "uvloop")),
)  # fmt: skip
OTHER = "other (dataclasses, random, base64, …)"


def component_of(filename: str) -> str:
    """The component a source file belongs to (``COMPONENTS`` order), else ``OTHER``."""
    path = filename.replace("\\", "/")
    for name, fragments in COMPONENTS:
        if any(fragment in path for fragment in fragments):
            return name
    return OTHER


@dataclass(frozen=True)
class ComponentTime:
    component: str
    us_per_request: float
    share: float


def _attribute(stats: pstats.Stats, requests: int) -> list[ComponentTime]:
    totals: dict[str, float] = {}
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]  # pstats keeps it undocumented
    for (filename, _, _), (_, _, own, _, callers) in raw.items():
        if filename != "~":
            key = component_of(filename)
            totals[key] = totals.get(key, 0.0) + own
            continue
        # a C function: its own time, split by the Python callers that spent it
        spent = sum(c[2] for c in callers.values()) or 1.0
        for (caller_file, _, _), c in callers.items():
            key = component_of(caller_file) if caller_file != "~" else OTHER
            totals[key] = totals.get(key, 0.0) + own * c[2] / spent
    everything = sum(totals.values()) or 1.0
    rows = [ComponentTime(name, seconds / requests * 1e6, seconds / everything) for name, seconds in totals.items()]
    return sorted(rows, key=lambda r: -r.us_per_request)


class _Asgi:
    """Replays raw HTTP/1.1 requests (as the load generator builds them) into an ASGI app."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def call(self, raw: bytes) -> int:
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        method, target, _ = lines[0].split(b" ", 2)
        headers = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(b":") for line in lines[1:])]
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method.decode(),
            "scheme": "http", "path": target.decode(), "raw_path": target, "query_string": b"", "root_path": "",
            "headers": headers, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80), "state": {},
        }  # fmt: skip
        status = 0
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await self.app(scope, receive, send)
        return status


async def _drive(app: Any, requests: list[bytes], concurrency: int, profiler: cProfile.Profile) -> tuple[int, float]:
    asgi = _Asgi(app)
    queue = iter(requests)
    ok = 0

    async def worker() -> None:
        nonlocal ok
        for raw in queue:
            if await asgi.call(raw) == 200:
                ok += 1

    started = time.perf_counter()
    profiler.enable()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    profiler.disable()
    return ok, time.perf_counter() - started


def profile_exchange(
    workdir: Path, *, kind: str = "hop", requests: int = 3000, concurrency: int = 16
) -> tuple[list[ComponentTime], dict[str, float]]:
    """Profile ``requests`` exchanges of ``kind`` (``hop`` or ``session``) in process, by component."""
    import uvloop

    from tether.config import load_config
    from tether.sts.bootstrap import build_sts
    from tether.web.heap import settle_after_start

    d = bench_deployment(workdir / "profile", extra=RESOURCES)
    # the requests are built against a running STS (its nonce, a task, a session); then it stops
    # and the same deployment is served in this process
    with (
        httpx.Client(trust_env=False, timeout=30) as http,
        serve([tether_bin(), "serve", "--config", str(d.config.path)], d.url) as sts,
    ):
        ours = TetherRequests(d, http, sts.process.pid)
        make: Callable[[int], list[bytes]] = ours.hop if kind == "hop" else ours.session_exchange
        warm, measured = make(500), make(requests)
    sts_app = build_sts(load_config(d.config.path)).app
    settle_after_start()  # as ``tether serve`` does: the start-up heap frozen, young collections rarer
    profiler = cProfile.Profile(time.process_time)  # CPU time: what a neighbour on the core does not move

    async def main() -> tuple[int, float]:
        async with sts_app.router.lifespan_context(sts_app):
            await _drive(sts_app, warm, concurrency, cProfile.Profile())
            return await _drive(sts_app, measured, concurrency, profiler)

    ok, elapsed = uvloop.run(main())
    if ok < requests * 0.99:
        raise RuntimeError(f"only {ok} of {requests} {kind} exchanges succeeded in process (nonce expired?)")
    rows = _attribute(pstats.Stats(profiler), ok)
    return rows, {"requests": ok, "profiled_us_per_request": elapsed / ok * 1e6}
