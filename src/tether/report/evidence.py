"""Gather the evidence snapshot from the live configuration, files and store (read-only).

Nothing here writes: the store is opened without migrating, the master key is loaded
only to verify the MCP pin files' MACs (``tether.mcp.pins``; the report says "unverified"
where it cannot be read) and no secret, DSN or webhook URL is copied into the snapshot.
The audit log is read once, page by page, verifying the hash chain as it goes
(``tether.audit.chain.first_broken`` with each page's predecessor hash) and counting
issued tokens without ``cnf.jkt``, refusals, alerts, checkpoints, ``mcp.drift`` and ``approval.*``
records. The approval evidence asks the policy set about each high-risk audience
(``tether.report.approvals``).
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections import Counter, deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tether.audit.chain import GENESIS, AuditRecord, first_broken
from tether.audit.checkpoint import CHECKPOINT_KIND
from tether.config import Config
from tether.errors import ConfigError
from tether.keys.sealed import MASTER_KEY_ENV, SealError
from tether.mcp.pins import PinsTampered, load_pins
from tether.policy.loader import PolicyLoadError, load_directory
from tether.report.approvals import approval_facts
from tether.report.model import (
    SEVERITIES,
    AlertFacts,
    AuditFacts,
    Evidence,
    FileFacts,
    KeyFacts,
    LagFacts,
    McpRouteFacts,
    PinFacts,
    PolicyState,
    RouteFacts,
    Setting,
    StoreFacts,
    TrustSource,
    VaultFacts,
)
from tether.store.errors import StoreUnavailable
from tether.store.open import open_store
from tether.store.protocol import Store

__all__ = ["WINDOW_SECONDS", "gather", "read_audit", "read_settings", "remote_settings"]

PAGE = 5000
WINDOW_SECONDS = 86_400
MAX_EXAMPLES, MAX_ALERTS = 5, 10
#: configuration shown in the report; [postgres] and [redis] are left out (their values hold credentials)
SECTIONS = (
    "server",
    "tokens",
    "dpop",
    "tasks",
    "identity",
    "admin",
    "dev",
    "policy",
    "gateway",
    "monitor",
    "metrics",
    "logging",
    "audit",
)
TOP_LEVEL = ("issuer", "store", "data_dir")
HIDDEN = {("monitor", "webhook_url")}  # may carry a token in its path or query
#: the audit kinds of held requests (``rules.approval``), counted within the window
APPROVAL_KINDS = frozenset({"approval.requested", "approval.approved", "approval.denied", "approval.expired"})


def _raw_toml(config: Config) -> Mapping[str, Any]:
    if config.path is None:
        return {}
    try:
        return tomllib.loads(Path(config.path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


def read_settings(config: Config, env: Mapping[str, str]) -> dict[str, Setting]:
    """The shown configuration values, each with its source: ``env TETHER_…``, the config file, or ``default``."""
    raw = _raw_toml(config)
    file_name = Path(config.path).name if config.path else "tether.toml"
    out: dict[str, Setting] = {}

    def source(section: str, key: str) -> str:
        dotted = f"{section}.{key}" if section else key
        env_name = "TETHER_" + dotted.upper().replace(".", "_")
        if env_name in env:
            return f"env {env_name}"
        table = raw if not section else raw.get(section, {})
        return f"{file_name} {dotted}" if isinstance(table, dict) and key in table else "default"

    values = config.values
    for key in TOP_LEVEL:
        out[key] = Setting(values[""][key], source("", key))
    for section in SECTIONS:
        for key, value in values[section].items():
            if (section, key) not in HIDDEN:
                out[f"{section}.{key}"] = Setting(value, source(section, key))
    out["monitor.webhook"] = Setting(bool(config.monitor.webhook_url), source("monitor", "webhook_url"))
    return out


def _detector_sources(config: Config) -> dict[str, str]:
    monitor = _raw_toml(config).get("monitor", {})
    tables = monitor.get("detectors", {}) if isinstance(monitor, dict) else {}
    file_name = Path(config.path).name if config.path else "tether.toml"
    return {d.name: f"{file_name} [monitor.detectors.{d.name}]" if d.name in tables else "default" for d in config.detectors}


def _trust_sources(config: Config) -> tuple[TrustSource, ...]:
    sources = [
        TrustSource("spiffe", d.name, d.bundle_url or d.bundle_endpoint or str(d.bundle_file)) for d in config.trust_domains
    ]
    for issuer in config.oidc_issuers:
        location = issuer.jwks_uri or (str(issuer.jwks_file) if issuer.jwks_file else f"{issuer.issuer} (discovery)")
        sources.append(TrustSource("oidc", issuer.issuer, location, issuer.algorithms))
    return tuple(sources)


def _routes(config: Config) -> tuple[RouteFacts, ...]:
    return tuple(
        RouteFacts(
            name=r.name,
            owner=r.owner,
            justification=r.justification,
            expires=r.expires,
            upstream=r.upstream,
            secret=r.secret,
            allow=tuple(str(rule) for rule in r.allow),
            max_requests_per_task=r.max_requests_per_task,
            max_requests_per_second=r.max_requests_per_second,
            max_session_seconds=r.max_session_seconds,
            vault_entries=r.oauth.vault_entries() if r.oauth is not None else (r.secret,),
        )
        for r in config.routes
    )


def _pin_facts(config: Config, route: str) -> PinFacts:
    try:
        pins = load_pins(config, route)
    except PinsTampered as exc:
        return PinFacts("refused", problem=str(exc))
    except (ConfigError, SealError, OSError) as exc:
        return PinFacts("unverified", problem=f"the master key could not be read ({type(exc).__name__})")
    if pins is None:
        return PinFacts("missing")
    return PinFacts("valid", tuple(sorted(pins.tools)), pins.pinned_at, pins.pinned_by)


def _mcp_routes(config: Config) -> tuple[McpRouteFacts, ...]:
    return tuple(
        McpRouteFacts(
            name=r.name,
            owner=r.owner,
            justification=r.justification,
            expires=r.expires,
            upstream=Path(r.command[0]).name if r.stdio else r.url.split("?", 1)[0],
            transport="stdio" if r.stdio else "http",
            tools=r.tools,
            secret=r.secret,
            pins=_pin_facts(config, r.name),
            max_calls_per_task=r.max_calls_per_task,
        )
        for r in config.mcp_routes
    )


def _file(path: Path) -> FileFacts:
    try:
        return FileFacts(str(path), stat.S_IMODE(path.stat().st_mode))
    except OSError:
        return FileFacts(str(path), None)


def _policy(config: Config, loaded: tuple[tuple[str, float], ...] | None) -> PolicyState:
    directory = str(config.policy_dir)
    try:
        version = load_directory(config.policy_dir)
    except PolicyLoadError as exc:
        return PolicyState(directory, None, problems=tuple(str(p) for p in exc.problems), loaded=loaded)
    policies = tuple(version.policies)
    return PolicyState(directory, version.version, policies, loaded=loaded)


class _AuditTally:
    """Running counts over the audit log, one page at a time."""

    def __init__(self, now: float, window: int) -> None:
        self.since = now - window
        self.window = window
        self.records = self.checkpoints = self.issued = self.unbound = self.alerts_in_window = 0
        self.last_seq: int | None = None
        self.last_checkpoint: int | None = None
        self.broken: int | None = None
        self.uncovered = 0
        self.oldest_uncovered: float | None = None
        self.prev = GENESIS
        self.examples: list[str] = []
        self.refusals: Counter[str] = Counter()
        self.severities: Counter[str] = Counter()
        self.alerts: deque[AlertFacts] = deque(maxlen=MAX_ALERTS)
        self.mcp_drift: Counter[str] = Counter()
        self.mcp_drift_tools: dict[str, set[str]] = {}
        self.approvals: Counter[str] = Counter()

    def page(self, records: list[AuditRecord]) -> None:
        if self.broken is None:
            if self.last_seq is not None and records[0].seq != self.last_seq + 1:
                self.broken = records[0].seq
            else:
                self.broken = first_broken([r.as_json() for r in records], start_prev=self.prev)
            self.prev = records[-1].hash
        for record in records:
            self.record(record)
        self.last_seq = records[-1].seq

    def record(self, record: AuditRecord) -> None:
        self.records += 1
        if record.kind == "token.issued" and record.outcome == "ok":
            self.issued += 1
            # bound to a DPoP key (RFC 9449 cnf.jkt) or a client certificate (RFC 8705 cnf.x5t#S256)
            if not (record.detail.get("jkt") or record.detail.get("x5t")):
                self.unbound += 1
                if len(self.examples) < MAX_EXAMPLES:
                    self.examples.append(str(record.jti))
        if record.kind == CHECKPOINT_KIND:
            self.checkpoints += 1
            self.last_checkpoint = record.seq
            self.uncovered, self.oldest_uncovered = 0, None
        else:
            self.uncovered += 1
            self.oldest_uncovered = record.ts if self.oldest_uncovered is None else self.oldest_uncovered
        if record.ts < self.since:
            return
        if record.outcome == "refused":
            self.refusals[f"{record.kind} {record.error or ''}".strip()] += 1
        if record.kind in APPROVAL_KINDS:
            self.approvals[record.kind.split(".", 1)[1]] += 1
        elif record.kind == "token.issued" and record.outcome == "ok" and record.detail.get("approval"):
            self.approvals["issued"] += 1
        if record.kind == "mcp.drift":
            route = str(record.detail.get("route") or "?")[:100]
            self.mcp_drift[route] += 1
            tool = record.detail.get("tool")
            tools = self.mcp_drift_tools.setdefault(route, set())
            if isinstance(tool, str) and len(tools) < MAX_EXAMPLES:
                tools.add(tool[:100])
        if record.kind == "alert.raised":
            severity = str(record.detail.get("severity", "medium"))
            severity = severity if severity in SEVERITIES else "medium"
            detector = str(record.detail.get("detector") or record.detail.get("name") or "unknown")
            self.alerts_in_window += 1
            self.severities[severity] += 1
            self.alerts.append(AlertFacts(record.seq, record.ts, detector, severity, record.principal, record.task))

    def facts(self) -> AuditFacts:
        return AuditFacts(
            records=self.records,
            last_seq=self.last_seq,
            first_broken=self.broken,
            checkpoints=self.checkpoints,
            last_checkpoint_seq=self.last_checkpoint,
            tokens_issued=self.issued,
            unbound_tokens=self.unbound,
            unbound_examples=tuple(self.examples),
            window_seconds=self.window,
            refusals=dict(self.refusals),
            alerts=tuple(self.alerts),
            alerts_in_window=self.alerts_in_window,
            alert_severities=dict(self.severities),
            uncovered=self.uncovered,
            oldest_uncovered_ts=self.oldest_uncovered,
            mcp_drift=dict(self.mcp_drift),
            mcp_drift_tools={route: tuple(sorted(tools)) for route, tools in self.mcp_drift_tools.items()},
            approvals=dict(self.approvals),
        )


async def read_audit(store: Store, *, now: float, window: int = WINDOW_SECONDS) -> AuditFacts:
    """One pass over the whole log: chain verification and the counts the controls need."""
    tally = _AuditTally(now, window)
    after = 0
    while True:
        records = await store.audit_records(after=after, limit=PAGE)
        if not records:
            return tally.facts()
        tally.page(records)
        after = records[-1].seq


async def _store(config: Config, now: float) -> tuple[StoreFacts, tuple[tuple[str, float], ...] | None]:
    kind = config.store
    if kind == "sqlite" and not (config.data_dir / "tether.db").exists():
        return StoreFacts(kind, error=f"no database at {config.data_dir / 'tether.db'}; run tether init"), None
    try:
        store = await open_store(config, migrate=False)
    except (StoreUnavailable, OSError) as exc:
        return StoreFacts(kind, error=str(exc) or type(exc).__name__), None
    try:
        keys = await store.signing_keys(now=now)
        vault = await store.vault_list()
        loaded = tuple(await store.policy_versions(limit=20))
        audit = await read_audit(store, now=now)
    except (StoreUnavailable, OSError) as exc:
        return StoreFacts(kind, error=str(exc) or type(exc).__name__), None
    finally:
        await store.aclose()
    facts = StoreFacts(
        kind,
        signing_keys=tuple(KeyFacts(k.kid, k.alg, k.created_at, k.retired_at, k.not_after) for k in keys),
        vault=tuple(VaultFacts(v.name, v.version, v.created_at, v.updated_at) for v in vault),
        audit=audit,
    )
    return facts, loaded


def remote_settings(body: Mapping[str, Any]) -> dict[str, Setting]:
    """The running STS's ``GET /settings`` answer as report settings (what it runs with, and from where)."""
    raw = body.get("settings")
    if not isinstance(raw, dict):
        raise ValueError("the STS's /settings answer holds no settings")
    out = {key: Setting(item["value"], f"running STS ({item.get('source', 'default')})") for key, item in raw.items()
           if isinstance(item, dict) and "value" in item}  # fmt: skip
    hook = out.pop("monitor.webhook_url", None)
    if hook is not None:
        out["monitor.webhook"] = Setting(bool(hook.value), hook.source)
    return out


