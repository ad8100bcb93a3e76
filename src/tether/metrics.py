"""Prometheus metrics for the STS and the gateway (text exposition at ``GET /metrics``).

One registry per process, so the STS and the gateway (separate processes) each expose
their own. Label values are bounded sets — error codes, token kinds, route names, HTTP
statuses, detector names — never principals, task ids or token ids, which would make
the series count grow with the fleet.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = [
    "ALERTS",
    "APPROVALS",
    "CONTENT_TYPE",
    "EXCHANGE_SECONDS",
    "FEDERATION_FEED_AGE",
    "FEDERATION_FEED_FRESH",
    "FEDERATION_TASKS_ENDED",
    "FEED_LAG_SECONDS",
    "FEED_SUBSCRIBERS",
    "GATEWAY_CALLS",
    "GATEWAY_OAUTH_TOKENS",
    "GATEWAY_SECONDS",
    "ISSUED",
    "MCP_CALLS",
    "MCP_SESSIONS",
    "REFUSALS",
    "REGISTRY",
    "REPLAY_EPOCH_REFUSALS",
    "REVOCATIONS",
    "STORE_CIRCUIT_OPEN",
    "exposition",
]

REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = CONTENT_TYPE_LATEST

ISSUED = Counter("tether_tokens_issued", "Access tokens issued, by exchange kind", ["kind"], registry=REGISTRY)
REFUSALS = Counter(
    "tether_refusals", "Requests refused, by endpoint and OAuth error code", ["endpoint", "error"], registry=REGISTRY
)
EXCHANGE_SECONDS = Histogram(
    "tether_exchange_seconds",
    "Token endpoint latency, by exchange kind (refusals included as kind=refused)",
    ["kind"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
REVOCATIONS = Counter(
    "tether_revocations", "Revocation feed entries published, by kind (jti or task)", ["kind"], registry=REGISTRY
)
#: held requests by outcome: requested, approved, denied, expired (``rules.approval``; no ids as labels)
APPROVALS = Counter("tether_approvals", "Held requests and their outcomes", ["outcome"], registry=REGISTRY)
FEED_SUBSCRIBERS = Gauge("tether_feed_subscribers", "Open revocation feed streams", registry=REGISTRY)
FEED_LAG_SECONDS = Gauge(
    "tether_feed_lag_seconds",
    "Seconds since the revocation view was last heard from the STS (resource servers and the gateway)",
    registry=REGISTRY,
)
#: per ``[[federation]]`` peer (a configured, bounded set of names): is its revocation feed current
FEDERATION_FEED_FRESH = Gauge(
    "tether_federation_feed_fresh",
    "1 while a federation peer's revocation feed was heard within its stale_after (its agents are served), else 0",
    ["peer"],
    registry=REGISTRY,
)
FEDERATION_FEED_AGE = Gauge(
    "tether_federation_feed_age_seconds", "Seconds since a federation peer's revocation feed was last heard", ["peer"],
    registry=REGISTRY,
)  # fmt: skip
FEDERATION_TASKS_ENDED = Counter(
    "tether_federation_tasks_ended", "Linked tasks ended because their federation peer revoked their origin", ["peer"],
    registry=REGISTRY,
)  # fmt: skip
GATEWAY_CALLS = Counter("tether_gateway_calls", "Gateway calls, by route and status", ["route", "status"], registry=REGISTRY)
GATEWAY_SECONDS = Histogram(
    "tether_gateway_seconds",
    "Gateway call latency including the upstream, by route",
    ["route"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
GATEWAY_OAUTH_TOKENS = Counter(
    "tether_gateway_oauth_tokens",
    "Upstream OAuth access tokens on gateway routes: cached, fetched, refused, revoke_ok, revoke_failed, revoke_not_revoked",
    ["route", "outcome"],
    registry=REGISTRY,
)
MCP_CALLS = Counter(
    "tether_mcp_calls",
    "MCP gateway tool calls, by route, tool (a pinned tool's name, else `-`) and outcome (ok, error or the refusal's code)",
    ["route", "tool", "outcome"],
    registry=REGISTRY,
)
MCP_SESSIONS = Gauge("tether_mcp_sessions", "Upstream MCP sessions the gateway holds open, by route", ["route"],
                     registry=REGISTRY)  # fmt: skip
REPLAY_EPOCH_REFUSALS = Counter(
    "tether_dpop_replay_epoch_refusals",
    "DPoP proofs refused because the replay cache was lost since they were made (a replay or an "
    "honest client's first proof after the loss; the STS does not audit nonce challenges), by error code",
    ["error"],
    registry=REGISTRY,
)


def count_epoch_refusal(error: str) -> None:
    """``ProofChecker.on_epoch_refusal`` for the STS and the gateway."""
    REPLAY_EPOCH_REFUSALS.labels(error=error).inc()


STORE_CIRCUIT_OPEN = Gauge(
    "tether_store_circuit_open",
    "1 while the PostgreSQL circuit is open (the database did not answer; requests are refused at once), else 0",
    registry=REGISTRY,
)
ALERTS = Counter("tether_alerts", "Alerts raised by the monitor, by detector", ["detector"], registry=REGISTRY)


def exposition() -> bytes:
    """The registry in the Prometheus text format (version 0.0.4)."""
    return generate_latest(REGISTRY)
