"""``tether bench`` — every figure beside a floor measured in the same run; ``tether bench soak`` — memory over time.

Benchmarks print figures and ratios; they assert nothing (the test suite never times anything).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from tether.cli.output import PlainConsole, console, fail, print_json, styled

if TYPE_CHECKING:
    from tether.bench.report import Row

__all__ = ["app"]

app = typer.Typer(help="Benchmarks on loopback: servers on core 0, the load generator on core 1.")


def _figure(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"
    return f"{text} {unit}".strip()


def _latency(notes: dict[str, Any]) -> str:
    if "p50_ms" in notes:
        return f"p50 {notes['p50_ms']} ms · p99 {notes['p99_ms']} ms"
    if "p50_us" in notes:
        return f"p50 {notes['p50_us']} µs · p99 {notes['p99_us']} µs"
    if "p99_us" in notes:
        return f"p99 {notes['p99_us']} µs"
    return ""


def _print(rows: list[Row], as_json: bool) -> None:
    if as_json:
        print_json({"rows": [r.as_json() for r in rows]})
        return
    table = Table(title="tether bench", title_justify="left")
    for column in ("measurement", "figure", "floor (same run)", "ratio", "latency", "target"):
        table.add_column(column)
    for cells in (
        (
            r.name,
            _figure(r.value, r.unit),
            _figure(r.floor, r.floor_unit) if r.floor is not None else None,
            f"{r.ratio:.0%}" if r.ratio is not None else None,
            _latency(r.notes),
            r.target or None,
        )
        for r in rows
    ):
        table.add_row(*(c if c is not None else "-" for c in cells))
    PlainConsole(highlight=False, width=max(console.width, 190)).print(table)


@app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="print the rows as JSON")] = False,
    duration: Annotated[float, typer.Option("--duration", min=1.0, help="seconds per load phase")] = 5.0,
    only: Annotated[str | None, typer.Option("--only", help="comma-separated sections (default: all)")] = None,
    runs: Annotated[int, typer.Option("--runs", min=1, max=9, help="repeat and report each row's median")] = 1,
    postgres_dsn: Annotated[str, typer.Option("--postgres-dsn", envvar="TETHER_BENCH_POSTGRES_DSN")] = (
        "postgresql://127.0.0.1:5432/test"
    ),
    redis_url: Annotated[str, typer.Option("--redis-url", envvar="TETHER_BENCH_REDIS_URL")] = "redis://127.0.0.1:6379/0",
    peer: Annotated[
        bool, typer.Option("--peer", help="tether beside node oidc-provider (from npm, cached), --runs rounds (default 3)")
    ] = False,
) -> None:
    """Exchange throughput and latency, resource-server verify, gateway overhead, revocation, completion under load,
    Cedar, memory, the console's pages with 10,000 tasks."""
    if ctx.invoked_subcommand is not None:
        return
    if peer:
        _peer(duration, runs if runs > 1 else 3, as_json)
        return
    from tether.bench.run import SECTIONS, BenchOptions, run_bench

    sections = tuple(s.strip() for s in only.split(",")) if only else SECTIONS
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        fail(f"--only: unknown section `{unknown[0]}` (choose from {', '.join(SECTIONS)})", code=2)
    options = BenchOptions(duration=duration, sections=sections, runs=runs, postgres_dsn=postgres_dsn, redis_url=redis_url)

    def progress(message: str) -> None:
        if not as_json:
            console.print(styled((f"… {message}", "dim")))

    _, rows = run_bench(options, progress)
    _print(rows, as_json)


def _peer(duration: float, rounds: int, as_json: bool) -> None:
    import tempfile

    from tether.bench.peer import PeerUnavailable
    from tether.bench.versus import peer_rows

    def progress(message: str) -> None:
        if not as_json:
            console.print(styled((f"… {message}", "dim")))

    with tempfile.TemporaryDirectory(prefix="tether-bench-peer-") as tmp:
        try:
            rows = peer_rows(Path(tmp), duration=duration, rounds=rounds, progress=progress)
        except PeerUnavailable as exc:
            fail(f"--peer: {exc}", code=1)
    if as_json:
        print_json({"rows": [r.as_json() for r in rows]})
        return
    table = Table(title=f"tether bench --peer ({rounds} interleaved rounds, median)", title_justify="left")
    columns = ("server (pinned to core 0, c=16)", "req/s", "rounds", "spread", "p50 · p99", "CPU µs/req",
               "at core 0's best speed", "core 0: server / others", "vs peer: req/s (CPU · scaled CPU)")  # fmt: skip
    for column in columns:
        table.add_column(column)
    for r in rows:
        versus = "-"
        if r.ratio is not None:
            versus = f"{r.ratio:.2f}× ({r.notes['cpu_per_req_ratio']:.2f}× · {r.notes['cpu_per_req_ratio_scaled']:.2f}×)"
        table.add_row(
            r.name,
            _figure(r.value, ""),
            " / ".join(f"{v:,}" for v in r.notes["rounds"]),
            f"{r.notes['spread_pct']} %",
            f"{r.notes['p50_ms']} · {r.notes['p99_ms']} ms",
            " / ".join(str(v) for v in r.notes["cpu_us_per_req"]),
            " / ".join(str(v) for v in r.notes["cpu_us_per_req_scaled"]),
            " · ".join(
                f"{a:.0%}/{b:.0%}"
                for a, b in zip(r.notes["server_share_of_core"], r.notes["others_share_of_core"], strict=True)
            ),
            versus,
        )
    PlainConsole(highlight=False, width=max(console.width, 250)).print(table)
    failed = sum(r.notes["errors"] for r in rows)
    if failed:
        console.print(styled((f"{failed} answers were not 200: the figures count only the 200s", "yellow")))
    console.print(styled(("scaled: each round's CPU per request times the fastest round's reference work on core 0 "
                          "over its own (tether.bench.calibrate) — the host's speed moved between rounds", "dim")))  # fmt: skip
    shared = max(max(r.notes["others_share_of_core"]) for r in rows)
    if shared > 0.05:
        console.print(styled((f"core 0 was shared: other processes took up to {shared:.0%} of it in a round; "
                              "compare the CPU µs/req, not req/s", "yellow")))  # fmt: skip


