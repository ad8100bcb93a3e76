"""One benchmark run: every section in order, each row beside a floor measured in the same run.

Sections are independent (each starts its own servers in a fresh directory), so a run
can be limited to some of them. With ``runs > 1`` every selected section is repeated
and each row reports its median run, as the targets are stated for medians.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis

from tether.bench.report import Row, SignatureCosts, signature_costs

__all__ = ["SECTIONS", "BenchOptions", "run_bench"]

SECTIONS = (
    "exchange", "scaling", "mtls", "verify", "gateway", "mcp", "revocation", "completion", "cedar", "memory", "console",
    "federation", "features",
)  # fmt: skip


@dataclass(frozen=True)
class BenchOptions:
    duration: float = 5.0
    sections: Sequence[str] = SECTIONS
    runs: int = 1
    postgres_dsn: str = "postgresql://127.0.0.1:5432/test"
    redis_url: str = "redis://127.0.0.1:6379/0"
    revocation_tasks: int = 200
    completion_samples: int = 30


def scale_out_reachable(options: BenchOptions) -> bool:
    """PostgreSQL and Redis answer: the PostgreSQL + Redis rows are measured, else reported skipped."""
    try:
        with psycopg.connect(options.postgres_dsn, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        client = redis.Redis.from_url(options.redis_url, socket_connect_timeout=3)
        try:
            client.ping()
        finally:
            client.close()
    except (psycopg.Error, redis.RedisError, OSError):
        return False
    return True


def _section(name: str, workdir: Path, costs: SignatureCosts, options: BenchOptions) -> list[Row]:
    if name == "exchange":
        from tether.bench.exchange import ExchangeBench

        bench = ExchangeBench(workdir, costs, duration=options.duration)
        bench.run()
        return bench.rows
    if name == "scaling":
        from tether.bench.scaling import scaling_rows

        if scale_out_reachable(options):
            return scaling_rows(
                workdir, duration=options.duration, postgres_dsn=options.postgres_dsn, redis_url=options.redis_url
            )
        return scaling_rows(workdir, duration=options.duration)
    if name == "mtls":
        from tether.bench.mtls import mtls_rows

        return mtls_rows(workdir, duration=options.duration)
    if name == "verify":
        from tether.bench.inprocess import verify_rows

        return verify_rows(workdir, costs, duration=options.duration)
    if name == "cedar":
        from tether.bench.inprocess import cedar_rows

        return cedar_rows(workdir)
    if name == "gateway":
        from tether.bench.gateway import gateway_rows

        return gateway_rows(workdir, duration=options.duration)
    if name == "mcp":
        from tether.bench.mcp import mcp_rows

        return mcp_rows(workdir)
    if name == "revocation":
        from tether.bench.revocation import revocation_rows

        if scale_out_reachable(options):
            return revocation_rows(
                workdir, tasks=options.revocation_tasks, postgres_dsn=options.postgres_dsn, redis_url=options.redis_url
            )
        rows = revocation_rows(workdir, tasks=options.revocation_tasks)
        rows.append(Row("revocation propagation, PostgreSQL + Redis: skipped", float("nan"), "", notes={"why": "unreachable"}))
        return rows
    if name == "completion":
        from tether.bench.chaos import completion_rows

        if scale_out_reachable(options):
            return completion_rows(
                workdir, samples=options.completion_samples, postgres_dsn=options.postgres_dsn, redis_url=options.redis_url
            )
        rows = completion_rows(workdir, samples=options.completion_samples)
        rows.append(
            Row(
                "task completion under full hop load, PostgreSQL + Redis: skipped",
                float("nan"),
                "",
                notes={"why": "unreachable"},
            )
        )
        return rows
    if name == "memory":
        from tether.bench.memory import memory_rows

        return memory_rows(workdir)
    if name == "console":
        from tether.bench.console import console_rows

        return console_rows(workdir)
    if name == "federation":
        from tether.bench.federation import federation_rows

        return federation_rows(workdir, duration=options.duration, samples=options.completion_samples)
    if name == "features":
        from tether.bench.features import features_rows

        return features_rows(workdir, duration=options.duration)
    raise ValueError(f"unknown section {name}")


def _median_rows(runs: list[list[Row]]) -> list[Row]:
    by_name: dict[str, list[Row]] = {}
    for rows in runs:
        for row in rows:
            by_name.setdefault(row.name, []).append(row)
    out = []
    for candidates in by_name.values():
        middle = statistics.median_low([r.value for r in candidates])
        row = next(r for r in candidates if r.value == middle)
        row.notes["runs"] = [round(r.value, 2) for r in candidates]
        out.append(row)
    return out


def run_bench(options: BenchOptions, progress: Callable[[str], None] = lambda _: None) -> tuple[SignatureCosts, list[Row]]:
    """Measure the floors, then every selected section ``options.runs`` times."""
    costs = signature_costs()
    rows = [
        Row("ES256 verify, raw cryptography (floor)", 1 / costs.verify_s, "ops/s"),
        Row("ES256 sign, raw cryptography (floor)", 1 / costs.sign_s, "ops/s"),
    ]
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        for name in options.sections:
            runs = []
            for i in range(options.runs):
                progress(f"{name} (run {i + 1}/{options.runs})")
                runs.append(_section(name, Path(tmp) / f"{name}-{i}", costs, options))
            rows.extend(_median_rows(runs))
    return costs, rows
