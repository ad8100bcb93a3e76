"""``tether.toml`` plus ``TETHER_*`` environment overrides → one frozen ``Config``.

Every key is declared with its type and default; an unknown key, a wrong type or an
out-of-range value is a ``ConfigError(key, problem)`` that the CLI prints as one line
and exits 2 on. The tables a feature owns (``[[gateway.routes]]``,
``[monitor.detectors.*]``) are parsed by the parser that feature registers with
``register_table``, so this package imports no feature; ``tether.features`` registers
them, and every entry point that loads a config imports it first.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tether.config.approvers import parse_approver_groups
from tether.config.federation import check_peer_names, parse_federation
from tether.config.identities import (
    TABLES,
    parse_clients,
    parse_namespaces,
    parse_oidc_issuers,
    parse_resources,
    parse_trust_domains,
)
from tether.config.model import Config
from tether.config.scalars import SCALARS, check_outputs, check_scalars, issuer_uri, read_scalars
from tether.config.sections import SECTIONS
from tether.errors import ConfigError
from tether.filemodes import others_can_write

__all__ = ["FEATURE_TABLES", "TableParser", "load_config", "parse_config", "register_table"]

#: a feature's parser: the raw table (``None`` when absent) → its typed rows; problems are ``ConfigError``
TableParser = Callable[[Any], tuple[Any, ...]]
#: the tables inside a section that a feature parses: ``Config.routes``, ``Config.mcp_routes`` and ``Config.detectors``
FEATURE_TABLES = ("gateway.routes", "gateway.mcp", "monitor.detectors")
_PARSERS: dict[str, TableParser] = {}


def register_table(name: str, parser: TableParser) -> None:
    """Let the feature that owns ``name`` (one of ``FEATURE_TABLES``) parse it whenever a config is loaded."""
    if name not in FEATURE_TABLES:
        raise ValueError(f"`{name}` is not a feature table ({', '.join(FEATURE_TABLES)})")
    _PARSERS[name] = parser


def _feature_table(data: Mapping[str, Any], name: str) -> tuple[Any, ...]:
    parser = _PARSERS.get(name)
    if parser is None:  # a default (every detector on) would be silently lost: refuse to load instead
        raise RuntimeError(f"no parser registered for `{name}`: import tether.features before loading a config")
    section, key = name.split(".")
    raw = data.get(section, {})
    return parser(raw.get(key) if isinstance(raw, dict) else None)


def parse_config(data: Mapping[str, Any], *, path: Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Validate a parsed ``tether.toml`` document and apply environment overrides."""
    env = os.environ if env is None else env
    values, sources = _scalars(data, env)
    base = path.parent if path is not None else Path.cwd()
    domains = parse_trust_domains(data, base)
    issuers = parse_oidc_issuers(data, base, values[""]["issuer"])
    clients = parse_clients(data, base)
    federation = parse_federation(data, base, values[""]["issuer"])
    check_peer_names(federation, (d.name for d in domains))
    namespaces = parse_namespaces(domains, issuers, clients, (p.namespace(i) for i, p in enumerate(federation)))
    resources = parse_resources(data)
    routes = _feature_table(data, "gateway.routes")
    mcp_routes = _feature_table(data, "gateway.mcp")
    if routes or mcp_routes:
        issuer_uri(values["gateway"]["url"], "gateway.url")
    detectors = _feature_table(data, "monitor.detectors")
    check_outputs(values)
    approver_groups = parse_approver_groups(data)
    _check_networks(values["tls"]["trusted_proxies"], "tls.trusted_proxies")
    sections = {
        (section or "general").replace(".", "_"): cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
        for section, cls in SECTIONS.items()
        for raw in (values[section],)
    }
    return Config(path=path, **sections, trust_domains=domains, oidc_issuers=issuers, clients=clients,
                  resources=resources, routes=routes, mcp_routes=mcp_routes, detectors=detectors, base_dir=base,
                  sources=sources, namespaces=namespaces, approver_groups=approver_groups, federation=federation)  # fmt: skip


def _check_networks(entries: list[str], key: str) -> None:
    """Addresses or CIDRs, refused at load (the STS, the gateway and every CLI command alike)
    rather than as a failure of the first request that reads them."""
    for entry in entries:
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError as exc:
            raise ConfigError(key, f"`{entry:.100}` is not an address or CIDR") from exc
        if network.prefixlen == 0:
            raise ConfigError(key, f"`{entry}` trusts every address: name the terminators")


def _scalars(data: Mapping[str, Any], env: Mapping[str, str]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Every scalar, checked, and its source; a top-level key that is neither a scalar, a section nor a table is refused."""
    values, sources = read_scalars(data, env, FEATURE_TABLES)
    for k in data:
        if k == "" or (k not in SCALARS[""] and k not in SCALARS and k not in TABLES):
            raise ConfigError(k or '""', "unknown key")
    check_scalars(values)
    return values, sources


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
