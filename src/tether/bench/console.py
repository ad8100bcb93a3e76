"""The operator console's pages with 10,000 tasks in the store: milliseconds per page, p50 and p95.

A deployment's STS (``tether serve``) issues one task's lineage over real exchanges (a session and
``hops`` hops); ``tasks`` more tasks are written straight into the store (each with its
``task.created`` audit record), so the lists page through a realistic table. Then ``tether
console`` (pinned to its core) serves the pages to one logged-in operator, one request at a time:
this is latency as a human sees it, not throughput.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx

from tether.audit.chain import AuditEvent
from tether.bench.exchange import AGENT, AUD_B, RESOURCES, setup_task
from tether.bench.harness import Deployment, bench_deployment, percentile, serve, tether_bin
from tether.bench.report import Row
from tether.cli.console import login_link
from tether.model import Task
from tether.store.open import open_store
from tether.urns import TOKEN_EXCHANGE
from tether.urns import TOKEN_TYPE_ACCESS as ACCESS

__all__ = ["console_rows"]

_COOKIE = re.compile(r"(__Host-tether-session=[^;]+)")


async def _fill(d: Deployment, n: int) -> None:
    store = await open_store(d.config)
    try:
        now = int(time.time())
        for i in range(n):
            agent = f"spiffe://tether.local/agent/fleet-{i % 200}"
            task = Task(id=f"tsk_bench{i:06d}", agent=agent, audiences=(AUD_B,), scopes=frozenset({"read"}),
                        created_at=now - n + i, expires_at=now + 3600, max_depth=3, max_tokens=100,
                        purpose=f"bench task {i}")  # fmt: skip
            await store.create_task(task, AuditEvent(kind="task.created", outcome="ok", task=task.id, detail={"agent": agent}))
    finally:
        await store.aclose()


def console_rows(workdir: Path, *, tasks: int = 10_000, hops: int = 30, samples: int = 30) -> list[Row]:
    d = bench_deployment(workdir / "console", extra=RESOURCES)
    port = int(d.url.rsplit(":", 1)[1]) + 1
    with (
        httpx.Client(trust_env=False, timeout=30) as http,
        serve([tether_bin(), "serve", "--config", str(d.config.path)], d.url),
    ):
        agent, session, task_id = setup_task(d, http, [AUD_B])
        for _ in range(hops):
            agent.token({"grant_type": TOKEN_EXCHANGE, "subject_token": session, "subject_token_type": ACCESS,
                         "resource": AUD_B})  # fmt: skip
        asyncio.run(_fill(d, tasks))
    base = f"http://127.0.0.1:{port}"
    args = [tether_bin(), "console", "--config", str(d.config.path), "--port", str(port)]
    rows: list[Row] = []
    with httpx.Client(trust_env=False, timeout=30) as http, serve(args, base, health="/login", core="0"):
        link = login_link(d.config, base, role="operator", principal="console:bench")
        token = link.split("?t=", 1)[1]
        cookie_header = _COOKIE.search(http.post(base + "/login/link", data={"t": token}).headers["set-cookie"])
        assert cookie_header is not None
        headers = {"Cookie": cookie_header.group(1)}
        first_page = http.get(base + "/tasks", headers=headers).text
        after = re.findall(r"after=([A-Za-z0-9_]+)", first_page)
        pages = {
            "overview /": "/",
            "tasks, first page": "/tasks",
            "tasks, a later page": f"/tasks?after={after[0]}" if after else "/tasks",
            "tasks of one agent": f"/tasks?agent={AGENT}",
            f"task page, lineage of {hops + 1} tokens": f"/tasks/{task_id}",
            "agents": "/agents",
            "audit, newest": "/audit",
            "audit of one task": f"/audit?task={task_id}",
            "alerts": "/alerts",
        }
        for name, path in pages.items():
            times = []
            for _ in range(samples):
                started = time.perf_counter()
                response = http.get(base + path, headers=headers)
                times.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    raise RuntimeError(f"console {path}: {response.status_code}")
            rows.append(Row(f"console {name} ({tasks:,} tasks)", percentile(times, 50), "ms p50",
                            notes={"p95_ms": round(percentile(times, 95), 2), "samples": samples}))  # fmt: skip
    return rows
