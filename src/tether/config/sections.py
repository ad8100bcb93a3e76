"""The scalar sections of ``tether.toml``, one frozen dataclass each: every key with its type and default.

The field list is the schema: ``tether.config.scalars`` reads and validates each field
(``[section] key``, overridden by ``TETHER_SECTION_KEY``) and refuses any other key.
``[tasks]`` is ``tether.rules.task.TaskLimits``, the server maxima and defaults themselves.
Lists of strings are tuples here, so a loaded ``Config`` cannot be changed in place.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields
from typing import Any

from tether.config.console import ConsoleOidcSettings, ConsoleSettings
from tether.rules.dpop import DEFAULT_DPOP_ALGS
from tether.rules.task import TaskLimits

__all__ = [
    "SECTIONS",
    "AdminSettings",
    "ApprovalSettings",
    "AuditSettings",
    "DevSettings",
    "DpopSettings",
    "GatewaySettings",
    "GeneralSettings",
    "IdentitySettings",
    "LoggingSettings",
    "MetricsSettings",
    "MonitorSettings",
    "PolicySettings",
    "PostgresSettings",
    "RedisSettings",
    "RevocationsSettings",
    "ServerSettings",
    "TlsSettings",
    "TokenSettings",
    "scalar_kinds",
]


@dataclass(frozen=True)
class GeneralSettings:
    """The top-level keys (no section); paths are resolved by ``Config``."""

    issuer: str = "http://127.0.0.1:8700"
    data_dir: str = ".tether"
    store: str = "sqlite"
    master_key_file: str = ""


@dataclass(frozen=True)
class ServerSettings:
    """``[server]``: where the STS listens, and how many requests it serves at once."""

    host: str = "127.0.0.1"
    port: int = 8700
    max_inflight: int = 64


@dataclass(frozen=True)
class TlsSettings:
    """``[tls]``: HTTPS for the STS and the gateway, client certificates (RFC 8705) and trusted terminators (RFC 9440).

    With ``certificate`` and ``key`` set (``tether init --tls`` writes both), ``tether serve
    --tls`` and ``tether gateway --tls`` speak HTTPS and ask for a client certificate, which
    must chain to a trust domain's ``x509_bundle_file`` or be a ``[[clients]]`` registered
    ``certificate``. ``trusted_proxies`` lists the addresses (CIDRs) of TLS terminators whose
    ``Client-Cert`` header is believed; from anyone else it is removed. Empty: no one.
    """

    certificate: str = ""
    key: str = ""
    trusted_proxies: tuple[str, ...] = ()
    #: the CA certificates (PEM) tether's own clients — the CLI, the gateway — check the STS's
    #: certificate against, besides the system's (``tether init --tls``: the dev CA)
    ca_file: str = ""


@dataclass(frozen=True)
class TokenSettings:
    """``[tokens]``: token lifetimes (seconds) and the clock skew allowed when checking them."""

    #: workload JWT → session token (never beyond the task or the JWT)
    session_ttl: int = 900
    #: session token → hop token for one audience
    hop_ttl: int = 300
    admin_ttl: int = 300
    #: accepted clock difference for ``iat``/``nbf``/``exp`` checks (0–120)
    clock_skew: int = 10


@dataclass(frozen=True)
class DpopSettings:
    """``[dpop]``: proof age, server nonces (RFC 9449 §8) and the accepted proof algorithms."""

    #: oldest acceptable proof ``iat``
    max_age: int = 60
    nonce: bool = True
    nonce_ttl: int = 120
    algorithms: tuple[str, ...] = DEFAULT_DPOP_ALGS


@dataclass(frozen=True)
class IdentitySettings:
    """``[identity]``: the longest workload JWT accepted, and how often key sets are refreshed."""

    #: workload JWTs valid for longer than this are refused
    max_lifetime: int = 3600
    refresh: int = 300


@dataclass(frozen=True)
class AdminSettings:
    """``[admin]``: the principals that may administer tether, and the scope they are given."""

    principals: tuple[str, ...] = ("spiffe://tether.local/admin",)
    scope: str = "tether:admin"


@dataclass(frozen=True)
class DevSettings:
    """``[dev]``: the local trust domain ``tether init`` creates (empty: the default one)."""

    trust_domain: str = ""


@dataclass(frozen=True)
class PolicySettings:
    """``[policy]``: the Cedar policy directory, enforce or shadow, and whether resources may fetch it."""

    dir: str = "policies"
    mode: str = "enforce"
    publish: bool = True


@dataclass(frozen=True)
class GatewaySettings:
    """``[gateway]``: the gateway's URL and listen address, suspension, secret caching and its own identity."""

    #: the base of every route's audience, ``{url}/routes/{name}``
    url: str = "http://127.0.0.1:8710"
    host: str = "127.0.0.1"
    port: int = 8710
    #: a task refused this often within ``refusal_window`` seconds is suspended
    suspend_after_refusals: int = 10
    refusal_window: int = 60
    suspend_on_cap: bool = True
    #: seconds without news from the revocation feed before every call is refused
    stale_after: int = 10
    secret_cache_seconds: int = 30
    #: the gateway's workload JWT (a JWT-SVID file, re-read as it rotates; relative to the config
    #: file's directory), its ``actor_token`` when it exchanges an agent's token for a
    #: ``credential = "hop"`` MCP upstream (RFC 8693 §2.1); "": the SPIFFE Workload API when
    #: ``SPIFFE_ENDPOINT_SOCKET`` is set
    identity_file: str = ""


