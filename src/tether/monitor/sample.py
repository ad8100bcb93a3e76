"""The commented ``[monitor]`` block ``tether init`` writes: every detector with its defaults."""

from __future__ import annotations

import json

from tether.monitor.risk import RISK_BY_SEVERITY
from tether.monitor.settings import DEFAULTS, HISTORY_RECORDS, HISTORY_SECONDS, SEVERITIES

__all__ = ["sample_config"]

_WHAT = {
    "exchange_rate_spike": "tokens issued to an agent per window vs its moving average (after warm-up; "
    "held for `recovery` s after a store outage)",
    "new_audience": "a token for an audience the agent never had, after `learn` tokens",
    "refusal_burst": "`threshold` refusals (denials, widening, bad proofs) by one agent within `window` s",
    "dpop_replay": "a DPoP proof presented twice, by the task the token names (never proven: no risk, no suspend)",
    "use_after_end": "a token used after its task ended or after revocation",
    "gateway_unusual": "a gateway call on a new path, or at a new hour once the history spans `span` s",
    "deep_delegation": "an act chain deeper than the agent's deepest + `margin`, after `learn` tokens",
    "mcp_unusual": "an MCP tool the agent never called on the route (after `learn` calls), or an argument shape "
    "never seen for the tool (after `shape_learn` calls of it)",
    "mcp_drift": "a call reached an MCP tool changed since its catalogue was pinned (a rug pull)",
    "approval_denied": "`threshold` held requests of one agent denied by their approvers within `window` s",
    "approval_expiry_burst": "`threshold` held requests for the same approver groups expiring unanswered within "
    "`window` s (about the approvers: never risk or suspend)",
}


def _value(value: object) -> str:
    if isinstance(value, float) and value.is_integer() and not isinstance(value, bool):
        return str(int(value))
    return json.dumps(value)


def sample_config() -> str:
    """TOML, every line commented out (prose doubly), ending with a newline."""
    risk = ", ".join(f"{k} +{v}" for k, v in RISK_BY_SEVERITY.items())
    lines = [
        "[monitor]                   # detectors over the audit stream, in every STS replica (one acts per finding)",
        "enabled = true",
        "interval = 1                # seconds between reads of the audit log",
        "risk_ttl = 300              # seconds a risk raise lasts (Cedar context.risk; deny-high-risk at 80)",
        f"history_records = {HISTORY_RECORDS:<10d}# on start, replay at most this many records into the detectors,",
        f"history_seconds = {HISTORY_SECONDS:<10d}# none older than this: baselines survive a restart (no actions)",
        'webhook_url = ""            # POST each alert as JSON from a queue: retried, never blocking a request',
        "webhook_timeout = 5",
        "webhook_retries = 3",
        "",
        f"# per detector: enabled, severity ({', '.join(SEVERITIES)}), its numbers, and actions:",
        "#   alert (audited as alert.raised, listed by `tether alerts`), webhook,",
        f"#   risk (raises the agent's Cedar risk by severity: {risk}),",
        "#   suspend (ends the task as suspended, revoking its tokens);",
        "#   risk and suspend are never taken on an unproven finding (a replayed proof, a claimed task)",
    ]
    for name, (severity, actions, params) in DEFAULTS.items():
        lines += ["", f"# {_WHAT[name]}", f"[monitor.detectors.{name}]"]
        lines.append(f"severity = {_value(severity)}")
        lines.append(f"actions = {json.dumps(list(actions))}")
        lines += [f"{key} = {_value(value)}" for key, value in params.items()]
    return "".join(f"# {line}\n" if line else "#\n" for line in lines)
