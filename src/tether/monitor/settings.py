"""``[monitor.detectors.NAME]`` tables: which detectors run, their thresholds, and what each does.

Every detector is on by default; a table overrides thresholds or actions, and unknown names,
parameters, types or actions are configuration errors naming the key. Whatever a table says,
a finding from an unproven record (a replay, a refusal naming only a claimed task or
principal) never takes a ``PROVEN_ONLY`` action: acting on it would let anyone who captured a
proof get its victim suspended. So ``dpop_replay`` defaults to ``alert`` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tether.config.sections import MonitorSettings
from tether.errors import ConfigError

__all__ = [
    "ACTIONS",
    "DEFAULTS",
    "HISTORY_RECORDS",
    "HISTORY_SECONDS",
    "NEVER_ON_AGENT",
    "PROVEN_ONLY",
    "SEVERITIES",
    "DetectorSettings",
    "parse_detectors",
]

ACTIONS = ("alert", "webhook", "risk", "suspend")
#: actions taken only on findings from records where the caller proved who it is
PROVEN_ONLY = ("risk", "suspend")
#: the window replayed into the detectors at start (``monitor.history_records`` / ``history_seconds``,
#: see ``tether.monitor.runner``): enough for every default learning period
HISTORY_RECORDS = MonitorSettings.history_records
HISTORY_SECONDS = MonitorSettings.history_seconds
SEVERITIES = ("low", "medium", "high", "critical")


@dataclass(frozen=True)
class DetectorSettings:
    name: str
    enabled: bool
    severity: str
    actions: tuple[str, ...]
    #: detector-specific numbers (thresholds, windows, learning periods), see ``DEFAULTS``
    params: Mapping[str, float]

    def param(self, key: str) -> float:
        return float(self.params[key])


#: name → (severity, actions, params)
DEFAULTS: Mapping[str, tuple[str, tuple[str, ...], Mapping[str, float]]] = {
    # exchanges per agent in a window against its own moving average of earlier windows;
    # an agent is judged only once it has been active in `warmup` earlier windows; windows a
    # store outage cut short, or starting within `recovery` seconds after it, are not judged
    "exchange_rate_spike": (
        "high",
        ("alert", "suspend"),
        {"window": 10, "factor": 5.0, "min_count": 50, "alpha": 0.2, "warmup": 3, "recovery": 30},
    ),
    # a token for an audience this agent never had a token for, once it has a history
    "new_audience": ("medium", ("alert",), {"learn": 20}),
    # policy denials, scope widening, invalid proofs... by one agent within a window
    "refusal_burst": ("high", ("alert", "risk", "suspend"), {"window": 30, "threshold": 5}),
    # a DPoP proof presented twice, counted by the task the replayed token names; a replay
    # proves nothing about who sent it, so it is only ever alerted (see PROVEN_ONLY)
    "dpop_replay": ("high", ("alert",), {"threshold": 1}),
    # a token used after its task ended or after it was revoked
    "use_after_end": ("medium", ("alert",), {"threshold": 1}),
    # a gateway call on a path or at an hour this agent's history on the route does not have;
    # hours are judged only once that history spans `span` seconds (a day by default)
    "gateway_unusual": ("medium", ("alert",), {"learn": 20, "span": 86400}),
    # a delegation chain deeper than this agent's norm
    "deep_delegation": ("medium", ("alert", "risk"), {"learn": 10, "margin": 1}),
    # an MCP tool this agent never called on the route (after `learn` calls there), or a tool
    # called with an argument shape never seen for it (after `shape_learn` calls of it)
    "mcp_unusual": ("medium", ("alert",), {"learn": 20, "shape_learn": 5}),
    # a call that reached an MCP tool changed since its catalogue was pinned (a rug pull)
    "mcp_drift": ("high", ("alert",), {}),
    # a human denied the agent's held request (tether.monitor.approvals): alerted, and the agent's
    # risk raised modestly (low: +10 per denial for risk_ttl), never a suspension by default
    "approval_denied": ("low", ("alert", "risk"), {"threshold": 1, "window": 3600}),
    # held requests for the same approver groups expiring unanswered: about the approvers, not the
    # agent, so alert only (NEVER_ON_AGENT)
    "approval_expiry_burst": ("medium", ("alert",), {"threshold": 5, "window": 3600}),
}

#: detectors whose findings are never about the agent: ``risk`` and ``suspend`` are refused for them
NEVER_ON_AGENT = ("approval_expiry_burst",)


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(key, "must be a non-negative number")
    return float(value)


def parse_detectors(raw: Any) -> tuple[DetectorSettings, ...]:
    """Defaults for every detector, overridden by the ``[monitor.detectors.*]`` tables in ``raw``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("monitor.detectors", "must be a table of detector tables")
    for name in raw:
        if name not in DEFAULTS:
            raise ConfigError(f"monitor.detectors.{name}", f"unknown detector (known: {', '.join(DEFAULTS)})")
    out = []
    for name, (severity, actions, params) in DEFAULTS.items():
        table = raw.get(name, {})
        prefix = f"monitor.detectors.{name}"
        if not isinstance(table, dict):
            raise ConfigError(prefix, "must be a table")
        merged = dict(params)
        for key, value in table.items():
            if key in ("enabled", "severity", "actions"):
                continue
            if key not in params:
                raise ConfigError(f"{prefix}.{key}", f"unknown parameter (known: {', '.join(params)})")
            merged[key] = _number(f"{prefix}.{key}", value)
        enabled = table.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(f"{prefix}.enabled", "must be true or false")
        level = table.get("severity", severity)
        if level not in SEVERITIES:
            raise ConfigError(f"{prefix}.severity", f"must be one of {', '.join(SEVERITIES)}")
        chosen = table.get("actions", list(actions))
        if not isinstance(chosen, list) or not all(isinstance(a, str) for a in chosen):
            raise ConfigError(f"{prefix}.actions", "must be a list of actions")
        for action in chosen:
            if action not in ACTIONS:
                raise ConfigError(f"{prefix}.actions", f"unknown action `{action}` (known: {', '.join(ACTIONS)})")
            if name in NEVER_ON_AGENT and action in PROVEN_ONLY:
                raise ConfigError(
                    f"{prefix}.actions", f"`{action}` acts on an agent, and this finding proves nothing about one"
                )
        out.append(DetectorSettings(name, enabled, str(level), tuple(dict.fromkeys(chosen)), merged))
    return tuple(out)
