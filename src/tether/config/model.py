"""``Config``: one frozen, typed view of ``tether.toml`` and its ``TETHER_*`` overrides.

Each scalar section is an attribute (``config.tokens.hop_ttl``); the arrays of tables are
tuples of frozen rows. ``values`` rebuilds the plain ``section → key → value`` mapping for
code that walks every setting (the effective settings, the report).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.config.approvers import ApproverGroup
from tether.config.console import ConsoleOidcSettings, ConsoleSettings
from tether.config.federation import FederationPeer
from tether.config.identities import ClientConfig, OidcIssuerConfig, ResourceConfig, TrustDomainConfig, resolve
from tether.config.sections import (
    SECTIONS,
    AdminSettings,
    ApprovalSettings,
    AuditSettings,
    DevSettings,
    DpopSettings,
    GatewaySettings,
    GeneralSettings,
    IdentitySettings,
    LoggingSettings,
    MetricsSettings,
    MonitorSettings,
    PolicySettings,
    PostgresSettings,
    RedisSettings,
    RevocationsSettings,
    ServerSettings,
    TlsSettings,
    TokenSettings,
)
from tether.rules.namespace import Namespace
from tether.rules.task import TaskLimits

if TYPE_CHECKING:  # the features parse these tables themselves (``tether.config.register_table``)
    from tether.gateway.mcp_routes import McpRoute
    from tether.gateway.routes import GatewayRoute
    from tether.monitor.settings import DetectorSettings

__all__ = ["Config"]


@dataclass(frozen=True)
class Config:
    path: Path | None = None
    general: GeneralSettings = field(default_factory=GeneralSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    tokens: TokenSettings = field(default_factory=TokenSettings)
    dpop: DpopSettings = field(default_factory=DpopSettings)
    tasks: TaskLimits = field(default_factory=TaskLimits)
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    dev: DevSettings = field(default_factory=DevSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    postgres: PostgresSettings = field(default_factory=PostgresSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    revocations: RevocationsSettings = field(default_factory=RevocationsSettings)
    trust_domains: tuple[TrustDomainConfig, ...] = ()
    oidc_issuers: tuple[OidcIssuerConfig, ...] = ()
    clients: tuple[ClientConfig, ...] = ()
    resources: tuple[ResourceConfig, ...] = ()
    routes: tuple[GatewayRoute, ...] = ()
    mcp_routes: tuple[McpRoute, ...] = ()
    detectors: tuple[DetectorSettings, ...] = ()
    approvals: ApprovalSettings = field(default_factory=ApprovalSettings)
    approver_groups: tuple[ApproverGroup, ...] = ()
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    console_oidc: ConsoleOidcSettings = field(default_factory=ConsoleOidcSettings)
    #: ``[[federation]]``: peer trust domains whose agents are accepted within a ceiling
    federation: tuple[FederationPeer, ...] = ()
    base_dir: Path = field(default_factory=Path.cwd)
    #: each identity source's namespace of principal names (disjoint; ``tether.rules.namespace``)
    namespaces: tuple[Namespace, ...] = ()
    #: where each scalar came from: ``env TETHER_…``, ``file`` or ``default`` (dotted key → source)
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def overrides(self) -> dict[str, str]:
        """The settings an environment variable set: dotted key → variable name."""
        return {key: source[4:] for key, source in self.sources.items() if source.startswith("env ")}

    @property
    def values(self) -> dict[str, dict[str, Any]]:
        """Every scalar as ``section → key → value`` (``""``: the top level; lists as lists), a fresh copy."""
        out: dict[str, dict[str, Any]] = {}
        for section in SECTIONS:
            settings = asdict(getattr(self, (section or "general").replace(".", "_")))
            out[section] = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}
        return out

    @property
    def issuer(self) -> str:
        return self.general.issuer

    @property
    def store(self) -> str:
        """``sqlite`` or ``postgres``."""
        return self.general.store

    @property
    def data_dir(self) -> Path:
        return self.resolve(self.general.data_dir)

    @property
    def master_key_file(self) -> Path:
        configured = self.general.master_key_file
        return self.resolve(configured) if configured else self.data_dir / "master.key"

    @property
    def policy_dir(self) -> Path:
        return self.resolve(self.policy.dir)

    @property
    def admin_scope(self) -> str:
        return self.admin.scope

    def resolve(self, value: str | Path) -> Path:
        return resolve(self.base_dir, value)
