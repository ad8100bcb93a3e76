"""Memory per active task and per cached token, from the STS process's resident set.

``n`` tasks each get a session token (RSS growth over ``n`` is an active task); then each
session token is presented once for a hop and enters the verified-token cache (further growth
over ``n`` is a cached token). RSS includes allocator slack and SQLite's page cache, so it
overstates the cost rather than understating it.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tether.bench.exchange import ADMIN, AGENT, AUD_B, AUD_C, RESOURCES
from tether.bench.harness import Actor, bench_deployment, rss_kib, serve, tether_bin
from tether.bench.report import Row
from tether.urns import TOKEN_EXCHANGE
from tether.urns import TOKEN_TYPE_ACCESS as ACCESS
from tether.urns import TOKEN_TYPE_JWT as JWT

__all__ = ["memory_rows"]


def memory_rows(workdir: Path, *, n: int = 2000) -> list[Row]:
    d = bench_deployment(workdir / "memory", extra=RESOURCES)
    args = [tether_bin(), "serve", "--config", str(d.config.path)]
    with httpx.Client(trust_env=False, timeout=30) as http, serve(args, d.url) as sts:
        admin = Actor(d, http)
        admin_form = {"grant_type": TOKEN_EXCHANGE, "subject_token": admin.svid(ADMIN), "subject_token_type": JWT}
        admin_token = str(admin.token(admin_form)["access_token"])
        agent = Actor(d, http)

        def active_task() -> str:
            created = admin.api(
                "POST",
                "/tasks",
                admin_token,
                json={"agent": AGENT, "audiences": [AUD_B, AUD_C], "scopes": ["read"], "max_tokens": 1000},
            )
            created.raise_for_status()
            form = {"grant_type": TOKEN_EXCHANGE, "subject_token_type": JWT, "task": str(created.json()["id"])}
            return str(agent.token({**form, "subject_token": agent.svid(AGENT)})["access_token"])

        def hop(session: str) -> None:
            agent.token(
                {"grant_type": TOKEN_EXCHANGE, "subject_token": session, "subject_token_type": ACCESS, "resource": AUD_B}
            )

        for session in [active_task() for _ in range(200)]:  # warm-up: code paths, pools, first allocations
            hop(session)
        time.sleep(0.5)
        before = rss_kib(sts.process.pid)
        sessions = [active_task() for _ in range(n)]
        time.sleep(0.5)
        after_tasks = rss_kib(sts.process.pid)
        for session in sessions:
            hop(session)
        time.sleep(0.5)
        after_tokens = rss_kib(sts.process.pid)
    per_task = (after_tasks - before) * 1024 / n
    per_token = (after_tokens - after_tasks) * 1024 / n
    notes = {"n": n, "rss_before_mib": round(before / 1024, 1), "rss_after_mib": round(after_tokens / 1024, 1)}
    return [
        Row("memory per active task (task + its session token, STS RSS growth)", per_task, "bytes", notes=notes),
        Row("memory per cached verified token (+ the hop it issued, STS RSS growth)", per_token, "bytes", notes=notes),
    ]
