"""Multi-core scaling of ``tether serve --workers N``: what a second core adds, on SQLite and PostgreSQL.

The question (issue 20): does each added core add a core's worth of STS? On a two-core machine
the load generator cannot keep a core of its own once the server has both, so raw throughput
cannot answer it — two workers sharing both cores with the load generator against one worker
with a whole core would compare different machines. What survives the sharing is **what the
server spends per request**, together with **whether it was working or waiting**: if a second
worker costs no more CPU per request than the first, and the workers' event loops were never
asleep while requests waited for them (on a lock, a database round trip), every added core
serves its share.

Method, per store (a fresh deployment each; PostgreSQL + Redis as ``revocation.py`` sets
them up, skipped with a row saying so when unreachable), phases alternating N = 1, N = 2:

- **N = 1**: ``tether serve`` pinned to core 0, the load generator pinned to core 1;
- **N = 2**: ``tether serve --workers 2`` pinned to cores 0-1, the load generator on 0-1 too.
- The load generator saturates with 16 keep-alive connections per worker (each worker sees
  the concurrency, so the group-commit batches, the single worker saw) replaying hop
  exchanges built before the clock, each unique. A second of the same load warms caches and
  pools first.
- The load process loads its requests, says ``ready`` and waits; the bracket runs from "go"
  to its last response, start-up outside. At both ends the bench reads ``/proc``: CPU seconds
  of the serve process with its workers (``harness.cpu_seconds``), of the load generator, of
  every process named ``postgres`` and of ``redis-server``; each core's idle time; and each
  event loop's scheduler statistics (``/proc/PID/task/PID/schedstat``: on CPU, runnable but
  waiting for a CPU, and the rest — asleep, waiting for I/O, a lock or work).

Reported per phase: served req/s; **server CPU µs per request**; the PostgreSQL backends that
served the STS's connections apart (their pids from ``pg_stat_activity`` by the
``application_name`` the bench puts in the DSN; every other ``postgres`` process — WAL writer,
checkpointer, anything else on the machine — as ``postgres_other``); ``redis-server`` apart
(the whole process: shared with anything else using it); the event loops' on-CPU / waiting /
asleep shares; the idle share of the server's cores; the load generator's CPU; and from each
worker's ``/metrics`` its issued tokens and the SQLite lock waits (``tether_store_lock_waits``).

**Efficiency per added core** = server CPU per request at N = 1 ÷ at N = 2, stated beside the
loops' asleep share: a CPU figure only answers the question while the loops are busy; a
server that sleeps while requests wait is limited by what it waits for, and the row says so.

The machine is shared; CPU per request moves far less with the neighbours than req/s does,
but a loaded machine raises it too (caches, context switches). Nothing here asserts a figure.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tether.bench.exchange import AUD_B, AUD_C, RESOURCES, hop_requests, setup_task
from tether.bench.harness import Deployment, Load, bench_deployment, cpu_seconds, serve, summarise, tether_bin
from tether.bench.loadgen import run_load
from tether.bench.procstat import processes
from tether.bench.report import Row

__all__ = ["Phase", "drive", "main", "scaling_rows", "worker_counters"]

PER_WORKER = 16
WARMUP_S = 1.0
#: requests built per second of load and per worker: more than one worker serves, so none runs dry
BUILT_PER_S = 4000
TARGET = "≥ 85 % per added core"
#: event loops asleep longer than this share of the bracket were waiting, not working
ASLEEP_LIMIT = 0.10
_TICKS = os.sysconf("SC_CLK_TCK")
_NONE = ("", 0.0)


# -- /proc readings -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Reading:
    """One look at /proc: CPU seconds of the processes the bench follows, and each core's idle time."""

    at: float
    server: float
    loadgen: float
    backends: float
    postgres: float
    redis: float
    idle: dict[int, float]
    #: each event loop (a worker's main thread): (seconds on CPU, seconds runnable but waiting for a CPU)
    loops: dict[int, tuple[float, float]]


def _processes() -> dict[int, tuple[str, float]]:
    """Every process: its command name and CPU seconds (user + system)."""
    return {pid: (name, cpu) for pid, (name, _, cpu) in processes().items()}


def _idle() -> dict[int, float]:
    """Idle + iowait seconds of each core (``/proc/stat``)."""
    idle: dict[int, float] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if re.match(r"cpu\d+ ", line):
            fields = line.split()
            idle[int(fields[0][3:])] = (int(fields[4]) + int(fields[5])) / _TICKS
    return idle