@app.command()
def profile(
    kind: Annotated[str, typer.Option("--kind", help="hop or session")] = "hop",
    requests: Annotated[int, typer.Option("--requests", min=200, max=100_000)] = 3000,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=64)] = 16,
    as_json: Annotated[bool, typer.Option("--json", help="print the rows as JSON")] = False,
) -> None:
    """CPU per exchange by component: the STS in this process, driven through ASGI under cProfile."""
    import tempfile

    from tether.bench.profile import profile_exchange

    if kind not in ("hop", "session"):
        fail("--kind: choose hop or session", code=2)
    with tempfile.TemporaryDirectory(prefix="tether-profile-") as tmp:
        rows, totals = profile_exchange(Path(tmp), kind=kind, requests=requests, concurrency=concurrency)
    if as_json:
        print_json({"kind": kind, **totals, "components": [r.__dict__ for r in rows]})
        return
    title = f"one {kind} exchange by component ({totals['requests']:,.0f} in process, c={concurrency}, cProfile)"
    table = Table(title=title, title_justify="left")
    for column in ("component", "µs per exchange", "share"):
        table.add_column(column)
    for r in rows:
        table.add_row(r.component, f"{r.us_per_request:,.1f}", f"{r.share:.1%}")
    table.add_row("total (profiled, wall)", f"{totals['profiled_us_per_request']:,.0f}", "")
    PlainConsole(highlight=False, width=max(console.width, 120)).print(table)


@app.command()
def soak(
    duration: Annotated[
        float, typer.Option("--duration", min=10.0, max=720.0, help="seconds after warm-up (one task: ≤ 15 min in all)")
    ] = 600.0,
    rate: Annotated[float | None, typer.Option("--rate", min=1.0, help="hops/s (default: half the measured maximum)")] = None,
    warmup: Annotated[float, typer.Option("--warmup", min=0.0, max=60.0, help="seconds before the baseline sample")] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the rows as JSON")] = False,
    workdir: Annotated[Path | None, typer.Option("--dir", help="keep the deployment here (default: a temporary one)")] = None,
) -> None:
    """Hop exchanges at a fixed rate for DURATION seconds; the STS's RSS is sampled every 10 s."""
    import tempfile

    from tether.bench.soak import soak_rows

    with tempfile.TemporaryDirectory(prefix="tether-soak-") as tmp:
        rows = soak_rows(workdir or Path(tmp), duration=duration, rate=rate, warmup=warmup)
    _print(rows, as_json)


@app.command()
def chaos(
    samples: Annotated[int, typer.Option("--samples", min=1, max=1000, help="revocations measured per store and action")] = 30,
    flood: Annotated[int, typer.Option("--flood", min=100, help="malformed and anonymous requests in the flood")] = 20_000,
    load_seconds: Annotated[float, typer.Option("--load-seconds", min=0.5, max=60.0, help="hop load before the kill")] = 3.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the rows as JSON")] = False,
    postgres_dsn: Annotated[str, typer.Option("--postgres-dsn", envvar="TETHER_BENCH_POSTGRES_DSN")] = (
        "postgresql://127.0.0.1:5432/test"
    ),
    redis_url: Annotated[str, typer.Option("--redis-url", envvar="TETHER_BENCH_REDIS_URL")] = "redis://127.0.0.1:6379/0",
) -> None:
    """Faults under load: completion and the kill switch under full hop load, kill -9 of an STS, a flood.

    The longer versions of the chaos suite (tests/chaos); every run ends with `tether audit verify`
    and a positive-control exchange. PostgreSQL + Redis rows are skipped when either is unreachable.
    """
    import tempfile

    from tether.bench.chaos import chaos_rows
    from tether.bench.report import Row
    from tether.bench.run import BenchOptions, scale_out_reachable

    reachable = scale_out_reachable(BenchOptions(postgres_dsn=postgres_dsn, redis_url=redis_url))

    def progress(message: str) -> None:
        if not as_json:
            console.print(styled((f"… {message}", "dim")))

    with tempfile.TemporaryDirectory(prefix="tether-chaos-") as tmp:
        rows = chaos_rows(
            Path(tmp),
            samples=samples,
            flood=flood,
            load_seconds=load_seconds,
            postgres_dsn=postgres_dsn if reachable else None,
            redis_url=redis_url if reachable else None,
            progress=progress,
        )
    if not reachable:
        rows.append(Row("chaos, PostgreSQL + Redis: skipped", float("nan"), "", notes={"why": "unreachable"}))
    _print(rows, as_json)
