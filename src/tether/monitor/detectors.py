"""The eleven detectors over the audit stream (pure: no I/O, no clock, no randomness).

The traffic detectors live here, the refusal ones in ``tether.monitor.refusals``, the MCP
ones in ``tether.monitor.mcp`` and the approval ones in ``tether.monitor.approvals`` (all
re-exported). Each is fed every record in chain order and returns the findings it completes;
time is the record's ``ts``, so an exported log gives the answers the live run gave, and state
is bounded (an LRU of ``MAX_AGENTS``, each collection capped). Learning detectors stay quiet
until an agent has ``learn`` records of history and ``exchange_rate_spike`` waits ``warmup``
windows, so a new agent's first traffic is its baseline, not an alert.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tether.lru import LruCache
from tether.monitor.approvals import ApprovalDenied, ApprovalExpiryBurst
from tether.monitor.base import DEDUPE_SECONDS, MAX_AGENTS, Detector, DetectorBase, agent_of
from tether.monitor.events import Event, Finding
from tether.monitor.mcp import McpDrift, McpUnusual
from tether.monitor.outages import Outages
from tether.monitor.refusals import DpopReplay, RefusalBurst, UseAfterEnd
from tether.monitor.settings import DetectorSettings

__all__ = [
    "DEDUPE_SECONDS",
    "MAX_AGENTS",
    "ApprovalDenied",
    "ApprovalExpiryBurst",
    "DeepDelegation",
    "Detector",
    "DpopReplay",
    "ExchangeRateSpike",
    "GatewayUnusual",
    "McpDrift",
    "McpUnusual",
    "NewAudience",
    "RefusalBurst",
    "UseAfterEnd",
    "build_detectors",
    "path_shape",
]

_MAX_SET = 256


@dataclass
class _Rate:
    bucket: int
    count: int = 0
    first_seq: int = 0
    baseline: float | None = None
    windows: int = 0
    fired: bool = False


class ExchangeRateSpike(DetectorBase):
    """Issued tokens per agent in fixed windows against an exponential moving average.

    The average is over the agent's *active* windows (those with at least one issuance):
    an agent that works in bursts keeps the intensity of its bursts as its baseline
    instead of decaying to zero while idle. It fires once per window, when the count
    reaches ``min_count`` and ``factor`` times the baseline.

    A known store outage (``tether.monitor.outages``) holds the windows it touched: the one
    it cut short and those starting before ``recovery`` seconds after it ended are neither
    judged nor averaged, so the deferred work arriving at once is not an alert and does not
    inflate the baseline; a rate that stays high past the recovery is judged against the
    baseline from before the outage.
    """

    def __init__(self, settings: DetectorSettings) -> None:
        super().__init__(settings)
        self.window = max(settings.param("window"), 1e-3)
        self.factor = settings.param("factor")
        self.min_count = settings.param("min_count")
        self.alpha = min(max(settings.param("alpha"), 0.0), 1.0)
        self.warmup = int(settings.param("warmup"))
        self.outages = Outages(settings.param("recovery"))
        self.agents: LruCache[str, _Rate] = LruCache(MAX_AGENTS)

    def _held(self, bucket: int) -> bool:
        return self.outages.touches(bucket * self.window, (bucket + 1) * self.window)

    def observe(self, event: Event) -> list[Finding]:
        agent = agent_of(event)
        if self.outages.observe(event) or event.kind != "token.issued" or agent is None:
            return []
        bucket = int(event.ts // self.window)
        state = self.agents.get(agent)
        if state is None:
            state = _Rate(bucket, first_seq=event.seq)
            self.agents.put(agent, state)
        elif bucket > state.bucket:
            if state.count and not self._held(state.bucket):
                state.baseline = state.count if state.baseline is None else (
                    self.alpha * state.count + (1 - self.alpha) * state.baseline)  # fmt: skip
                state.windows += 1
            state.bucket, state.count, state.first_seq, state.fired = bucket, 0, event.seq, False
        state.count += 1
        if state.fired or state.windows < self.warmup or state.count < self.min_count or self._held(state.bucket):
            return []
        baseline = state.baseline or 0.0
        if state.count < self.factor * baseline:
            return []
        state.fired = True
        return [
            self._finding(
                event,
                agent=agent,
                every=self.window,
                reason=f"{state.count} tokens issued within {self.window:g}s against the agent's baseline of "
                f"{baseline:.1f} per active window",
                count=state.count,
                baseline=round(baseline, 3),
                factor=self.factor,
                window=self.window,
                windows_seen=state.windows,
                seqs=[state.first_seq, event.seq],
            )
        ]


@dataclass
class _Seen:
    count: int = 0
    values: set[str] = field(default_factory=set)


class NewAudience(DetectorBase):
    """A token for an audience the agent never had one for, once it has ``learn`` issued tokens."""

    def __init__(self, settings: DetectorSettings) -> None:
        super().__init__(settings)
        self.learn = settings.param("learn")
        self.agents: LruCache[str, _Seen] = LruCache(MAX_AGENTS)

    def observe(self, event: Event) -> list[Finding]:
        agent, audience = agent_of(event), event.text("aud")
        if event.kind != "token.issued" or agent is None or audience is None:
            return []
        state = self.agents.setdefault(agent, _Seen)
        out: list[Finding] = []
        if state.count >= self.learn and audience not in state.values:
            out.append(
                self._finding(
                    event,
                    agent=agent,
                    every=DEDUPE_SECONDS,
                    reason=f"first token for audience `{audience[:200]}` after {state.count} tokens for "
                    f"{len(state.values)} other audience(s)",
                    audience=audience[:200],
                    known=sorted(state.values)[:20],
                    history=state.count,
                    seqs=[event.seq],
                )
            )
        if len(state.values) < _MAX_SET:
            state.values.add(audience)
        state.count += 1
        return out


def path_shape(path: str) -> str:
    """A path with its identifiers folded (``/items/123`` → ``/items/*``) and the query dropped."""
    segments = path.split("?", 1)[0].split("/")
    return "/".join("*" if _is_identifier(s) else s for s in segments)


def _is_identifier(segment: str) -> bool:
    if segment.isdigit():
        return True
    hexish = segment.replace("-", "")
    return len(hexish) >= 8 and any(c.isdigit() for c in hexish) and all(c in "0123456789abcdefABCDEF" for c in hexish)


@dataclass
class _Route:
    first_ts: float
    count: int = 0
    paths: set[str] = field(default_factory=set)
    hours: set[int] = field(default_factory=set)


class GatewayUnusual(DetectorBase):
    """A gateway call on a path or at an hour (UTC) the agent's history on that route lacks.

    Paths are compared by shape (``path_shape``). Paths are judged after ``learn`` calls on
    the route; hours only once that history also spans ``span`` seconds, so the first
    hour boundary of a young agent is not an anomaly.
    """

    def __init__(self, settings: DetectorSettings) -> None:
        super().__init__(settings)
        self.learn = settings.param("learn")
        self.span = settings.param("span")
        self.routes: LruCache[tuple[str, str], _Route] = LruCache(MAX_AGENTS)

    def observe(self, event: Event) -> list[Finding]:
        agent, route, path = agent_of(event), event.text("route"), event.text("path")
        if event.kind != "gateway.call" or agent is None or route is None or path is None:
            return []
        state = self.routes.get((agent, route))
        if state is None:
            state = _Route(first_ts=event.ts)
            self.routes.put((agent, route), state)
        shape = path_shape(path)[:200]
        hour = dt.datetime.fromtimestamp(event.ts, dt.UTC).hour
        unusual: list[str] = []
        if state.count >= self.learn:
            if shape not in state.paths:
                unusual.append(f"path `{shape}`")
            if event.ts - state.first_ts >= self.span and hour not in state.hours:
                unusual.append(f"hour {hour:02d}:00 UTC")
        out: list[Finding] = []
        if unusual:
            out.append(
                self._finding(
                    event,
                    agent=agent,
                    every=DEDUPE_SECONDS,
                    reason=f"gateway route `{route}`: {' and '.join(unusual)} not in the agent's history of "
                    f"{state.count} calls",
                    route=route,
                    path=shape,
                    hour=hour,
                    known_paths=sorted(state.paths)[:20],
                    known_hours=sorted(state.hours),
                    history=state.count,
                    seqs=[event.seq],
                )
            )
        if len(state.paths) < _MAX_SET:
            state.paths.add(shape)
        state.hours.add(hour)
        state.count += 1
        return out


@dataclass
class _Depth:
    count: int = 0
    deepest: int = 0


class DeepDelegation(DetectorBase):
    """An issued token whose actor chain is deeper than the agent's deepest so far plus ``margin``.

    The agent is the task's agent (``detail.agent``), whichever service asked for the token.
    """

    def __init__(self, settings: DetectorSettings) -> None:
        super().__init__(settings)
        self.learn = settings.param("learn")
        self.margin = settings.param("margin")
        self.agents: LruCache[str, _Depth] = LruCache(MAX_AGENTS)

    def observe(self, event: Event) -> list[Finding]:
        agent, depth = event.text("agent") or agent_of(event), event.number("depth")
        if event.kind != "token.issued" or agent is None or depth is None:
            return []
        state = self.agents.setdefault(agent, _Depth)
        out: list[Finding] = []
        if state.count >= self.learn and depth > state.deepest + self.margin:
            actors = event.detail.get("act")
            out.append(
                self._finding(
                    event,
                    agent=agent,
                    every=DEDUPE_SECONDS,
                    reason=f"delegation chain of depth {depth}; the agent's deepest in {state.count} tokens "
                    f"was {state.deepest}",
                    depth=depth,
                    deepest=state.deepest,
                    margin=self.margin,
                    actors=list(actors)[:10] if isinstance(actors, list) else [],
                    history=state.count,
                    seqs=[event.seq],
                )
            )
        state.deepest = max(state.deepest, depth)
        state.count += 1
        return out


_KINDS: dict[str, Callable[[DetectorSettings], Detector]] = {
    "exchange_rate_spike": ExchangeRateSpike,
    "new_audience": NewAudience,
    "refusal_burst": RefusalBurst,
    "dpop_replay": DpopReplay,
    "use_after_end": UseAfterEnd,
    "gateway_unusual": GatewayUnusual,
    "deep_delegation": DeepDelegation,
    "mcp_unusual": McpUnusual,
    "mcp_drift": McpDrift,
    "approval_denied": ApprovalDenied,
    "approval_expiry_burst": ApprovalExpiryBurst,
}


def build_detectors(settings: Sequence[DetectorSettings]) -> list[Detector]:
    """One detector per enabled ``[monitor.detectors.NAME]``."""
    return [_KINDS[s.name](s) for s in settings if s.enabled]
