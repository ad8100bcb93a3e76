"""Hand-built evidence snapshots: ``healthy()`` passes every control; tests change one thing at a time."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from tether.monitor.settings import parse_detectors
from tether.report.model import (
    AuditFacts,
    Evidence,
    FileFacts,
    KeyFacts,
    PolicyFacts,
    PolicyState,
    Report,
    Result,
    RouteFacts,
    Setting,
    StoreFacts,
    TrustSource,
    VaultFacts,
)

NOW = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
TODAY = dt.datetime.fromtimestamp(NOW, dt.UTC).date()
DAY = 86_400

SETTINGS: dict[str, Any] = {
    "issuer": "https://sts.example.org",
    "store": "sqlite",
    "data_dir": ".tether",
    "tokens.session_ttl": 900,
    "tokens.hop_ttl": 300,
    "tokens.admin_ttl": 300,
    "tokens.clock_skew": 10,
    "dpop.nonce": True,
    "dpop.nonce_ttl": 120,
    "dpop.max_age": 60,
    "dpop.algorithms": ["ES256", "EdDSA"],
    "tasks.max_duration": 900,
    "tasks.max_depth": 5,
    "tasks.max_tokens": 10_000,
    "tasks.default_max_depth": 3,
    "tasks.default_max_tokens": 100,
    "identity.max_lifetime": 3600,
    "admin.principals": ["spiffe://prod.example.org/orchestrator"],
    "admin.scope": "tether:admin",
    "dev.trust_domain": "",
    "policy.mode": "enforce",
    "policy.publish": True,
    "gateway.url": "https://gateway.example.org",
    "gateway.stale_after": 10,
    "monitor.enabled": True,
    "monitor.interval": 1,
    "monitor.webhook": False,
    "metrics.enabled": True,
    "audit.checkpoint_every": 1000,
    "audit.checkpoint_seconds": 60,
}


def route(name: str = "legacy-crm", *, days: int = 90, owner: str = "team-legacy", vault_name: str = "crm-key") -> RouteFacts:
    return RouteFacts(name=name, owner=owner, justification="the vendor API only takes a static key",
                      expires=TODAY + dt.timedelta(days=days), upstream="https://crm.example", secret=vault_name,
                      allow=("GET /v1/items",), max_requests_per_task=100, max_requests_per_second=10,
                      max_session_seconds=900)  # fmt: skip


def audit(**changes: Any) -> AuditFacts:
    base = AuditFacts(records=40, last_seq=40, first_broken=None, checkpoints=2, last_checkpoint_seq=38, uncovered=2,
                      oldest_uncovered_ts=NOW - 5,
                      tokens_issued=12, unbound_tokens=0, unbound_examples=(), window_seconds=DAY,
                      refusals={"token.refused invalid_scope": 2})  # fmt: skip
    return dataclasses.replace(base, **changes)


def store(**changes: Any) -> StoreFacts:
    base = StoreFacts(
        "sqlite",
        signing_keys=(KeyFacts("kid-1", "ES256", int(NOW - 10 * DAY), None, None),),
        vault=(VaultFacts("crm-key", 2, NOW - 200 * DAY, NOW - 10 * DAY),),
        audit=audit(),
    )
    return dataclasses.replace(base, **changes)


def policy(**changes: Any) -> PolicyState:
    base = PolicyState(
        "/srv/tether/policies",
        "0123456789abcdef",
        (PolicyFacts("exchange-key-bound", "00-defaults.cedar", 15, "permit", False),
         PolicyFacts("deny-high-risk", "00-defaults.cedar", 37, "forbid", False)),
        loaded=(("0123456789abcdef", NOW - DAY),),
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def healthy(settings: dict[str, Any] | None = None, detectors: dict[str, Any] | None = None, **changes: Any) -> Evidence:
    """A production-like deployment that passes every control; ``settings`` overrides configuration values."""
    values = {**SETTINGS, **(settings or {})}
    base = Evidence(
        now=NOW,
        config_path="/srv/tether/tether.toml",
        settings={k: Setting(v, "tether.toml") for k, v in values.items()},
        trust_sources=(TrustSource("spiffe", "prod.example.org", "https://spire.example.org/bundle"),),
        routes=(route(),),
        detectors=parse_detectors(detectors),
        policy=policy(),
        master_key=FileFacts("/srv/tether/.tether/master.key", 0o600),
        data_dir=FileFacts("/srv/tether/.tether", 0o700),
        store=store(),
    )
    return dataclasses.replace(base, **changes)


def only(report: Report, control: str, subject: str | None = None) -> Result:
    """The one result of ``control`` (for ``subject``)."""
    found = [r for r in report.results if r.control == control and (subject is None or r.subject == subject)]
    assert len(found) == 1, [r.id for r in found]
    return found[0]