def _schedstat(pid: int) -> tuple[float, float]:
    try:
        on_cpu, waiting, _ = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(on_cpu) / 1e9, int(waiting) / 1e9


def loop_pids(server: int) -> list[int]:
    """The processes running an event loop: the ``--workers`` children of ``server``, or itself."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if parent == server and b"spawn_main" in cmdline:
            children.append(int(entry.name))
    return sorted(children) or [server]


def read(server: int, loadgen: int, backends: set[int], loops: list[int]) -> Reading:
    procs = _processes()
    return Reading(
        at=time.monotonic(),
        server=cpu_seconds(server),
        loadgen=procs.get(loadgen, _NONE)[1],
        backends=sum(procs.get(pid, _NONE)[1] for pid in backends),
        postgres=sum(cpu for name, cpu in procs.values() if name == "postgres"),
        redis=sum(cpu for name, cpu in procs.values() if name == "redis-server"),
        idle=_idle(),
        loops={pid: _schedstat(pid) for pid in loops},
    )


# -- the pinned load process --------------------------------------------------------------------
def _write_requests(path: Path, requests: list[bytes]) -> None:
    with path.open("wb") as out:
        for request in requests:
            out.write(len(request).to_bytes(4, "big") + request)


def _read_requests(path: Path) -> list[bytes]:
    data, out, i = path.read_bytes(), [], 0
    while i < len(data):
        size = int.from_bytes(data[i : i + 4], "big")
        out.append(data[i + 4 : i + 4 + size])
        i += 4 + size
    return out


def main(spec_path: str, requests_path: str, out_path: str) -> None:
    """The load process (``python -m tether.bench.scaling SPEC REQUESTS OUT``, started pinned by
    ``drive``): load the requests, say ``ready``, wait for a line on stdin, replay, say ``done``."""
    spec = json.loads(Path(spec_path).read_text())
    requests = _read_requests(Path(requests_path))
    print("ready", flush=True)
    sys.stdin.readline()
    result = asyncio.run(
        run_load(spec["host"], spec["port"], requests, concurrency=spec["concurrency"], duration=spec["duration"])
    )
    print("done", flush=True)
    Path(out_path).write_text(json.dumps(result.as_json()))


@dataclass
class Bracket:
    load: Load
    before: Reading
    after: Reading


def drive(url: str, requests: list[bytes], *, concurrency: int, duration: float, core: str,
          server: int, backends: set[int]) -> Bracket:  # fmt: skip
    """Replay ``requests`` from a load process pinned to ``core``; /proc is read just before "go"
    and just after the last response."""
    host, port = url.split("//", 1)[1].split(":")
    pin = ["taskset", "-c", core] if shutil.which("taskset") and (os.cpu_count() or 1) >= 2 else []
    with tempfile.TemporaryDirectory() as tmp:
        spec, stream, out = Path(tmp) / "spec.json", Path(tmp) / "requests.bin", Path(tmp) / "out.json"
        spec.write_text(json.dumps({"host": host, "port": int(port), "concurrency": concurrency, "duration": duration}))
        _write_requests(stream, requests)
        command = [*pin, sys.executable, "-m", "tether.bench.scaling", str(spec), str(stream), str(out)]
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # noqa: S603
        assert process.stdin is not None and process.stdout is not None
        try:
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError("the load process did not start")
            loops = loop_pids(server)
            before = read(server, process.pid, backends, loops)
            process.stdin.write("go\n")
            process.stdin.flush()
            if process.stdout.readline().strip() != "done":
                raise RuntimeError("the load process failed")
            after = read(server, process.pid, backends, loops)
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        return Bracket(summarise(json.loads(out.read_text())), before, after)


# -- per-worker counters --------------------------------------------------------------------------
_ISSUED = 'tether_tokens_issued_total{kind="hop"}'
_METRIC = re.compile(
    r'^(tether_tokens_issued_total\{kind="hop"\}|tether_store_lock_waits_total\{outcome="(\w+)"\}'
    r"|tether_store_lock_wait_seconds_total) (\S+)$",
    re.M,
)


def worker_counters(url: str, workers: int, tries: int = 60) -> list[dict[str, float]]:
    """Each worker's hop tokens issued and SQLite lock waits (by outcome, and ``seconds``) since it started.

    Every worker keeps its own registry and a new connection reaches whichever worker the kernel
    picks, so ``/metrics`` is read over new connections until ``workers`` different answers were
    seen (told apart by their issued counts)."""
    seen: dict[float, dict[str, float]] = {}
    for _ in range(tries):
        with httpx.Client(trust_env=False, timeout=5.0) as http:
            text = http.get(url + "/metrics").text
        values = {
            (outcome or ("issued" if name == _ISSUED else "seconds")): float(v) for name, outcome, v in _METRIC.findall(text)
        }
        seen[values.get("issued", 0.0)] = values
        if len(seen) >= workers:
            break
    return list(seen.values())


def _total(counters: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for worker in counters:
        for name, value in worker.items():
            out[name] = out.get(name, 0.0) + value
    return out


# -- one phase ------------------------------------------------------------------------------------
@dataclass
class Phase:
    store: str
    workers: int
    bracket: Bracket
    counters_before: list[dict[str, float]] = field(default_factory=list)
    counters_after: list[dict[str, float]] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return self.bracket.load.ok

    @property
    def wall(self) -> float:
        return self.bracket.after.at - self.bracket.before.at

    def spent(self, name: str) -> float:
        return float(getattr(self.bracket.after, name) - getattr(self.bracket.before, name))

    def us_per_request(self, *names: str) -> float:
        return sum(self.spent(n) for n in names) / self.ok * 1e6 if self.ok else float("nan")

    @property
    def cores(self) -> list[int]:
        return list(range(self.workers))

    def idle_share(self) -> float:
        """Idle share of the cores the server was pinned to."""
        before, after = self.bracket.before.idle, self.bracket.after.idle
        return sum(after.get(c, 0.0) - before.get(c, 0.0) for c in self.cores) / (self.wall * len(self.cores))

    def loop_shares(self) -> tuple[float, float, float]:
        """The event loops' shares of the bracket: on CPU, runnable but waiting for a CPU (the load
        generator or a neighbour had it), and asleep (waiting for I/O, a lock or work)."""
        before, after = self.bracket.before.loops, self.bracket.after.loops
        span = self.wall * (len(after) or 1)
        on_cpu = sum(after[p][0] - before.get(p, (0.0, 0.0))[0] for p in after) / span
        waiting = sum(after[p][1] - before.get(p, (0.0, 0.0))[1] for p in after) / span
        return on_cpu, waiting, max(0.0, 1.0 - on_cpu - waiting)

    def notes(self) -> dict[str, object]:
        load = self.bracket.load
        notes: dict[str, object] = {
            "server_cpu_us_per_req": round(self.us_per_request("server"), 1),
            "server_cpu_share_of_its_cores": round(self.spent("server") / (self.wall * self.workers), 3),
            "event_loops_on_cpu_waiting_for_cpu_asleep": [round(x, 3) for x in self.loop_shares()],
            "idle_share_of_its_cores": round(self.idle_share(), 3),
            "loadgen_cpu_us_per_req": round(self.us_per_request("loadgen"), 1),
            "p50_ms": round(load.p50_ms, 2),
            "p99_ms": round(load.p99_ms, 2),
            "errors": load.errors,
            "refused_503": load.refused,
            "requests": self.ok,
            "connections": PER_WORKER * self.workers,
            "tokens_issued_per_worker_since_start": sorted(
                (int(w.get("issued", 0)) for w in self.counters_after), reverse=True
            ),
        }
        if self.store == "SQLite":
            before, after = _total(self.counters_before), _total(self.counters_after)
            seen_all = len(self.counters_before) == len(self.counters_after) == self.workers
            notes["sqlite_lock_waits_in_phase"] = (
                {k: round(after[k] - before.get(k, 0.0), 3) for k in sorted(after) if k != "issued"} if seen_all else "unknown"
            )
        else:
            notes["postgres_backends_cpu_us_per_req"] = round(self.us_per_request("backends"), 1)
            notes["postgres_other_cpu_us_per_req"] = round(self.us_per_request("postgres") - self.us_per_request("backends"), 1)
            notes["redis_server_cpu_us_per_req"] = round(self.us_per_request("redis"), 1)
        return notes


def _backend_pids(dsn: str, application: str) -> set[int]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (application,)).fetchall()
    return {int(r[0]) for r in rows}


def run_phase(d: Deployment, store: str, workers: int, duration: float, pg: tuple[str, str] | None) -> Phase:
    """Serve with ``workers`` processes, warm up, then one measured bracket of saturating load."""
    core, load_core = ("0", "1") if workers == 1 else ("0-1", "0-1")
    concurrency = PER_WORKER * workers
    args = [tether_bin(), "serve", "--config", str(d.config.path), "--workers", str(workers)]
    with httpx.Client(trust_env=False, timeout=30) as http, serve(args, d.url, core=core) as sts:
        agent, session, _ = setup_task(d, http, [AUD_B, AUD_C])
        pid = sts.process.pid
        warm = hop_requests(agent, session, int(WARMUP_S * BUILT_PER_S * workers))
        drive(d.url, warm, concurrency=concurrency, duration=WARMUP_S, core=load_core, server=pid, backends=set())
        requests = hop_requests(agent, session, int(duration * BUILT_PER_S * workers))
        backends = _backend_pids(*pg) if pg else set()
        before = worker_counters(d.url, workers)
        bracket = drive(d.url, requests, concurrency=concurrency, duration=duration, core=load_core, server=pid,
                        backends=backends)  # fmt: skip
        after = worker_counters(d.url, workers)
    return Phase(store, workers, bracket, before, after)


# -- rows -----------------------------------------------------------------------------------------
def _rows(one: Phase, two: Phase) -> list[Row]:
    store = one.store
    cpu = (one.us_per_request("server"), two.us_per_request("server"))
    asleep = (one.loop_shares()[2], two.loop_shares()[2])
    notes: dict[str, object] = {
        "server_cpu_us_per_req_1_2": [round(cpu[0], 1), round(cpu[1], 1)],
        "req_per_server_cpu_second_1_2": [round(1e6 / cpu[0]), round(1e6 / cpu[1])],
        "event_loops_asleep_1_2": [round(asleep[0], 3), round(asleep[1], 3)],
        "req_per_s_1_2": [round(one.bracket.load.throughput), round(two.bracket.load.throughput)],
    }
    if store != "SQLite":
        with_db = (one.us_per_request("server", "backends"), two.us_per_request("server", "backends"))
        notes["efficiency_counting_postgres_backends_pct"] = round(with_db[0] / with_db[1] * 100, 1)
    notes["reading"] = (
        "CPU-bound: the loops worked while requests waited, so CPU per request answers the question"
        if max(asleep) <= ASLEEP_LIMIT
        else f"the event loops slept {max(asleep):.0%} of the load: throughput is limited by what they waited for "
        "(locks, round trips), not by cores"
    )
    return [
        Row(f"scaling ({store}): hop exchange, 1 worker on core 0, load generator on core 1",
            one.bracket.load.throughput, "req/s", notes=one.notes()),
        Row(f"scaling ({store}): hop exchange, 2 workers on cores 0-1, load generator on cores 0-1",
            two.bracket.load.throughput, "req/s", notes=two.notes()),
        Row(f"scaling ({store}): efficiency per added core (server CPU per request, 1 worker ÷ 2 workers)",
            cpu[0] / cpu[1] * 100, "%", target=TARGET, notes=notes),
    ]  # fmt: skip


@contextmanager
def _postgres(workdir: Path, postgres_dsn: str, redis_url: str) -> Iterator[tuple[Deployment, tuple[str, str]]]:
    """A deployment on a fresh schema and Redis prefix, its DSN naming an ``application_name`` of
    its own (how its backends are found); yields it and ``(admin DSN, application_name)``."""
    from tether.bench.revocation import _fresh_schema_and_prefix

    application = "tether-bench-" + secrets.token_hex(4)
    with _fresh_schema_and_prefix(postgres_dsn, redis_url) as (schema_dsn, prefix):
        dsn = f"{schema_dsn}&application_name={application}"
        store_toml = (
            f"\n[postgres]\ndsn = {json.dumps(dsn)}\n\n[redis]\nurl = {json.dumps(redis_url)}\nprefix = {json.dumps(prefix)}\n"
        )
        yield bench_deployment(workdir / "postgres", extra=RESOURCES, store_toml=store_toml), (postgres_dsn, application)


def scaling_rows(workdir: Path, *, duration: float, postgres_dsn: str | None = None, redis_url: str | None = None) -> list[Row]:
    """Three rows per store (1 worker, 2 workers, efficiency); PostgreSQL + Redis when both are given,
    else a row saying it was skipped."""
    d = bench_deployment(workdir / "sqlite", extra=RESOURCES)
    rows = _rows(run_phase(d, "SQLite", 1, duration, None), run_phase(d, "SQLite", 2, duration, None))
    if not (postgres_dsn and redis_url):
        rows.append(Row("scaling (PostgreSQL + Redis): skipped", float("nan"), "", notes={"why": "unreachable"}))
        return rows
    with _postgres(workdir, postgres_dsn, redis_url) as (d, pg):
        name = "PostgreSQL + Redis"
        rows += _rows(run_phase(d, name, 1, duration, pg), run_phase(d, name, 2, duration, pg))
    return rows


if __name__ == "__main__":
    main(*sys.argv[1:4])
