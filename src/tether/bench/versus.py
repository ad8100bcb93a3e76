"""``tether bench --peer``: tether's exchanges beside node ``oidc-provider``'s issuance, in one run.

Both servers run pinned to core 0, the load generator to core 1, at the same concurrency,
with every request built before the clock starts and a fresh DPoP proof in each. The pairs:

- tether's **hop exchange** (session token + DPoP proof → hop token for one audience) beside
  oidc-provider's **plain** DPoP-bound ``client_credentials`` issuance (``client_secret_basic``):
  each verifies one proof and signs one ES256 JWT access token;
- tether's **session exchange** (a fresh JWT-SVID + DPoP proof → session token) beside
  oidc-provider's DPoP + ``private_key_jwt`` issuance: each verifies two signatures and signs one.

tether also checks its task, Cedar policy and lineage and commits a token row, a replay mark
and a hash-chained audit record per exchange; oidc-provider keeps its replay marks in memory.

Phases are interleaved round by round (tether hop, peer plain, tether session, peer
private_key_jwt, then again), so a slow minute of the machine hits both sides; each side is
warmed up first (Python's caches, V8's JIT). Every phase also records the server's own CPU
seconds and how busy core 0 was, so a slow round says why: the server needing more CPU per
request (its own work: GC, a checkpoint, the monitor) or getting less of the core (another
process on it).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from tether.bench.calibrate import Sampler, scaled
from tether.bench.chaos import QUIET_MONITOR
from tether.bench.exchange import AGENT, AUD_B, AUD_C, RESOURCES, fresh_jwt_requests, hop_requests, setup_task
from tether.bench.harness import (
    Deployment,
    Load,
    bench_deployment,
    run_loadgen,
    serve,
    summarise,
    tether_bin,
)
from tether.bench.peer import OidcProvider, install_peer, oidc_provider, peer_version
from tether.bench.report import Row
from tether.urns import TOKEN_EXCHANGE
from tether.urns import TOKEN_TYPE_JWT as JWT

__all__ = ["Phase", "TetherRequests", "peer_rows", "spread"]

CONCURRENCY = 16
_WARMUP_SECONDS = 2.0


@dataclass(frozen=True)
class Phase:
    """One load phase: what the generator saw and what the server and its core spent."""

    load: Load
    server_cpu_s: float
    core_busy_s: float
    #: the median time of the reference work on core 0 during the phase (``bench.calibrate``)
    reference_s: float = float("nan")

    @property
    def throughput(self) -> float:
        return self.load.throughput

    @property
    def cpu_us_per_request(self) -> float:
        return self.server_cpu_s / self.load.ok * 1e6 if self.load.ok else float("nan")

    @property
    def server_share(self) -> float:
        """The server's CPU over the phase's wall time: 1.0 is the whole core."""
        return self.server_cpu_s / self.load.elapsed if self.load.elapsed else float("nan")

    @property
    def others_share(self) -> float:
        """Core 0 busy with anything but the server (a stray process, the kernel for others)."""
        return max(0.0, self.core_busy_s - self.server_cpu_s) / self.load.elapsed if self.load.elapsed else float("nan")


def measure(pid: int, url: str, requests: list[bytes], duration: float) -> Phase:
    """One saturating phase against ``url``; the server's and core 0's CPU seconds in its window."""
    with Sampler(0) as reference:
        raw = run_loadgen(url, requests, concurrency=CONCURRENCY, duration=duration, watch={"pid": pid, "core": 0})
    return Phase(summarise(raw), float(raw["server_cpu"]), float(raw["core_busy"]), reference.median)


def spread(values: list[float]) -> float:
    """(max − min) ÷ median: how far apart the rounds were."""
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle else float("nan")


class TetherRequests:
    """A task and session on a running STS, and prebuilt hop and session exchanges for it
    (``--peer``'s load, and ``bench profile``'s in process)."""

    def __init__(self, d: Deployment, http: httpx.Client, pid: int) -> None:
        self.d, self.pid = d, pid
        self.agent, self.session, self.task = setup_task(d, http, [AUD_B, AUD_C])

    def hop(self, n: int) -> list[bytes]:
        return hop_requests(self.agent, self.session, n)

    def session_exchange(self, n: int) -> list[bytes]:
        """Workload JWT → session, each with a fresh JWT-SVID (two verifies, one sign, a spent jti)."""
        form = {"grant_type": TOKEN_EXCHANGE, "subject_token_type": JWT, "task": self.task}
        return fresh_jwt_requests(self.agent, form, "subject_token", AGENT, n)


def peer_rows(workdir: Path, *, duration: float, rounds: int, progress: Callable[[str], None] = lambda _: None) -> list[Row]:
    """Interleaved rounds of the four phases; one row per side and pair, with medians, spread and ratios."""
    peer_dir = install_peer()
    # the monitor runs and reads every record, but only alerts: one agent loaded round after round
    # is a rate spike to it, and a suspended task would turn the next rounds into refusals
    d = bench_deployment(workdir / "tether", extra=RESOURCES + QUIET_MONITOR)
    phases: dict[str, list[Phase]] = {"hop": [], "plain": [], "session": [], "pkjwt": []}
    with (
        httpx.Client(trust_env=False, timeout=30) as http,
        serve([tether_bin(), "serve", "--config", str(d.config.path)], d.url) as sts,
        oidc_provider(peer_dir) as op,
    ):
        ours = TetherRequests(d, http, sts.process.pid)
        _warm_up(ours, op)
        n_hop, n_peer = int(duration * 6000), int(duration * 4000)
        for i in range(rounds):
            progress(f"peer comparison round {i + 1}/{rounds}")
            phases["hop"].append(measure(ours.pid, d.url, ours.hop(n_hop), duration))
            phases["plain"].append(measure(op.server.process.pid, op.url, op.plain_requests(n_peer), duration))
            phases["session"].append(measure(ours.pid, d.url, ours.session_exchange(n_peer), duration))
            phases["pkjwt"].append(measure(op.server.process.pid, op.url, op.private_key_jwt_requests(n_peer), duration))
    return _rows(phases)


def _warm_up(ours: TetherRequests, op: OidcProvider) -> None:
    for url, requests in (
        (ours.d.url, ours.hop(4000)),
        (op.url, op.plain_requests(3000)),
        (ours.d.url, ours.session_exchange(3000)),
        (op.url, op.private_key_jwt_requests(3000)),
    ):
        run_loadgen(url, requests, concurrency=CONCURRENCY, duration=_WARMUP_SECONDS)


def _scaled_cpu(phase: Phase, fastest: float) -> float:
    return scaled(phase.cpu_us_per_request, phase.reference_s, fastest)


def _cpu(phase: Phase, fastest: float, scale: bool) -> float:
    return _scaled_cpu(phase, fastest) if scale else phase.cpu_us_per_request


def _row(
    name: str, runs: list[Phase], fastest: float, floor: float | None = None, floor_unit: str = "", target: str = ""
) -> Row:
    rates = [p.throughput for p in runs]
    middle = sorted(runs, key=lambda p: p.throughput)[(len(runs) - 1) // 2]
    return Row(
        name,
        statistics.median(rates),
        "req/s",
        floor,
        floor_unit,
        target,
        {
            "rounds": [round(r) for r in rates],
            "spread_pct": round(100 * spread(rates), 1),
            "p50_ms": round(middle.load.p50_ms, 2),
            "p99_ms": round(middle.load.p99_ms, 2),
            "cpu_us_per_req": [round(p.cpu_us_per_request) for p in runs],
            "cpu_us_per_req_scaled": [round(_scaled_cpu(p, fastest)) for p in runs],
            "reference_us": [round(p.reference_s * 1e6) if not math.isnan(p.reference_s) else None for p in runs],
            "server_share_of_core": [round(p.server_share, 2) for p in runs],
            "others_share_of_core": [round(p.others_share, 2) for p in runs],
            "errors": sum(p.load.errors + p.load.refused for p in runs),
        },
    )


def _rows(phases: dict[str, list[Phase]]) -> list[Row]:
    version = peer_version()
    references = [p.reference_s for runs in phases.values() for p in runs if not math.isnan(p.reference_s)]
    fastest = min(references) if references else float("nan")
    plain = _row(f"oidc-provider {version}: client_credentials + DPoP, client_secret_basic (1 core)", phases["plain"],
                 fastest)  # fmt: skip
    pkjwt = _row(f"oidc-provider {version}: client_credentials + DPoP, private_key_jwt (1 core)", phases["pkjwt"], fastest)
    hop = _row("tether hop exchange (session → hop) + DPoP (1 core)", phases["hop"], fastest, plain.value,
               "req/s peer plain", "≥ 1.5× the peer")  # fmt: skip
    session = _row("tether session exchange (JWT-SVID → session) + DPoP (1 core)", phases["session"], fastest,
                   pkjwt.value, "req/s peer private_key_jwt", "≥ 1.5× the peer")  # fmt: skip
    for ours, key, peer_key in ((hop, "hop", "plain"), (session, "session", "pkjwt")):
        paired = [a.throughput / b.throughput for a, b in zip(phases[key], phases[peer_key], strict=True) if b.throughput]
        ours.notes["round_ratios"] = [round(r, 2) for r in paired]
        for note, scale in (("cpu_per_req_ratio", False), ("cpu_per_req_ratio_scaled", True)):
            theirs = statistics.median(_cpu(p, fastest, scale) for p in phases[peer_key])
            ours.notes[note] = round(theirs / statistics.median(_cpu(p, fastest, scale) for p in phases[key]), 2)
    return [plain, hop, pkjwt, session]
