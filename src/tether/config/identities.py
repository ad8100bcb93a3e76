"""The ``[[trust_domains]]``, ``[[oidc_issuers]]``, ``[[clients]]`` and ``[[resources]]`` tables.

Each identity source owns a namespace of principal names (``tether.rules.namespace``);
sources whose namespaces overlap are refused, so that one name is never either source's
workload. Relative file paths are resolved against the config file's directory.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.config.scalars import http_url, issuer_uri, typed
from tether.errors import ConfigError, OAuthError
from tether.identity.jwks_cache import parse_jwks
from tether.rules.jws import ASYMMETRIC_ALGS
from tether.rules.namespace import Namespace, collisions
from tether.rules.principal import is_principal, spiffe_trust_domain
from tether.rules.resource import check_resource_uri

__all__ = [
    "TABLES",
    "ClientConfig",
    "OidcIssuerConfig",
    "ResourceConfig",
    "TrustDomainConfig",
    "check_row",
    "parse_clients",
    "parse_namespaces",
    "parse_oidc_issuers",
    "parse_resources",
    "parse_trust_domains",
    "resolve",
]

#: the top-level arrays of tables
TABLES = ("trust_domains", "oidc_issuers", "clients", "resources", "approver_groups", "federation")


@dataclass(frozen=True)
class TrustDomainConfig:
    name: str
    bundle_file: Path | None
    bundle_url: str | None
    #: the domain's X.509 bundle (PEM CA certificates) that its X.509-SVIDs chain to (RFC 8705 §2.1)
    x509_bundle_file: Path | None = None
    #: SPIFFE Trust Domain and Bundle §5: the domain's bundle endpoint (``https_web``), refreshed per its hint
    bundle_endpoint: str | None = None
    #: the CA the endpoint's certificate chains to, when it is not a public one (only it is trusted)
    bundle_ca_file: Path | None = None


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
    """A client registered by its keys: RFC 7523 ``private_key_jwt`` (a JWKS) and/or RFC 8705
    §2.2 ``self_signed_tls_client_auth`` (its self-signed certificate, PEM)."""

    client_id: str
    jwks_file: Path | None
    jwks: Mapping[str, Any] | None
    certificate: Path | None = None


@dataclass(frozen=True)
class ResourceConfig:
    """A protected resource, the workloads that may act as it (the ``aud`` owners) and its policy tags."""

    uri: str
    principals: tuple[str, ...]
    tags: tuple[str, ...] = ()


def resolve(base: Path, value: str | Path) -> Path:
    """``value`` (``~`` expanded) relative to ``base`` unless absolute."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _file(base: Path, value: Any, key: str) -> Path | None:
    return None if value is None else resolve(base, typed(key, value, str))


def check_row(
    key: str, row: Any, allowed: Collection[str], required: Iterable[str], *, missing: str = "is required"
) -> dict[str, Any]:
    """One table of an array of tables (``key`` is ``name[index]``): only ``allowed`` keys, every ``required`` one."""
    if not isinstance(row, dict):
        raise ConfigError(key, "must be a table")
    for k in row:
        if k not in allowed:
            raise ConfigError(f"{key}.{k}", "unknown key")
    for k in required:
        if k not in row:
            raise ConfigError(f"{key}.{k}", missing)
    return row


def _rows(data: Mapping[str, Any], name: str, allowed: set[str], required: set[str]) -> Iterator[dict[str, Any]]:
    """The array of tables ``name``, checked row by row (``check_row``) as the caller reads it."""
    value = data.get(name, [])
    if not isinstance(value, list):
        raise ConfigError(name, "must be an array of tables")
    for index, row in enumerate(value):
        yield check_row(f"{name}[{index}]", row, allowed, required)


def parse_trust_domains(data: Mapping[str, Any], base: Path) -> tuple[TrustDomainConfig, ...]:
    domains = []
    allowed = {"name", "bundle_file", "bundle_url", "bundle_endpoint", "bundle_ca_file", "x509_bundle_file"}
    for i, row in enumerate(_rows(data, "trust_domains", allowed, {"name"})):
        key = f"trust_domains[{i}]"
        name = typed(f"{key}.name", row["name"], str)
        if spiffe_trust_domain(f"spiffe://{name}/x") != name:
            raise ConfigError(f"{key}.name", "must be a lower-case trust domain name")
        if sum(k in row for k in ("bundle_file", "bundle_url", "bundle_endpoint")) != 1:
            raise ConfigError(key, "needs exactly one of bundle_file, bundle_url or bundle_endpoint")
        url = row.get("bundle_url")
        if url is not None:
            url = http_url(url, f"{key}.bundle_url")
        endpoint = row.get("bundle_endpoint")
        if endpoint is not None:
            endpoint = http_url(endpoint, f"{key}.bundle_endpoint")
            if not endpoint.startswith("https://"):
                raise ConfigError(f"{key}.bundle_endpoint", "must be https (the SPIFFE https_web profile)")
        if "bundle_ca_file" in row and endpoint is None:
            raise ConfigError(f"{key}.bundle_ca_file", "is only for a bundle_endpoint")
        domains.append(
            TrustDomainConfig(
                name,
                _file(base, row.get("bundle_file"), f"{key}.bundle_file"),
                url,
                _file(base, row.get("x509_bundle_file"), f"{key}.x509_bundle_file"),
                bundle_endpoint=endpoint,
                bundle_ca_file=_file(base, row.get("bundle_ca_file"), f"{key}.bundle_ca_file"),
            )
        )
    return tuple(domains)


