"""``tether.toml`` plus ``TETHER_*`` environment overrides → one frozen ``Config``.

Every key is declared with its type and default; an unknown key, a wrong type or an
out-of-range value is a ``ConfigError(key, problem)`` that the CLI prints as one line
and exits 2 on. A scalar ``section.key`` is overridden by ``TETHER_SECTION_KEY``
(``tokens.hop_ttl`` → ``TETHER_TOKENS_HOP_TTL``; top-level ``store`` → ``TETHER_STORE``).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.errors import ConfigError, OAuthError
from tether.filemodes import others_can_write
from tether.gateway.routes import GatewayRoute, parse_routes
from tether.identity.jwks_cache import parse_jwks
from tether.monitor.settings import HISTORY_RECORDS, HISTORY_SECONDS, DetectorSettings, parse_detectors
from tether.rules.dpop import DEFAULT_DPOP_ALGS
from tether.rules.jws import ASYMMETRIC_ALGS
from tether.rules.namespace import Namespace, collisions
from tether.rules.principal import is_principal, spiffe_trust_domain
from tether.rules.resource import check_resource_uri
from tether.rules.scope import parse_scope

__all__ = [
    "ClientConfig",
    "Config",
    "OidcIssuerConfig",
    "ResourceConfig",
    "TrustDomainConfig",
    "load_config",
    "parse_config",
]

_SCALARS: dict[str, dict[str, tuple[type, Any]]] = {
    "": {
        "issuer": (str, "http://127.0.0.1:8700"),
        "data_dir": (str, ".tether"),
        "store": (str, "sqlite"),
        "master_key_file": (str, ""),
    },
    "server": {"host": (str, "127.0.0.1"), "port": (int, 8700), "max_inflight": (int, 64)},
    "tokens": {"session_ttl": (int, 900), "hop_ttl": (int, 300), "admin_ttl": (int, 300), "clock_skew": (int, 10)},
    "dpop": {
        "max_age": (int, 60),
        "nonce": (bool, True),
        "nonce_ttl": (int, 120),
        "algorithms": (list, list(DEFAULT_DPOP_ALGS)),
    },
    "tasks": {
        "max_duration": (int, 900),
        "max_depth": (int, 5),
        "max_tokens": (int, 10_000),
        "default_max_depth": (int, 3),
        "default_max_tokens": (int, 100),
    },
    "identity": {"max_lifetime": (int, 3600), "refresh": (int, 300)},
    "admin": {"principals": (list, ["spiffe://tether.local/admin"]), "scope": (str, "tether:admin")},
    "dev": {"trust_domain": (str, "")},
    "policy": {"dir": (str, "policies"), "mode": (str, "enforce"), "publish": (bool, True)},
    "gateway": {
        "url": (str, "http://127.0.0.1:8710"),
        "host": (str, "127.0.0.1"),
        "port": (int, 8710),
        "suspend_after_refusals": (int, 10),
        "refusal_window": (int, 60),
        "suspend_on_cap": (bool, True),
        "stale_after": (int, 10),
        "secret_cache_seconds": (int, 30),
    },
    "postgres": {"dsn": (str, "")},
    "redis": {"url": (str, ""), "prefix": (str, "tether")},
    "monitor": {
        "enabled": (bool, True),
        "interval": (int, 1),
        "webhook_url": (str, ""),
        "webhook_timeout": (int, 5),
        "webhook_retries": (int, 3),
        "risk_ttl": (int, 300),
        "history_records": (int, HISTORY_RECORDS),
        "history_seconds": (int, HISTORY_SECONDS),
    },
    "metrics": {"enabled": (bool, True)},
    "logging": {"format": (str, "text"), "level": (str, "info")},
    "audit": {
        "checkpoint_every": (int, 1000),
        "checkpoint_seconds": (int, 60),
        "refusal_interval": (int, 60),
        "refusal_buckets": (int, 1000),
    },
    "revocations": {
        "subscribers": (list, []),
        "max_streams": (int, 1000),
        "max_streams_per_caller": (int, 20),
        "stream_seconds": (int, 300),
    },
}
_TABLES = {"trust_domains", "oidc_issuers", "clients", "resources"}


@dataclass(frozen=True)
class TrustDomainConfig:
    name: str
    bundle_file: Path | None
    bundle_url: str | None


@dataclass(frozen=True)
class OidcIssuerConfig:
    issuer: str
    audience: str
    principal: str
    algorithms: tuple[str, ...]
    jwks_file: Path | None = None
    jwks_uri: str | None = None


@dataclass(frozen=True)
class ClientConfig:
    """An RFC 7523 ``private_key_jwt`` client with registered public keys."""

    client_id: str
    jwks_file: Path | None
    jwks: Mapping[str, Any] | None


@dataclass(frozen=True)
class ResourceConfig:
    """A protected resource, the workloads that may act as it (the ``aud`` owners) and its policy tags."""

    uri: str
    principals: tuple[str, ...]
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    path: Path | None
    values: Mapping[str, Mapping[str, Any]]
    trust_domains: tuple[TrustDomainConfig, ...] = ()
    oidc_issuers: tuple[OidcIssuerConfig, ...] = ()
    clients: tuple[ClientConfig, ...] = ()
    resources: tuple[ResourceConfig, ...] = ()
    routes: tuple[GatewayRoute, ...] = ()
    detectors: tuple[DetectorSettings, ...] = ()
    base_dir: Path = field(default_factory=Path.cwd)
    #: each identity source's namespace of principal names (disjoint; ``tether.rules.namespace``)
    namespaces: tuple[Namespace, ...] = ()
    #: where each scalar came from: ``env TETHER_…``, ``file`` or ``default`` (dotted key → source)
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def overrides(self) -> dict[str, str]:
        """The settings an environment variable set: dotted key → variable name."""
        return {key: source[4:] for key, source in self.sources.items() if source.startswith("env ")}

    def get(self, section: str, key: str) -> Any:
        return self.values[section][key]

    @property
    def issuer(self) -> str:
        return str(self.values[""]["issuer"])

    @property
    def data_dir(self) -> Path:
        return self.resolve(self.values[""]["data_dir"])

    @property
    def master_key_file(self) -> Path:
        configured = self.values[""]["master_key_file"]
        return self.resolve(configured) if configured else self.data_dir / "master.key"

    @property
    def policy_dir(self) -> Path:
        return self.resolve(self.values["policy"]["dir"])

    @property
    def admin_scope(self) -> str:
        return str(self.values["admin"]["scope"])

    def resolve(self, value: str | Path) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path


def _typed(key: str, value: Any, kind: type) -> Any:
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


def _table(name: str, index: int, row: Any, allowed: set[str], required: set[str]) -> dict[str, Any]:
    key = f"{name}[{index}]"
    if not isinstance(row, dict):
        raise ConfigError(key, "must be a table")
    for k in row:
        if k not in allowed:
            raise ConfigError(f"{key}.{k}", "unknown key")
    for k in required:
        if k not in row:
            raise ConfigError(f"{key}.{k}", "is required")
    return row


def _check_positive(values: Mapping[str, Mapping[str, Any]]) -> None:
    for section in ("tokens", "dpop", "tasks", "identity", "monitor", "audit", "revocations"):
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


def _issuer_uri(value: str, key: str = "issuer") -> str:
    bad_chars = any(not "\x21" <= c <= "\x7e" for c in value)
    if bad_chars or not value.startswith(("http://", "https://")) or value.endswith("/") or "?" in value or "#" in value:
        raise ConfigError(key, "must be an http(s) url without spaces, a trailing slash, query or fragment")
    if not value.split("://", 1)[1]:
        raise ConfigError(key, "must name a host")
    return value


def _http_url(value: Any, key: str) -> str:
    text = _typed(key, value, str)
    if not text.startswith(("http://", "https://")) or any(not "\x21" <= c <= "\x7e" for c in text):
        raise ConfigError(key, "must be an http(s) url")
    return str(text)


def parse_config(data: Mapping[str, Any], *, path: Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Validate a parsed ``tether.toml`` document and apply environment overrides."""
    env = os.environ if env is None else env
    values: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    for section, keys in _SCALARS.items():
        raw = data if section == "" else data.get(section, {})
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
                out[k] = _typed(dotted, raw.get(k, default), kind)
                sources[dotted] = "file" if k in raw else "default"
        if section:
            for k in raw:
                if k not in keys and (section, k) not in (("gateway", "routes"), ("monitor", "detectors")):
                    raise ConfigError(f"{section}.{k}", "unknown key")
        values[section] = out
    for k in data:
        if k == "" or (k not in _SCALARS[""] and k not in _SCALARS and k not in _TABLES):
            raise ConfigError(k or '""', "unknown key")
    _issuer_uri(values[""]["issuer"])
    _check_positive(values)
    base = path.parent if path is not None else Path.cwd()
    cfg = Config(path=path, values=values, base_dir=base)

    def file_or_none(v: Any, key: str) -> Path | None:
        if v is None:
            return None
        return cfg.resolve(_typed(key, v, str))

    domains = []
    for i, raw_row in enumerate(_list(data, "trust_domains")):
        row = _table("trust_domains", i, raw_row, {"name", "bundle_file", "bundle_url"}, {"name"})
        name = _typed(f"trust_domains[{i}].name", row["name"], str)
        if spiffe_trust_domain(f"spiffe://{name}/x") != name:
            raise ConfigError(f"trust_domains[{i}].name", "must be a lower-case trust domain name")
        if ("bundle_file" in row) == ("bundle_url" in row):
            raise ConfigError(f"trust_domains[{i}]", "needs exactly one of bundle_file or bundle_url")
        url = row.get("bundle_url")
        if url is not None:
            url = _http_url(url, f"trust_domains[{i}].bundle_url")
        domains.append(TrustDomainConfig(name, file_or_none(row.get("bundle_file"), f"trust_domains[{i}].bundle_file"), url))
    issuers = []
    for i, raw_row in enumerate(_list(data, "oidc_issuers")):
        row = _table(
            "oidc_issuers",
            i,
            raw_row,
            {"issuer", "audience", "principal", "algorithms", "jwks_file", "jwks_uri"},
            {"issuer", "principal"},
        )
        issuer = _issuer_uri(_typed(f"oidc_issuers[{i}].issuer", row["issuer"], str), f"oidc_issuers[{i}].issuer")
        principal = _typed(f"oidc_issuers[{i}].principal", row["principal"], str)
        if principal.lower().startswith("spiffe:") or "{" not in principal or principal.startswith("{"):
            raise ConfigError(
                f"oidc_issuers[{i}].principal", "must be a template with a literal prefix such as `k8s:{/sub}`, not a spiffe id"
            )
        algs = tuple(_typed(f"oidc_issuers[{i}].algorithms", row.get("algorithms", ["RS256", "ES256"]), list))
        if not algs or any(a not in ASYMMETRIC_ALGS for a in algs):
            raise ConfigError(f"oidc_issuers[{i}].algorithms", "must list asymmetric signature algorithms")
        issuers.append(
            OidcIssuerConfig(
                issuer=issuer,
                audience=_typed(f"oidc_issuers[{i}].audience", row.get("audience", values[""]["issuer"]), str),
                principal=principal,
                algorithms=algs,
                jwks_file=file_or_none(row.get("jwks_file"), f"oidc_issuers[{i}].jwks_file"),
                jwks_uri=_http_url(row["jwks_uri"], f"oidc_issuers[{i}].jwks_uri") if "jwks_uri" in row else None,
            )
        )
    clients = []
    for i, raw_row in enumerate(_list(data, "clients")):
        row = _table("clients", i, raw_row, {"client_id", "jwks_file", "jwks"}, {"client_id"})
        client_id = _typed(f"clients[{i}].client_id", row["client_id"], str)
        if not is_principal(client_id):
            raise ConfigError(f"clients[{i}].client_id", "must be a principal such as a spiffe id")
        if ("jwks_file" in row) == ("jwks" in row):
            raise ConfigError(f"clients[{i}]", "needs exactly one of jwks_file or jwks")
        jwks = row.get("jwks")
        if jwks is not None:
            try:
                parse_jwks(jwks)
            except ValueError as exc:
                raise ConfigError(f"clients[{i}].jwks", f"must be a json web key set: {exc}") from exc
        clients.append(ClientConfig(client_id, file_or_none(row.get("jwks_file"), f"clients[{i}].jwks_file"), jwks))
    spaces = _namespaces(domains, issuers, clients)
    resources = []
    for i, raw_row in enumerate(_list(data, "resources")):
        row = _table("resources", i, raw_row, {"uri", "principals", "tags"}, {"uri", "principals"})
        uri = _typed(f"resources[{i}].uri", row["uri"], str)
        try:
            check_resource_uri(uri)
        except OAuthError as exc:
            raise ConfigError(f"resources[{i}].uri", "must be an absolute uri without a fragment") from exc
        principals = tuple(_typed(f"resources[{i}].principals", row["principals"], list))
        if not all(is_principal(p) for p in principals):
            raise ConfigError(f"resources[{i}].principals", "must list principals")
        tags = tuple(_typed(f"resources[{i}].tags", row.get("tags", []), list))
        resources.append(ResourceConfig(uri, principals, tags))
    gateway_raw = data.get("gateway", {})
    routes = parse_routes(gateway_raw.get("routes") if isinstance(gateway_raw, dict) else None)
    if routes:
        _issuer_uri(values["gateway"]["url"], "gateway.url")
    monitor_raw = data.get("monitor", {})
    detectors = parse_detectors(monitor_raw.get("detectors") if isinstance(monitor_raw, dict) else None)
    if values["logging"]["format"] not in ("text", "json"):
        raise ConfigError("logging.format", "must be `text` or `json`")
    if values["logging"]["level"] not in ("debug", "info", "warning", "error"):
        raise ConfigError("logging.level", "must be one of debug, info, warning, error")
    if values["monitor"]["webhook_url"]:
        _http_url(values["monitor"]["webhook_url"], "monitor.webhook_url")
    return Config(
        path=path,
        values=values,
        trust_domains=tuple(domains),
        oidc_issuers=tuple(issuers),
        clients=tuple(clients),
        resources=tuple(resources),
        routes=routes,
        detectors=detectors,
        base_dir=base,
        sources=sources,
        namespaces=spaces,
    )


