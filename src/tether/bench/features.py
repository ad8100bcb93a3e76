"""Every feature's overhead on the plain hop: a deployment per feature, configured but not used by the hop.

The plain hop (session → hop, DPoP, c=16, the requests ``bench.exchange`` builds) runs against
a baseline deployment and against one variant per feature, each configured as an operator would
but for actions the hop never takes, so the hop pays only the checks that tell it the feature
does not apply:

- approvals: ``[[approver_groups]]`` and two ``@approval`` permits, one for exchanges to a
  ``payments``-tagged audience, one for the ``call`` of a tool named ``pay`` (RFC 8628 §3.5 holds
  at the token endpoint, ``sts.holds.gate``);
- MCP per-call policy: per-tool Cedar ``call`` policies over ``context.tool`` and
  ``context.arguments`` and the MCP server as a resource. At the STS these are evaluated only for an
  RFC 9396 ``authorization_details`` tool call; the hop pays a larger policy set when its
  ``exchange`` decision misses the memo (once a second per task). Their cost where they run on
  every ``tools/call``, ``tether.mcp.protect``, is the ``mcp`` section's;
- federation: a ``[[federation]]`` peer whose revocation feed is followed and fresh (a second
  ``tether serve`` on the other core): the local hop pays the FED-03 check of its principals;
- mutual TLS: over TLS, trust domains with an X.509 bundle (client certificates asked for,
  ``CERT_OPTIONAL``, RFC 8705 §2) against a TLS deployment without one, since TLS is not the feature;
- refusal aggregation (``audit.anonymous``) is on by default and has an off switch,
  ``[audit] refusal_interval = 0``: the baseline (on) is compared with a deployment that has it off;
- the admission limit (``web.admission``) is always on and has no off switch: its cost per
  request is measured in-process, wrapped and bare around the same minimal ASGI app, and set
  against the baseline's server CPU per request.

Method: each deployment is served alone on core 0, the load generator on core 1, in interleaved
rounds (baseline, A, B, …, baseline, A, B, …). The figure is the server's CPU time per request
(``harness.cpu_seconds`` before and after the load, over the requests served; median over rounds),
which a shared machine moves less than throughput. Overhead = variant ÷ reference − 1, beside
each round's own ratio and the ratio of the rounds' minima (the least disturbed run of each). The
aggregation row doubles as the run's A/A noise: its two deployments serve the plain hop alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import tether.features  # noqa: F401  (the feature tables are registered before a config is loaded)
from tether.bench.chaos import QUIET_MONITOR
from tether.bench.exchange import AUD_B, AUD_C, RESOURCES, hop_requests, setup_task
from tether.bench.harness import (
    Deployment,
    bench_deployment,
    cpu_seconds,
    run_loadgen,
    serve,
    summarise,
    tether_bin,
)
from tether.bench.report import Row
from tether.config import Config, load_config
from tether.identity.dev_issuer import DevTrustDomain
from tether.keys.sealed import load_master_key
from tether.provision import dev_x509_bundle_path, initialize, render_config
from tether.store.open import open_store
from tether.web.admission import AdmissionLimit
from tether.web.forms import MAX_BODY
from tether.web.server import free_port

__all__ = ["DEPLOYMENTS", "Overhead", "Sample", "features_rows", "interleave", "overhead"]

CONCURRENCY = 16
ROUNDS = 3
TARGET = "≤ 5 % of the plain hop"
#: pre-built hop requests per second of load: above what one STS core serves, so the list outlasts the load
REQUESTS_PER_SECOND = 3000
PAY = "https://pay.bench.example"
NOTES_MCP = "https://notes.bench.example/mcp"
PEER_DOMAIN = "a.example"
#: every deployment measured, in the order of each round: the baseline first, then each feature
DEPLOYMENTS = ("plain", "approvals", "mcp", "federation", "no-aggregation", "tls", "mtls")


# -- the pure parts: rounds and overhead arithmetic ---------------------------------------------


def interleave(names: Sequence[str], rounds: int) -> list[tuple[int, str]]:
    """The measuring order: every deployment once per round, the rounds one after another
    (baseline, A, B, …, baseline, A, B, …), so a machine that slows down mid-run slows all alike."""
    return [(r, name) for r in range(rounds) for name in names]


@dataclass(frozen=True)
class Sample:
    """One load phase against one deployment: server CPU seconds spent, requests answered
    (``others``: each status other than 200 and how often it came)."""

    cpu_s: float
    ok: int
    elapsed: float
    others: tuple[tuple[str, int], ...] = ()

    @property
    def errors(self) -> int:
        return sum(count for _, count in self.others)

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s / self.ok * 1e6 if self.ok else float("nan")

    @property
    def throughput(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0


@dataclass(frozen=True)
class Overhead:
    """``pct``: the feature's median CPU per request over the reference's, minus one, in per cent;
    ``rounds_pct``: the same ratio within each round (the spread the median hides)."""

    pct: float
    rounds_pct: tuple[float, ...]

    @property
    def spread(self) -> tuple[float, float]:
        return (min(self.rounds_pct), max(self.rounds_pct)) if self.rounds_pct else (float("nan"), float("nan"))


def overhead(feature: Sequence[float], reference: Sequence[float]) -> Overhead:
    """Overhead of ``feature`` on ``reference`` from per-round costs (same index = same round)."""
    if not feature or len(feature) != len(reference):
        raise ValueError("need one cost per round for both")
    pct = (statistics.median(feature) / statistics.median(reference) - 1) * 100
    return Overhead(pct, tuple((f / r - 1) * 100 for f, r in zip(feature, reference, strict=True)))


# -- deployments ---------------------------------------------------------------------------------

APPROVAL_POLICIES = """
@id("payments-need-finance")
@approval("finance")
permit (principal, action == Tether::Action::"exchange", resource)
when { resource.tags.contains("payments") && context.key_bound };