def parse_oidc_issuers(data: Mapping[str, Any], base: Path, audience: str) -> tuple[OidcIssuerConfig, ...]:
    """``audience`` is the default one (the STS's issuer)."""
    issuers = []
    allowed = {"issuer", "audience", "principal", "algorithms", "jwks_file", "jwks_uri"}
    for i, row in enumerate(_rows(data, "oidc_issuers", allowed, {"issuer", "principal"})):
        key = f"oidc_issuers[{i}]"
        issuer = issuer_uri(typed(f"{key}.issuer", row["issuer"], str), f"{key}.issuer")
        principal = typed(f"{key}.principal", row["principal"], str)
        if principal.lower().startswith("spiffe:") or "{" not in principal or principal.startswith("{"):
            raise ConfigError(
                f"{key}.principal", "must be a template with a literal prefix such as `k8s:{/sub}`, not a spiffe id"
            )
        algs = tuple(typed(f"{key}.algorithms", row.get("algorithms", ["RS256", "ES256"]), list))
        if not algs or any(a not in ASYMMETRIC_ALGS for a in algs):
            raise ConfigError(f"{key}.algorithms", "must list asymmetric signature algorithms")
        issuers.append(
            OidcIssuerConfig(
                issuer=issuer,
                audience=typed(f"{key}.audience", row.get("audience", audience), str),
                principal=principal,
                algorithms=algs,
                jwks_file=_file(base, row.get("jwks_file"), f"{key}.jwks_file"),
                jwks_uri=http_url(row["jwks_uri"], f"{key}.jwks_uri") if "jwks_uri" in row else None,
            )
        )
    return tuple(issuers)


def parse_clients(data: Mapping[str, Any], base: Path) -> tuple[ClientConfig, ...]:
    clients = []
    for i, row in enumerate(_rows(data, "clients", {"client_id", "jwks_file", "jwks", "certificate"}, {"client_id"})):
        client_id = typed(f"clients[{i}].client_id", row["client_id"], str)
        if not is_principal(client_id):
            raise ConfigError(f"clients[{i}].client_id", "must be a principal such as a spiffe id")
        if "jwks_file" in row and "jwks" in row:
            raise ConfigError(f"clients[{i}]", "needs at most one of jwks_file or jwks")
        if not ({"jwks_file", "jwks", "certificate"} & set(row)):
            raise ConfigError(f"clients[{i}]", "needs jwks_file, jwks or certificate")
        jwks = row.get("jwks")
        if jwks is not None:
            try:
                parse_jwks(jwks)
            except ValueError as exc:
                raise ConfigError(f"clients[{i}].jwks", f"must be a json web key set: {exc}") from exc
        clients.append(
            ClientConfig(
                client_id,
                _file(base, row.get("jwks_file"), f"clients[{i}].jwks_file"),
                jwks,
                _file(base, row.get("certificate"), f"clients[{i}].certificate"),
            )
        )
    return tuple(clients)


def parse_resources(data: Mapping[str, Any]) -> tuple[ResourceConfig, ...]:
    resources = []
    for i, row in enumerate(_rows(data, "resources", {"uri", "principals", "tags"}, {"uri", "principals"})):
        uri = typed(f"resources[{i}].uri", row["uri"], str)
        try:
            check_resource_uri(uri)
        except OAuthError as exc:
            raise ConfigError(f"resources[{i}].uri", "must be an absolute uri without a fragment") from exc
        principals = tuple(typed(f"resources[{i}].principals", row["principals"], list))
        if not all(is_principal(p) for p in principals):
            raise ConfigError(f"resources[{i}].principals", "must list principals")
        tags = tuple(typed(f"resources[{i}].tags", row.get("tags", []), list))
        resources.append(ResourceConfig(uri, principals, tags))
    return tuple(resources)


def parse_namespaces(
    domains: tuple[TrustDomainConfig, ...],
    issuers: tuple[OidcIssuerConfig, ...],
    clients: tuple[ClientConfig, ...],
    federated: Iterable[Namespace] = (),
) -> tuple[Namespace, ...]:
    """Each identity source's namespace (``tether.rules.namespace``), a federation peer's among
    them (``config.federation``); overlapping ones are refused."""
    spaces = [Namespace("spiffe", f"spiffe://{d.name}", f"spiffe://{d.name}/", key=f"trust_domains[{i}]")
              for i, d in enumerate(domains)]  # fmt: skip
    spaces += [Namespace("oidc", o.issuer, o.principal.split("{", 1)[0], key=f"oidc_issuers[{i}].principal")
               for i, o in enumerate(issuers)]  # fmt: skip
    spaces += [Namespace("client", c.client_id, c.client_id, exact=True, key=f"clients[{i}].client_id")
               for i, c in enumerate(clients)]  # fmt: skip
    spaces += federated
    for first, second in collisions(spaces):
        raise ConfigError(
            second.key,
            f"`{second.prefix}` overlaps the principals of {first.key} (`{first.prefix}`): one name could be"
            " either source's workload; give each identity source its own prefix",
        )
    return tuple(spaces)