@dataclass(frozen=True)
class PostgresSettings:
    """``[postgres]``: the durable store when ``store = "postgres"``."""

    dsn: str = ""


@dataclass(frozen=True)
class RedisSettings:
    """``[redis]``: replay cache, counters and notifications beside PostgreSQL."""

    url: str = ""
    prefix: str = "tether"


@dataclass(frozen=True)
class MonitorSettings:
    """``[monitor]``: the audit-stream monitor: its pace, webhook and the history it replays at start."""

    enabled: bool = True
    #: seconds between reads of the audit log
    interval: int = 1
    webhook_url: str = ""
    webhook_timeout: int = 5
    webhook_retries: int = 3
    #: seconds a risk raise lasts (Cedar ``context.risk``)
    risk_ttl: int = 300
    #: the window replayed into the detectors at start (``tether.monitor.runner``):
    #: enough for every default learning period
    history_records: int = 50_000
    history_seconds: int = 86_400


@dataclass(frozen=True)
class MetricsSettings:
    """``[metrics]``: whether ``/metrics`` is served."""

    enabled: bool = True


@dataclass(frozen=True)
class LoggingSettings:
    """``[logging]``: text or JSON lines, and the level."""

    format: str = "text"
    level: str = "info"


@dataclass(frozen=True)
class AuditSettings:
    """``[audit]``: how often checkpoints are signed, and how refusals nobody proved are counted."""

    #: sign a checkpoint after this many new records, or after ``checkpoint_seconds`` with at least one
    checkpoint_every: int = 1000
    checkpoint_seconds: int = 60
    #: unattributed refusals: one record per source, kind and error each this many seconds (0: every one)
    refusal_interval: int = 60
    refusal_buckets: int = 1000


@dataclass(frozen=True)
class RevocationsSettings:
    """``[revocations]``: who may follow the revocation feed besides admins and resources, and its caps."""

    subscribers: tuple[str, ...] = ()
    #: open feed streams per STS process, and per authenticated principal
    max_streams: int = 1000
    max_streams_per_caller: int = 20
    stream_seconds: int = 300


@dataclass(frozen=True)
class ApprovalSettings:
    """``[approvals]``: requests a Cedar ``@approval`` permit holds for a human's yes (``rules.approval``).

    Approvers are humans proved by the organisation's OIDC provider (``issuer``; keys from
    discovery, ``jwks_uri`` or ``jwks_file``), with ``principal`` rendered from its claims and
    groups from ``[[approver_groups]]`` (by principal, or by the provider's ``group_claim``)."""

    #: seconds a held request waits for a decision (RFC 8628 ``expires_in``); an approval's default window
    ttl: int = 300
    #: the polling interval an agent is told (RFC 8628 §3.5 ``interval``)
    interval: int = 2
    #: pending approvals per task (a further held request is refused, never queued)
    max_pending: int = 16
    #: the most tokens, and the longest window in seconds, an approver may grant at once
    max_uses: int = 20
    max_window: int = 3600
    #: seconds a webhook's one-time approve/deny link stays valid (APR-04)
    link_ttl: int = 900
    #: base URL of those links (default: the issuer)
    public_url: str = ""
    webhook_url: str = ""
    webhook_timeout: int = 5
    #: argument fields shown to approvers as ``[redacted]`` (any depth, case-insensitive; APR-05)
    redact: tuple[str, ...] = ("password", "secret", "token", "api_key", "authorization", "card_number", "cvv", "ssn")
    #: audience tags ``tether report`` counts as high-risk: each should be held for approval
    high_risk_tags: tuple[str, ...] = ("payments",)
    issuer: str = ""
    audience: str = "tether-approvals"
    principal: str = "user:{/email}"
    group_claim: str = "groups"
    jwks_uri: str = ""
    jwks_file: str = ""
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")


#: ``tether.toml`` section (``""``: the top level) → its dataclass, in the order they are read
SECTIONS: dict[str, type[Any]] = {
    "": GeneralSettings,
    "server": ServerSettings,
    "tls": TlsSettings,
    "tokens": TokenSettings,
    "dpop": DpopSettings,
    "tasks": TaskLimits,
    "identity": IdentitySettings,
    "admin": AdminSettings,
    "dev": DevSettings,
    "policy": PolicySettings,
    "gateway": GatewaySettings,
    "postgres": PostgresSettings,
    "redis": RedisSettings,
    "monitor": MonitorSettings,
    "metrics": MetricsSettings,
    "logging": LoggingSettings,
    "audit": AuditSettings,
    "revocations": RevocationsSettings,
    "approvals": ApprovalSettings,
    "console": ConsoleSettings,
    "console.oidc": ConsoleOidcSettings,
}

_KINDS: dict[Any, type] = {int: int, bool: bool, str: str, tuple[str, ...]: list}


def scalar_kinds(section: type[Any]) -> dict[str, tuple[type, Any]]:
    """Each key of a section → (``int``, ``bool``, ``str`` or ``list`` of strings, its default)."""
    hints = typing.get_type_hints(section)
    return {
        f.name: (_KINDS[hints[f.name]], list(f.default) if isinstance(f.default, tuple) else f.default) for f in fields(section)
    }
