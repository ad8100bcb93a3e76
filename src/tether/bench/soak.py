"""Memory over a long run: hop exchanges at a fixed rate, the STS's resident set sampled.

The target is "memory flat (± 10 %) over a 10-minute run at half the measured maximum".
Every hop writes a token row and an audit record, every request passes the caches
(verified tokens, task definitions, proof keys, nonces, decisions) and the replay
store, so anything unbounded shows up as growth. The first samples are taken after a
warm-up minute (caches and SQLite's page cache fill up to their bounds), then the last
sample is compared with that baseline.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tether.bench.exchange import ADMIN, AGENT, AUD_B, AUD_C, RESOURCES, hop_requests, setup_task
from tether.bench.harness import (
    Actor,
    Deployment,
    bench_deployment,
    loadgen_command,
    rss_kib,
    run_loadgen,
    serve,
    summarise,
    tether_bin,
)
from tether.bench.report import Row
from tether.urns import TOKEN_EXCHANGE
from tether.urns import TOKEN_TYPE_JWT as JWT

__all__ = ["soak_rows"]


def _create_task(admin: Actor, admin_token: str, duration: int) -> str:
    created = admin.api(
        "POST",
        "/tasks",
        admin_token,
        json={
            "agent": AGENT,
            "audiences": [AUD_B, AUD_C],
            "scopes": ["read"],
            "max_tokens": 10_000_000,
            "max_duration": duration,
        },
    )
    created.raise_for_status()
    return str(created.json()["id"])


def soak_rows(
    workdir: Path, *, duration: float = 600.0, rate: float | None = None, warmup: float = 60.0, every: float = 10.0
) -> list[Row]:
    """Run hop exchanges at ``rate`` (default: half of a 5 s maximum) for ``duration`` seconds."""
    d = bench_deployment(workdir / "soak", extra=RESOURCES)
    args = [tether_bin(), "serve", "--config", str(d.config.path)]
    with httpx.Client(trust_env=False, timeout=30) as http, serve(args, d.url) as sts:
        agent, session, _ = setup_task(d, http, [AUD_B, AUD_C])
        if rate is None:
            peak = summarise(run_loadgen(d.url, hop_requests(agent, session, 30_000), concurrency=16, duration=5))
            rate = round(peak.throughput / 2)
        admin, admin_token = _admin(d, http)
        task = _create_task(admin, admin_token, min(900, int(duration + warmup + 120)))
        spec: dict[str, Any] = {
            "mode": "generate",
            "url": d.url,
            "host": "127.0.0.1",
            "port": int(d.url.rsplit(":", 1)[1]),
            "svid": agent.svid(AGENT, ttl=min(3600, int(duration + warmup + 300))),
            "task": task,
            "audience": AUD_B,
            "rate": rate,
            "concurrency": 8,
            "duration": duration + warmup,
        }
        samples, raw = _run_sampled(spec, sts.process.pid, every)
    load = summarise(raw)
    baseline = [kib for t, kib in samples if t >= warmup]
    first, last = (baseline[0], baseline[-1]) if baseline else (0, 0)
    change = (last - first) / first if first else float("nan")
    return [
        Row(
            f"memory over {duration / 60:.0f} min of hop exchanges at {rate:.0f}/s (STS RSS, last vs first after warm-up)",
            100 * change,
            "% change",
            target="within ± 10 %",
            notes={
                "rss_first_mib": round(first / 1024, 1),
                "rss_last_mib": round(last / 1024, 1),
                "rss_max_mib": round(max(baseline, default=0) / 1024, 1),
                "samples_mib": [round(kib / 1024, 1) for _, kib in samples],
                "served_per_s": round(load.throughput),
                "p50_ms": round(load.p50_ms, 2),
                "p99_ms": round(load.p99_ms, 2),
                "statuses": load.statuses,
            },
        )
    ]


def _admin(d: Deployment, http: httpx.Client) -> tuple[Actor, str]:
    admin = Actor(d, http)
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": admin.svid(ADMIN), "subject_token_type": JWT}
    return admin, str(admin.token(form)["access_token"])


def _run_sampled(spec: dict[str, Any], pid: int, every: float) -> tuple[list[tuple[float, int]], dict[str, Any]]:
    """Run the generating load generator while sampling ``pid``'s RSS every ``every`` seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        spec_file, out = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_file.write_text(json.dumps(spec))
        started = time.monotonic()
        process = subprocess.Popen(loadgen_command(spec_file, out))  # noqa: S603 - our own interpreter and module
        samples: list[tuple[float, int]] = []
        try:
            while process.poll() is None:
                samples.append((time.monotonic() - started, rss_kib(pid)))
                try:
                    process.wait(timeout=every)
                except subprocess.TimeoutExpired:
                    continue
        finally:
            if process.poll() is None:
                process.kill()
        if process.returncode != 0:
            raise RuntimeError(f"load generator failed ({process.returncode})")
        samples.append((time.monotonic() - started, rss_kib(pid)))
        result: dict[str, Any] = json.loads(out.read_text())
    if not result["latencies"]:
        raise RuntimeError(f"no requests completed: {sys.argv}")
    return samples, result