def _namespaces(
    domains: list[TrustDomainConfig], issuers: list[OidcIssuerConfig], clients: list[ClientConfig]
) -> tuple[Namespace, ...]:
    """Each identity source's namespace (``tether.rules.namespace``); overlapping ones are refused."""
    spaces = [Namespace("spiffe", f"spiffe://{d.name}", f"spiffe://{d.name}/", key=f"trust_domains[{i}]")
              for i, d in enumerate(domains)]  # fmt: skip
    spaces += [Namespace("oidc", o.issuer, o.principal.split("{", 1)[0], key=f"oidc_issuers[{i}].principal")
               for i, o in enumerate(issuers)]  # fmt: skip
    spaces += [Namespace("client", c.client_id, c.client_id, exact=True, key=f"clients[{i}].client_id")
               for i, c in enumerate(clients)]  # fmt: skip
    for first, second in collisions(spaces):
        raise ConfigError(
            second.key,
            f"`{second.prefix}` overlaps the principals of {first.key} (`{first.prefix}`): one name could be"
            " either source's workload; give each identity source its own prefix",
        )
    return tuple(spaces)


def _list(data: Mapping[str, Any], name: str) -> list[Any]:
    value = data.get(name, [])
    if not isinstance(value, list):
        raise ConfigError(name, "must be an array of tables")
    return value


def load_config(path: Path | None, *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate ``path`` (default ``./tether.toml`` or ``TETHER_CONFIG``)."""
    env = os.environ if env is None else env
    if path is None:
        path = Path(env.get("TETHER_CONFIG", "tether.toml"))
    try:
        if others_can_write(path):
            raise ConfigError("config", f"`{path}` must be writable by its owner only (chmod go-w)")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError("config", f"`{path}` not found; run tether init") from exc
    except OSError as exc:
        raise ConfigError("config", f"`{path}` cannot be read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("config", f"`{path}` is not UTF-8") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"`{path}` is not valid TOML: {exc}") from exc
    return parse_config(data, path=path.resolve(), env=env)
