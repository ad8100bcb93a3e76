"""The settings an STS actually runs with, and where each came from.

``TETHER_*`` variables override ``tether.toml``, and an override that weakens the STS must not
go unseen: the STS logs each at start (security-relevant ones as a warning, audited as
``config.override``), and an admin reads the effective settings with their sources at
``GET /settings``, which ``tether report`` uses. Values that carry credentials are never shown.
"""

from __future__ import annotations

from typing import Any

from tether.audit.chain import AuditEvent
from tether.config import Config

__all__ = ["HIDDEN", "OPERATIONAL", "effective_settings", "override_event", "overrides_shown", "security_relevant"]

#: settings whose values may carry credentials (a DSN's password, a token in a webhook URL)
HIDDEN = frozenset({"postgres.dsn", "redis.url", "monitor.webhook_url", "master_key_file"})


#: settings that change where and how loudly tether runs, not what it allows: an override of
#: one is logged at info and shown in ``GET /settings``; every other override is a warning and
#: an audited ``config.override`` record
OPERATIONAL = frozenset(
    {"server.host", "server.port", "server.max_inflight", "logging.format", "logging.level", "metrics.enabled",
     "postgres.dsn", "gateway.url", "gateway.host", "gateway.port"}
)  # fmt: skip


def security_relevant(key: str) -> bool:
    """Whether overriding ``key`` can change what the STS allows, refuses, records or trusts."""
    return key not in OPERATIONAL


def _shown(key: str, value: Any) -> Any:
    return "(hidden)" if key in HIDDEN and value else value


def effective_settings(config: Config) -> dict[str, dict[str, Any]]:
    """Every scalar setting: ``{"value", "source"}`` with source ``env TETHER_…``, ``file`` or ``default``."""
    out: dict[str, dict[str, Any]] = {}
    for section, keys in config.values.items():
        for key, value in keys.items():
            dotted = f"{section}.{key}" if section else key
            out[dotted] = {"value": _shown(dotted, value), "source": config.sources.get(dotted, "default")}
    return out


def overrides_shown(config: Config) -> dict[str, dict[str, Any]]:
    """The environment overrides: dotted key → the variable and the value it set (hidden if secret)."""
    effective = effective_settings(config)
    return {key: {"env": env, "value": effective[key]["value"]} for key, env in sorted(config.overrides.items())}


def override_event(config: Config) -> AuditEvent | None:
    """The ``config.override`` audit record of the security-relevant overrides (``None`` without any)."""
    shown = {k: v for k, v in overrides_shown(config).items() if security_relevant(k)}
    if not shown:
        return None
    return AuditEvent(kind="config.override", outcome="ok", detail={"overrides": shown})
