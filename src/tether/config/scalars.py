"""Reading and checking the scalar keys of ``tether.toml``, with ``TETHER_*`` overrides.

A scalar ``section.key`` is overridden by ``TETHER_SECTION_KEY`` (``tokens.hop_ttl`` →
``TETHER_TOKENS_HOP_TTL``; top-level ``store`` → ``TETHER_STORE``). Every problem is a
``ConfigError(key, problem)`` naming the dotted key.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from tether.config.console import check_console
from tether.config.sections import SECTIONS, scalar_kinds
from tether.errors import ConfigError, OAuthError
from tether.rules.jws import ASYMMETRIC_ALGS
from tether.rules.principal import is_principal
from tether.rules.scope import parse_scope

__all__ = ["SCALARS", "check_outputs", "check_scalars", "http_url", "issuer_uri", "read_scalars", "typed"]

#: section → key → (kind, default), from the dataclasses in ``tether.config.sections``
SCALARS: dict[str, dict[str, tuple[type, Any]]] = {name: scalar_kinds(cls) for name, cls in SECTIONS.items()}


def typed(key: str, value: Any, kind: type) -> Any:
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(key, "must be an integer")
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(key, "must be true or false")
    if kind is str and not isinstance(value, str):
        raise ConfigError(key, "must be a string")
    if kind is list and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
        raise ConfigError(key, "must be a list of strings")
    return value


def _from_env(key: str, raw: str, kind: type) -> Any:
    if kind is int:
        try:
            return int(raw)
        except ValueError as exc:
            raise ConfigError(key, "must be an integer") from exc
    if kind is bool:
        if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ConfigError(key, "must be true or false")
        return raw.lower() in ("1", "true", "yes")
    if kind is list:
        return [v for v in raw.replace(",", " ").split() if v]
    return raw


def read_scalars(
    data: Mapping[str, Any], env: Mapping[str, str], nested: Collection[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Every section's values (typed, defaults filled in) and where each came from (dotted key → source).

    ``nested`` names the tables a feature parses inside a section (``gateway.routes``): not unknown keys.
    """
    values: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    for section, keys in SCALARS.items():
        raw = _table(data, section)
        if not isinstance(raw, dict):
            raise ConfigError(section, "must be a table")
        out: dict[str, Any] = {}
        for k, (kind, default) in keys.items():
            dotted = k if section == "" else f"{section}.{k}"
            env_name = "TETHER_" + dotted.upper().replace(".", "_")
            if env_name in env:
                out[k] = _from_env(dotted, env[env_name], kind)
                sources[dotted] = f"env {env_name}"
            else:
                out[k] = typed(dotted, raw.get(k, default), kind)
                sources[dotted] = "file" if k in raw else "default"
        if section:
            for k in raw:
                if k not in keys and f"{section}.{k}" not in nested and f"{section}.{k}" not in SCALARS:
                    raise ConfigError(f"{section}.{k}", "unknown key")
        values[section] = out
    return values, sources


def _table(data: Mapping[str, Any], section: str) -> Any:
    """The table of ``section`` (``console.oidc`` is ``[console.oidc]``, inside ``[console]``)."""
    if section == "":
        return data
    raw: Any = data
    for part in section.split("."):
        raw = raw.get(part, {}) if isinstance(raw, dict) else raw
    return raw


def check_scalars(values: Mapping[str, Mapping[str, Any]]) -> None:
    """Ranges and cross-checks between scalars (the ones that need no table)."""
    issuer_uri(values[""]["issuer"])
    for section in ("tokens", "dpop", "tasks", "identity", "monitor", "audit", "revocations", "approvals"):
        for k, v in values[section].items():
            if isinstance(v, int) and not isinstance(v, bool) and v <= 0 and k not in ("clock_skew", "refusal_interval"):
                raise ConfigError(f"{section}.{k}", "must be a positive integer")
    if values["audit"]["refusal_interval"] < 0:
        raise ConfigError("audit.refusal_interval", "must be 0 (audit every refusal) or a number of seconds")
    if not 0 <= values["tokens"]["clock_skew"] <= 120:
        raise ConfigError("tokens.clock_skew", "must be between 0 and 120 seconds")
    if values["tokens"]["hop_ttl"] > values["tasks"]["max_duration"]:
        raise ConfigError("tokens.hop_ttl", "must not exceed tasks.max_duration")
    for alg in values["dpop"]["algorithms"]:
        if alg not in ASYMMETRIC_ALGS:
            raise ConfigError("dpop.algorithms", f"`{alg}` is not an asymmetric signature algorithm")
    if values["policy"]["mode"] not in ("enforce", "shadow"):
        raise ConfigError("policy.mode", "must be `enforce` or `shadow`")
    if values[""]["store"] not in ("sqlite", "postgres"):
        raise ConfigError("store", "must be `sqlite` or `postgres`")
    if not 0 < values["server"]["port"] < 65536:
        raise ConfigError("server.port", "must be a port number")
    try:
        parse_scope(values["admin"]["scope"])
    except OAuthError as exc:
        raise ConfigError("admin.scope", "must be a scope") from exc
    for key in ("admin.principals", "revocations.subscribers"):
        section, name = key.split(".")
        for principal in values[section][name]:
            if not is_principal(principal):
                raise ConfigError(key, f"`{principal}` is not a principal")


def check_outputs(values: Mapping[str, Mapping[str, Any]]) -> None:
    """Where tether's logs and alerts go: checked after the tables, as they always have been."""
    if values["logging"]["format"] not in ("text", "json"):
        raise ConfigError("logging.format", "must be `text` or `json`")
    if values["logging"]["level"] not in ("debug", "info", "warning", "error"):
        raise ConfigError("logging.level", "must be one of debug, info, warning, error")
    if values["monitor"]["webhook_url"]:
        http_url(values["monitor"]["webhook_url"], "monitor.webhook_url")
    check_approvals(values["approvals"])
    check_console(values["console"], values["console.oidc"], uri=issuer_uri)


def issuer_uri(value: str, key: str = "issuer") -> str:
    bad_chars = any(not "\x21" <= c <= "\x7e" for c in value)
    if bad_chars or not value.startswith(("http://", "https://")) or value.endswith("/") or "?" in value or "#" in value:
        raise ConfigError(key, "must be an http(s) url without spaces, a trailing slash, query or fragment")
    if not value.split("://", 1)[1]:
        raise ConfigError(key, "must name a host")
    return value


def http_url(value: Any, key: str) -> str:
    text = typed(key, value, str)
    if not text.startswith(("http://", "https://")) or any(not "\x21" <= c <= "\x7e" for c in text):
        raise ConfigError(key, "must be an http(s) url")
    return str(text)


def check_approvals(values: Mapping[str, Any]) -> None:
    """``[approvals]``: URLs, the provider's principal template and algorithms."""
    for key in ("webhook_url", "public_url", "jwks_uri"):
        if values[key]:
            http_url(values[key], f"approvals.{key}")
    if values["issuer"]:
        issuer_uri(values["issuer"], "approvals.issuer")
        if "{/" not in values["principal"]:
            raise ConfigError("approvals.principal", "must name a claim, e.g. `user:{/email}`")
    for alg in values["algorithms"]:
        if alg not in ASYMMETRIC_ALGS:
            raise ConfigError("approvals.algorithms", f"`{alg}` is not an asymmetric signature algorithm")
    if values["interval"] > values["ttl"]:
        raise ConfigError("approvals.interval", "must not exceed approvals.ttl")