@id("pay-needs-finance")
@approval("finance")
permit (principal, action == Tether::Action::"call", resource)
when { context.tool == "pay" };
"""
APPROVAL_TOML = f"""
[[resources]]
uri = "{PAY}"
principals = ["spiffe://tether.local/svc/pay"]
tags = ["payments"]

[[approver_groups]]
name = "finance"
members = ["user:fiona@example.com"]
"""

MCP_POLICIES = """
@id("read-notes-under-shared-only")
forbid (principal, action == Tether::Action::"call", resource)
when { context.tool == "read_note" && context.arguments_digest != "" &&
       !(context.arguments.hasTag("path") && context.arguments.getTag("path") like "/shared/*") };

@id("no-delete-tools")
forbid (principal, action == Tether::Action::"call", resource)
when { context.tool like "delete_*" };

@id("search-small-pages")
forbid (principal, action == Tether::Action::"call", resource)
when { context.tool == "search" && context.arguments.hasTag("limit") && context.arguments.getTag("limit") like "*000*" };
"""
MCP_TOML = f"""
[[resources]]
uri = "{NOTES_MCP}"
principals = ["spiffe://tether.local/svc/notes"]
"""


@dataclass
class Variant:
    """A deployment to measure and how to reach it (``tls``: the load generator's files for https)."""

    name: str
    deployment: Deployment
    tls: dict[str, str] | None = None
    trust: ssl.SSLContext | bool = True
    ready: Callable[[httpx.Client], None] = lambda _http: None


@dataclass(frozen=True)
class Comparison:
    feature: str
    reference: str
    label: str
    note: str


COMPARISONS = (
    Comparison("approvals", "plain", "human approvals configured ([[approver_groups]], @approval on other actions)",
               "plain hop decision names no @approval group: gate() returns before any store read"),
    Comparison("mcp", "plain", "MCP per-call Cedar policies configured (per-tool `call` rules, MCP resource)",
               "evaluated at the STS only for an authorization_details tool call; per tools/call at the MCP "
               "server (`mcp` section)"),
    Comparison("federation", "plain", "[[federation]] peer configured, its revocation feed followed and fresh",
               "the local hop pays the FED-03 feed check of its (local) principals"),
    Comparison("plain", "no-aggregation", "refusal aggregation on (default) vs [audit] refusal_interval = 0",
               "only refusals reach audit.anonymous and a plain hop never does: this row is also the run's A/A noise"),
    Comparison("mtls", "tls", "mutual TLS configured (X.509 bundles, CERT_OPTIONAL) vs TLS alone, DPoP hop",
               "the DPoP client presents no certificate; both over TLS with kept-alive connections"),
)  # fmt: skip


def _plain(directory: Path, *, extra: str = "", policies: str = "") -> Deployment:
    """``bench_deployment`` with ``extra`` and a policy file; the monitor alerts but never suspends
    (round after round of the same agent's load looks like a rate spike against its quiet setups)."""
    d = bench_deployment(directory, extra=RESOURCES + QUIET_MONITOR + extra)
    if policies:
        (d.config.policy_dir / "50-features.cedar").write_text(policies, encoding="utf-8")
    return d


def _tls(directory: Path, *, client_certificates: bool) -> Variant:
    """``tether init --tls``; without ``client_certificates`` the dev trust domain's
    ``x509_bundle_file`` is dropped, so the server asks no client for a certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    issuer = f"https://127.0.0.1:{free_port()}"
    text = render_config(issuer, tls=True).replace("max_tokens = 10000", "max_tokens = 10000000")
    if not client_certificates:
        text = "\n".join(line for line in text.splitlines() if not line.startswith("x509_bundle_file")) + "\n"
    (directory / "tether.toml").write_text(text + RESOURCES + QUIET_MONITOR, encoding="utf-8")
    initialize(directory, issuer=issuer, tls=True)
    config = load_config(directory / "tether.toml")
    d = Deployment(config, DevTrustDomain.load(config.data_dir, "tether.local", load_master_key(config.master_key_file)))
    bundle = dev_x509_bundle_path(config.data_dir, "tether.local")
    name = "mtls" if client_certificates else "tls"
    return Variant(name, d, tls={"ca": str(bundle)}, trust=ssl.create_default_context(cafile=str(bundle)))


def _peer(directory: Path, issuer: str, follower: Deployment) -> Path:
    """Trust domain ``a.example``: an ordinary deployment that lets ``follower``'s feed principal
    (authenticated against ``follower``'s dev bundle) follow its revocations."""
    result = initialize(directory, issuer=issuer, trust_domain=PEER_DOMAIN)
    bundle = DevTrustDomain.bundle_path(follower.config.data_dir, "tether.local")
    with result.config_path.open("a", encoding="utf-8") as handle:
        handle.write(f'\n[[trust_domains]]\nname = "tether.local"\nbundle_file = "{bundle}"\n\n'
                     '[revocations]\nsubscribers = ["spiffe://tether.local/feed"]\n')  # fmt: skip
    return result.config_path


def _federation_toml(peer_issuer: str) -> str:
    return (
        f'\n[[federation]]\nname = "a"\nissuer = "{peer_issuer}"\njwks_uri = "{peer_issuer}/jwks"\n'
        f'agents = ["spiffe://{PEER_DOMAIN}/agent/*"]\naudiences = ["{AUD_C}"]\nscopes = ["read"]\n'
        'feed_principal = "spiffe://tether.local/feed"\nstale_after = 10\n'
    )


def _wait_fresh(url: str, http: httpx.Client, timeout: float = 20.0) -> None:
    """Until ``/healthz`` counts the peer's feed as fresh: a stale one would measure another path."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = http.get(url + "/healthz").json()
        if body.get("federation", {}).get("fresh") == 1:
            return
        time.sleep(0.1)
    raise RuntimeError("the federation peer's feed did not become fresh")


class _Deployments:
    """Every deployment of the section, made once; the peer STS runs for the whole section."""

    def __init__(self, workdir: Path, stack: contextlib.ExitStack) -> None:
        self.variants: dict[str, Variant] = {}
        for name, extra, policies in (
            ("plain", "", ""),
            ("approvals", APPROVAL_TOML, APPROVAL_POLICIES),
            ("mcp", MCP_TOML, MCP_POLICIES),
            ("no-aggregation", "\n[audit]\nrefusal_interval = 0\n", ""),
        ):
            self.variants[name] = Variant(name, _plain(workdir / name, extra=extra, policies=policies))
        peer_issuer = f"http://127.0.0.1:{free_port()}"
        fed = _plain(workdir / "federation", extra=_federation_toml(peer_issuer))
        peer_config = load_config(_peer(workdir / "peer-a", peer_issuer, fed))
        self.variants["federation"] = Variant("federation", fed, ready=lambda http: _wait_fresh(fed.url, http))
        stack.enter_context(serve([tether_bin(), "serve", "--config", str(peer_config.path)], peer_config.issuer, core="1"))
        for client_certificates in (False, True):
            variant = _tls(workdir / f"tls-{client_certificates}", client_certificates=client_certificates)
            self.variants[variant.name] = variant


def _measure(variant: Variant, duration: float) -> Sample:
    """Serve ``variant`` alone on core 0, prepare a task and hop requests, then one load phase."""
    d = variant.deployment
    args = [tether_bin(), "serve", "--config", str(d.config.path)]
    with (
        httpx.Client(trust_env=False, timeout=30, verify=variant.trust) as http,
        serve(args, d.url, verify=variant.trust) as sts,
    ):
        variant.ready(http)
        agent, session, _ = setup_task(d, http, [AUD_B, AUD_C])
        requests = hop_requests(agent, session, int(duration * REQUESTS_PER_SECOND))
        before = cpu_seconds(sts.process.pid)
        raw = run_loadgen(d.url, requests, concurrency=CONCURRENCY, duration=duration, tls=variant.tls)
        after = cpu_seconds(sts.process.pid)
    load = summarise(raw)
    others = tuple(sorted((status, n) for status, n in load.statuses.items() if status != "200"))
    return Sample(after - before, load.ok, load.elapsed, others)


def _unit(spread: tuple[float, float]) -> str:
    """The unit of an overhead row, with the rounds' spread: the table prints only figure and unit."""
    return f"% CPU/req (rounds {spread[0]:+.1f} … {spread[1]:+.1f})"


# -- the admission limit, in-process -------------------------------------------------------------


async def _admission_us(n: int, rounds: int) -> tuple[float, tuple[float, ...]]:
    """Microseconds ``AdmissionLimit`` adds per request (wrapped minus bare), median and per round."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    # as ``sts.app`` builds it: the body read before a slot is taken (the bare app does not read
    # it, so the figure also holds the one ``receive`` an endpoint makes anyway: an upper bound)
    limited = AdmissionLimit(app, limit=64, exempt=frozenset({"/healthz", "/metrics"}),
                             streams=frozenset({"/revocations/stream"}), stream_suffixes=("/events",),
                             prebuffer=MAX_BODY)  # fmt: skip
    scope: Scope = {"type": "http", "method": "POST", "path": "/token", "headers": []}

    async def receive() -> Message:
        return {"type": "http.request", "body": b"grant_type=x", "more_body": False}

    async def send(message: Message) -> None:
        return None

    async def per_request(target: ASGIApp) -> float:
        started = time.perf_counter()
        for _ in range(n):
            await target(scope, receive, send)
        return (time.perf_counter() - started) / n * 1e6

    await per_request(limited)
    added = []
    for _ in range(rounds):
        bare = await per_request(app)
        wrapped = await per_request(limited)
        added.append(wrapped - bare)
    return statistics.median(added), tuple(added)


def admission_row(reference_us: float, *, n: int = 200_000, rounds: int = ROUNDS) -> Row:
    added, per_round = asyncio.run(_admission_us(n, rounds))
    spread = (min(per_round) / reference_us * 100, max(per_round) / reference_us * 100)
    return Row(
        "features: admission limit (always on, no off switch), in-process cost per request",
        added / reference_us * 100,
        _unit(spread),
        target=TARGET,
        notes={
            "added_us_per_req": round(added, 3),
            "rounds_us": [round(x, 3) for x in per_round],
            "reference_cpu_us_per_req": round(reference_us, 1),
            "note": "AdmissionLimit around a minimal ASGI app minus the bare app, set against the plain hop's server CPU",
        },
    )


# -- the section ---------------------------------------------------------------------------------


def _cpu(samples: list[Sample]) -> list[float]:
    return [s.cpu_us_per_request for s in samples]


def _others(samples: list[Sample]) -> dict[str, int]:
    """Every status other than 200 over the rounds: the hop must succeed for its cost to mean anything."""
    counts: dict[str, int] = {}
    for sample in samples:
        for status, n in sample.others:
            counts[status] = counts.get(status, 0) + n
    return counts


async def _refusals(config: Config) -> dict[str, int]:
    """The deployment's audited refusals by kind and error code (a hop answered other than 200
    spent CPU without serving: why is in the audit chain; ``use_dpop_nonce`` is never audited)."""
    store = await open_store(config)
    try:
        counts = await store.audit_counts(after=0, scan=10_000_000)
    finally:
        await store.aclose()
    return {f"{kind} {error}".strip(): n for (kind, outcome, error), n in sorted(counts.items()) if outcome != "ok"}


def _reference_row(label: str, samples: list[Sample]) -> Row:
    return Row(
        f"features: {label}, server CPU per request (reference)",
        statistics.median(_cpu(samples)),
        "µs/req",
        notes={
            "rounds_cpu_us": [round(x, 1) for x in _cpu(samples)],
            "throughput_per_s": round(statistics.median(s.throughput for s in samples)),
            "non_200": _others(samples),
        },
    )


def _comparison_row(c: Comparison, feature: list[Sample], reference: list[Sample]) -> Row:
    o = overhead(_cpu(feature), _cpu(reference))
    return Row(
        f"features: {c.label}",
        o.pct,
        _unit(o.spread),
        target=TARGET,
        notes={
            "cpu_us_per_req": round(statistics.median(_cpu(feature)), 1),
            "reference_cpu_us_per_req": round(statistics.median(_cpu(reference)), 1),
            "overhead_pct": round(o.pct, 2),
            "overhead_of_minima_pct": round((min(_cpu(feature)) / min(_cpu(reference)) - 1) * 100, 2),
            "rounds": [round(x, 2) for x in o.rounds_pct],
            "spread_pct": [round(x, 2) for x in o.spread],
            "throughput_per_s": round(statistics.median(s.throughput for s in feature)),
            "reference_throughput_per_s": round(statistics.median(s.throughput for s in reference)),
            "non_200": _others(feature),
            "note": c.note,
        },
    )


def features_rows(workdir: Path, *, duration: float, rounds: int = ROUNDS) -> list[Row]:
    """Every deployment measured ``rounds`` times, interleaved; a row per feature (module docstring)."""
    with contextlib.ExitStack() as stack:
        deployments = _Deployments(workdir, stack)
        samples: dict[str, list[Sample]] = {name: [] for name in DEPLOYMENTS}
        for _, name in interleave(DEPLOYMENTS, rounds):
            samples[name].append(_measure(deployments.variants[name], duration))
    rows = [
        _reference_row(f"plain hop (session → hop), c={CONCURRENCY}", samples["plain"]),
        _reference_row(f"plain hop over TLS, c={CONCURRENCY}", samples["tls"]),
    ]
    rows += [_comparison_row(c, samples[c.feature], samples[c.reference]) for c in COMPARISONS]
    rows.append(admission_row(statistics.median(_cpu(samples["plain"]))))
    for row, name in zip(rows, ["plain", "tls", *(c.feature for c in COMPARISONS)], strict=False):
        if _others(samples[name]):
            row.notes["audited_refusals"] = asyncio.run(_refusals(deployments.variants[name].deployment.config))
    return rows
