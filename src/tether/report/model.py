"""The shapes of a posture report: the evidence snapshot going in, the control results coming out.

The snapshot is plain data read once from the live configuration and store
(``tether.report.evidence``), so the controls are pure functions of it and can be tested with
hand-built snapshots. It holds names, numbers, dates, jtis and key ids, never a secret value, a
token, a DSN or a webhook URL: the report is meant to be handed to an auditor.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tether.monitor.settings import DetectorSettings
from tether.policy.loader import LoadedPolicy as PolicyFacts

__all__ = [
    "SEVERITIES",
    "STATUSES",
    "AlertFacts",
    "ApprovalFacts",
    "ApproverGroupFacts",
    "AudienceHold",
    "AuditFacts",
    "Evidence",
    "FileFacts",
    "Item",
    "KeyFacts",
    "LagFacts",
    "McpRouteFacts",
    "PinFacts",
    "PolicyFacts",
    "PolicyState",
    "Report",
    "Result",
    "RouteFacts",
    "Setting",
    "StoreFacts",
    "TrustSource",
    "VaultFacts",
    "severity_rank",
]

SEVERITIES = ("info", "low", "medium", "high", "critical")
STATUSES = ("pass", "warn", "fail")


def severity_rank(severity: str) -> int:
    """``info`` 0 … ``critical`` 4 (raises ``ValueError`` for anything else)."""
    return SEVERITIES.index(severity)


# -- the evidence snapshot --------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """One configuration value and where it came from (``tether.toml``, ``env TETHER_…`` or ``default``)."""

    value: Any
    source: str


@dataclass(frozen=True)
class TrustSource:
    """A workload identity source: a SPIFFE trust domain or an OIDC issuer."""

    kind: str  # "spiffe" | "oidc"
    name: str
    location: str  # bundle file or URL, JWKS file or URI, "discovery"
    algorithms: tuple[str, ...] = ()


@dataclass(frozen=True)
class RouteFacts:
    """A gateway route: a registered bearer exception (``[[gateway.routes]]``)."""

    name: str
    owner: str
    justification: str
    expires: dt.date
    upstream: str
    secret: str
    allow: tuple[str, ...]
    max_requests_per_task: int
    max_requests_per_second: int
    max_session_seconds: int
    #: the vault entries the route reads: ``(secret,)``, or an OAuth route's (client secret, key, refresh token)
    vault_entries: tuple[str, ...] = ()


@dataclass(frozen=True)
class PinFacts:
    """A route's pinned tool catalogue (``tether.mcp.pins``) as the report found it."""

    #: "valid" (the MAC verifies), "missing" (never pinned), "refused" (the MAC fails), or
    #: "unverified" (the master key could not be read by the report, so the MAC was not checked)
    state: str
    tools: tuple[str, ...] = ()
    pinned_at: float | None = None
    pinned_by: str = ""
    #: why it is refused or unverified
    problem: str = ""


@dataclass(frozen=True)
class McpRouteFacts:
    """An MCP route (``[[gateway.mcp]]``): an upstream of tools the gateway fronts."""

    name: str
    owner: str
    justification: str
    expires: dt.date
    #: the stdio command's program, or the HTTP url without its query
    upstream: str
    transport: str  # "stdio" | "http"
    #: the allowlist (``*`` admits every pinned tool)
    tools: tuple[str, ...]
    #: the vault entry injected into an HTTP upstream ("" for none)
    secret: str
    pins: PinFacts
    max_calls_per_task: int = 100


@dataclass(frozen=True)
class KeyFacts:
    kid: str
    alg: str
    created_at: int
    retired_at: int | None
    not_after: int | None


@dataclass(frozen=True)
class VaultFacts:
    name: str
    version: int
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class PolicyState:
    directory: str
    version: str | None
    policies: tuple[PolicyFacts, ...] = ()
    #: ``file:line: reason`` for each problem when the set does not load
    problems: tuple[str, ...] = ()
    #: ``(version, first loaded at)`` recorded by the STS, newest first; ``None`` if the store was unreadable
    loaded: tuple[tuple[str, float], ...] | None = None


@dataclass(frozen=True)
class FileFacts:
    """A file or directory that must be owner-only; ``mode`` is ``None`` when it does not exist."""

    path: str
    mode: int | None


@dataclass(frozen=True)
class AlertFacts:
    seq: int
    ts: float
    detector: str
    severity: str
    principal: str | None
    task: str | None


@dataclass(frozen=True)
class AuditFacts:
    records: int
    last_seq: int | None
    #: ``seq`` of the first record whose link or hash does not verify (``tether.audit.chain.first_broken``)
    first_broken: int | None
    checkpoints: int
    last_checkpoint_seq: int | None
    tokens_issued: int
    #: ``token.issued`` records without a ``jkt`` (a token not bound to a key)
    unbound_tokens: int
    unbound_examples: tuple[str, ...]
    window_seconds: int
    #: ``"kind error"`` → refusals within the window
    refusals: Mapping[str, int] = field(default_factory=dict)
    #: ``alert.raised`` records within the window, newest last (at most a few)
    alerts: tuple[AlertFacts, ...] = ()
    alerts_in_window: int = 0
    #: severity → alerts within the window
    alert_severities: Mapping[str, int] = field(default_factory=dict)
    #: records after the last checkpoint record (checkpoints themselves not counted) and the oldest one's time
    uncovered: int = 0
    oldest_uncovered_ts: float | None = None
    #: MCP route → ``mcp.drift`` records within the window (calls that reached a tool changed since pinning)
    mcp_drift: Mapping[str, int] = field(default_factory=dict)
    #: MCP route → the tools those records name (a few)
    mcp_drift_tools: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: ``approval.requested|approved|denied|expired`` records within the window, by the last word of
    #: the kind, and ``issued``: ``token.issued`` records naming an approval
    approvals: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ApproverGroupFacts:
    """An ``[[approver_groups]]`` entry: how many principals it lists and which provider groups make a member."""

    name: str
    members: int
    idp_groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class AudienceHold:
    """What the policy set decides for a synthetic exchange to one high-risk audience."""

    uri: str
    tags: tuple[str, ...]
    #: ``held`` (allowed, held for approval), ``allowed`` (issued without approval), ``denied``, or
    #: ``error`` (the policy set could not decide: ``problem`` says why)
    outcome: str
    groups: tuple[str, ...] = ()
    policies: tuple[str, ...] = ()
    problem: str = ""