async def gather(
    config: Config,
    *,
    now: float,
    env: Mapping[str, str] | None = None,
    lag: LagFacts | None = None,
    running: tuple[Mapping[str, Setting], str] | None = None,
) -> Evidence:
    """The snapshot of ``config``'s deployment at ``now`` (``lag`` from ``tether.report.measure`` if measured).

    ``running`` is the settings the running STS reports and a note naming it; without it
    the settings are read from the file and this process's environment, which may not be the
    server's (``settings_from`` says which).
    """
    env = os.environ if env is None else env
    store, loaded = await _store(config, now)
    local = read_settings(config, env)
    remote, settings_from = (
        running if running is not None and running[0] else ({}, running[1] if running else "the configuration file")
    )
    return Evidence(
        now=now,
        config_path=str(config.path) if config.path else "(defaults)",
        settings_from=settings_from,
        settings={key: remote.get(key, setting) for key, setting in local.items()},
        trust_sources=_trust_sources(config),
        routes=_routes(config),
        detectors=config.detectors,
        policy=_policy(config, loaded),
        master_key=None if env.get(MASTER_KEY_ENV) else _file(config.master_key_file),
        data_dir=_file(config.data_dir),
        store=store,
        lag=lag,
        detector_sources=_detector_sources(config),
        mcp_routes=_mcp_routes(config),
        approvals=approval_facts(config),
    )