@dataclass(frozen=True)
class ApprovalFacts:
    """``[approvals]``, ``[[approver_groups]]`` and the holds the policy set gives high-risk audiences.

    The defaults are a deployment that neither configures approvals nor tags a resource high-risk."""

    #: ``[approvals] issuer`` (the approvers' OIDC provider); "" when not set: nobody can approve
    issuer: str = ""
    high_risk_tags: tuple[str, ...] = ("payments",)
    groups: tuple[ApproverGroupFacts, ...] = ()
    webhook: bool = False
    #: one per ``[[resources]]`` tagged with a high-risk tag; ``None`` when the policy set did not load
    audiences: tuple[AudienceHold, ...] | None = ()
    #: the principal the synthetic exchanges were asked for
    probe: str = ""


@dataclass(frozen=True)
class StoreFacts:
    kind: str
    #: why the store could not be read (then the other fields are empty)
    error: str | None = None
    signing_keys: tuple[KeyFacts, ...] = ()
    vault: tuple[VaultFacts, ...] = ()
    audit: AuditFacts | None = None


@dataclass(frozen=True)
class LagFacts:
    """A measured revocation lag: task cancelled at the STS → seen by a feed subscriber."""

    seconds: float | None
    error: str | None = None


@dataclass(frozen=True)
class Evidence:
    now: float
    config_path: str
    #: ``section.key`` (top-level keys bare) → value and source; secrets never included
    settings: Mapping[str, Setting]
    trust_sources: tuple[TrustSource, ...]
    routes: tuple[RouteFacts, ...]
    detectors: tuple[DetectorSettings, ...]
    policy: PolicyState
    master_key: FileFacts | None  # ``None``: the master key comes from ``TETHER_MASTER_KEY``
    data_dir: FileFacts
    store: StoreFacts
    lag: LagFacts | None = None  # ``None``: not measured
    #: detector name → where its settings come from (its ``[monitor.detectors.NAME]`` table, else ``default``)
    detector_sources: Mapping[str, str] = field(default_factory=dict)
    #: where ``settings`` were read: the running STS's ``GET /settings``, or the file (and why)
    settings_from: str = "the configuration file"
    #: ``[[gateway.mcp]]`` routes with their pinned catalogues
    mcp_routes: tuple[McpRouteFacts, ...] = ()
    #: approvals: settings, groups, and the holds of high-risk audiences
    approvals: ApprovalFacts = field(default_factory=ApprovalFacts)

    @property
    def today(self) -> dt.date:
        """The UTC date, as the gateway uses for route expiry."""
        return dt.datetime.fromtimestamp(self.now, dt.UTC).date()

    def value(self, key: str) -> Any:
        return self.settings[key].value


# -- results ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """One piece of evidence shown with a result: what was read, its value, where from."""

    name: str
    value: str
    source: str


@dataclass(frozen=True)
class Result:
    control: str
    title: str
    status: str
    severity: str | None  # ``None`` exactly when the status is ``pass``
    summary: str
    evidence: tuple[Item, ...]
    remediation: str
    asi: tuple[str, ...]
    maestro: tuple[str, ...]
    nist: tuple[str, ...]
    #: the route, detector … this result is about, when a control yields one result per subject
    subject: str | None = None
    #: OWASP Top 10 for LLM Applications 2025 items (only the controls that map to one)
    llm: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.control}[{self.subject}]" if self.subject else self.control

    @property
    def is_finding(self) -> bool:
        return self.status != "pass"


@dataclass(frozen=True)
class Report:
    generated_at: float
    config_path: str
    issuer: str
    store: str
    results: tuple[Result, ...]
    settings_from: str = "the configuration file"

    def findings(self) -> list[Result]:
        """Results that are not passing, most severe first (then in control order)."""
        found = [r for r in self.results if r.is_finding]
        return sorted(found, key=lambda r: -severity_rank(r.severity or "info"))

    def counts(self) -> dict[str, int]:
        """Findings by severity, every severity present (``critical`` first)."""
        out = {s: 0 for s in reversed(SEVERITIES)}
        for result in self.findings():
            out[result.severity or "info"] += 1
        return out

    def worst(self) -> str | None:
        found = self.findings()
        return found[0].severity if found else None

    def fails_at(self, threshold: str) -> bool:
        """True if any finding is at or above ``threshold`` (``--fail-on``)."""
        limit = severity_rank(threshold)
        return any(severity_rank(r.severity or "info") >= limit for r in self.findings())
