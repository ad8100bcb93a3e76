"""The ``[[federation]]`` table: another tether trust domain this one accepts agents from, within a ceiling.

A peer is trusted as configured and no further (SECURITY FED-01): its issuer (exact ``iss``),
where its token-signing keys come from (a JWKS URL or file, or a SPIFFE bundle endpoint in the
``https_web`` profile), which of its principals may come in (``agents``), which local audiences
they may reach, and the ceiling every linked task gets (scopes, depth, TTL, token count). Its
principals are renamed into the peer's namespace here, ``fed:<name>/<principal>`` (FED-02), so a
foreign ``spiffe://a/...`` never equals a local one. This deployment follows the peer's
revocation feed as ``feed_principal`` and refuses the peer's agents once it has heard nothing
for ``stale_after`` seconds (FED-03).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tether.config.console import is_loopback
from tether.config.identities import check_row, resolve
from tether.config.scalars import http_url, issuer_uri, typed
from tether.errors import ConfigError, OAuthError
from tether.rules.jws import ASYMMETRIC_ALGS
from tether.rules.namespace import Namespace
from tether.rules.principal import FEDERATED_PREFIX, is_principal
from tether.rules.resource import check_resource_uri
from tether.rules.scope import parse_scope

__all__ = ["FEDERATED_PREFIX", "FederationPeer", "check_peer_names", "parse_federation"]

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_ALLOWED = {
    "name", "issuer", "jwks_uri", "jwks_file", "bundle_endpoint", "bundle_ca_file", "agents", "audiences", "scopes",
    "max_depth", "max_ttl", "max_tokens", "stale_after", "feed_principal", "feed_identity_file", "algorithms",
    "max_crossings_per_minute",
}  # fmt: skip
_REQUIRED = ("name", "issuer", "agents", "audiences", "scopes", "feed_principal")


@dataclass(frozen=True)
class FederationPeer:
    """One trusted peer trust domain (a tether STS) and the ceiling its agents get here."""

    name: str
    issuer: str
    agents: tuple[str, ...]
    audiences: tuple[str, ...]
    scopes: frozenset[str]
    feed_principal: str
    jwks_uri: str | None = None
    jwks_file: Path | None = None
    #: SPIFFE Trust Domain and Bundle §5: a bundle endpoint URL (``https_web`` profile: https, Web PKI)
    bundle_endpoint: str | None = None
    #: the CA that the bundle endpoint's TLS certificate chains to, when not a public one
    bundle_ca_file: Path | None = None
    max_depth: int = 2
    max_ttl: int = 900
    max_tokens: int = 100
    stale_after: int = 10
    #: a JWT-SVID kept fresh by a SPIFFE helper; without it the dev trust domain mints ``feed_principal``
    feed_identity_file: Path | None = None
    algorithms: tuple[str, ...] = ("ES256", "EdDSA")
    #: crossings (foreign tokens redeemed) accepted from this peer per minute: each may open a linked
    #: task, and a compromised peer can mint foreign tasks at will
    max_crossings_per_minute: int = 600

    @property
    def prefix(self) -> str:
        """The namespace of this peer's principals here."""
        return f"{FEDERATED_PREFIX}{self.name}/"

    def local_name(self, principal: str) -> str:
        """A foreign principal as this deployment names it (FED-02)."""
        return self.prefix + principal

    def admits_agent(self, principal: str) -> bool:
        """``agents`` lists exact principals or prefixes ending in ``*`` (of the peer's own names)."""
        return any(principal.startswith(p[:-1]) if p.endswith("*") else principal == p for p in self.agents)

    def namespace(self, index: int) -> Namespace:
        return Namespace("federation", self.issuer, self.prefix, key=f"federation[{index}].name")


def _not_plain_off_loopback(url: str, key: str) -> str:
    """``url`` unless it is plain http to a host other than loopback (FED-01, FED-03).

    The feed at the peer's issuer carries its revocations (and this deployment's SVID), ``jwks_uri``
    the keys its crossing tokens are verified with: over plain http a network attacker would forge
    heartbeats while withholding entries, or its own keys. Loopback (two deployments on one
    machine: tests, ``tether demo``) needs no TLS."""
    if url.startswith("http://") and not is_loopback(urlsplit(url).hostname or ""):
        raise ConfigError(key, "must be https (plain http only to a loopback host)")
    return url


def _int(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(key, f"must be an integer from {low} to {high}")
    return value


def _strings(key: str, value: Any) -> tuple[str, ...]:
    items = typed(key, value, list)
    if not items or not all(isinstance(v, str) and v for v in items):
        raise ConfigError(key, "must list at least one non-empty string")
    return tuple(items)


def _peer(index: int, row: Mapping[str, Any], base: Path, own_issuer: str) -> FederationPeer:
    key = f"federation[{index}]"
    check_row(key, row, _ALLOWED, _REQUIRED)
    name = typed(f"{key}.name", row["name"], str)
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{key}.name", "must be a lower-case trust domain label (letters, digits, `.`, `_`, `-`)")
    issuer = _not_plain_off_loopback(issuer_uri(typed(f"{key}.issuer", row["issuer"], str), f"{key}.issuer"), f"{key}.issuer")
    if issuer == own_issuer:
        raise ConfigError(f"{key}.issuer", "is this deployment's own issuer")
    sources = [k for k in ("jwks_uri", "jwks_file", "bundle_endpoint") if k in row]
    if len(sources) != 1:
        raise ConfigError(key, "needs exactly one of jwks_uri, jwks_file or bundle_endpoint")
    bundle = row.get("bundle_endpoint")
    if bundle is not None:
        bundle = http_url(bundle, f"{key}.bundle_endpoint")
        if not bundle.startswith("https://"):
            raise ConfigError(f"{key}.bundle_endpoint", "must be https (the SPIFFE https_web profile)")
    agents = _strings(f"{key}.agents", row["agents"])
    for agent in agents:
        if not is_principal(agent.removesuffix("*")) and not agent.endswith("*"):
            raise ConfigError(f"{key}.agents", f"`{agent}` is neither a principal nor a prefix ending in `*`")
    audiences = _strings(f"{key}.audiences", row["audiences"])
    for audience in audiences:
        try:
            check_resource_uri(audience)
        except OAuthError as exc:
            raise ConfigError(f"{key}.audiences", f"`{audience}` is not an absolute uri without a fragment") from exc
    try:
        scopes = parse_scope(" ".join(_strings(f"{key}.scopes", row["scopes"])))
    except OAuthError as exc:
        raise ConfigError(f"{key}.scopes", exc.description) from exc
    feed_principal = typed(f"{key}.feed_principal", row["feed_principal"], str)
    if not is_principal(feed_principal):
        raise ConfigError(f"{key}.feed_principal", "must be a principal such as a spiffe id")
    algorithms = _strings(f"{key}.algorithms", row.get("algorithms", ["ES256", "EdDSA"]))
    if any(a not in ASYMMETRIC_ALGS for a in algorithms):
        raise ConfigError(f"{key}.algorithms", "must list asymmetric signature algorithms")

    def file(name: str) -> Path | None:
        return resolve(base, typed(f"{key}.{name}", row[name], str)) if name in row else None

    return FederationPeer(
        name=name,
        issuer=issuer,
        agents=agents,
        audiences=audiences,
        scopes=scopes,
        feed_principal=feed_principal,
        jwks_uri=_not_plain_off_loopback(http_url(row["jwks_uri"], f"{key}.jwks_uri"), f"{key}.jwks_uri")
        if "jwks_uri" in row
        else None,
        jwks_file=file("jwks_file"),
        bundle_endpoint=bundle,
        bundle_ca_file=file("bundle_ca_file"),
        max_depth=_int(f"{key}.max_depth", row.get("max_depth", 2), 0, 5),
        max_ttl=_int(f"{key}.max_ttl", row.get("max_ttl", 900), 1, 86_400),
        max_tokens=_int(f"{key}.max_tokens", row.get("max_tokens", 100), 1, 100_000),
        stale_after=_int(f"{key}.stale_after", row.get("stale_after", 10), 1, 3600),
        feed_identity_file=file("feed_identity_file"),
        algorithms=algorithms,
        max_crossings_per_minute=_int(
            f"{key}.max_crossings_per_minute", row.get("max_crossings_per_minute", 600), 1, 1_000_000
        ),
    )


def parse_federation(data: Mapping[str, Any], base: Path, own_issuer: str) -> tuple[FederationPeer, ...]:
    """Every ``[[federation]]`` row; a peer name or issuer used twice is refused."""
    raw = data.get("federation", [])
    if not isinstance(raw, list):
        raise ConfigError("federation", "must be an array of tables ([[federation]])")
    peers = tuple(_peer(i, row, base, own_issuer) for i, row in enumerate(raw))
    for attr in ("name", "issuer"):
        values = [getattr(p, attr) for p in peers]
        for value in values:
            if values.count(value) > 1:
                raise ConfigError("federation", f"peer {attr} `{value}` is used twice")
    return peers


def check_peer_names(peers: Iterable[FederationPeer], trust_domains: Iterable[str]) -> None:
    """FED-02 in policy: Cedar's ``trust_domain`` of a peer's principal is the peer's name, and of a
    local SPIFFE workload its trust domain; a peer named like a local trust domain would satisfy a
    policy written for local workloads (``principal.trust_domain == "tether.local"``), so it is refused."""
    local = set(trust_domains)
    for index, peer in enumerate(peers):
        if peer.name in local:
            raise ConfigError(
                f"federation[{index}].name",
                f"`{peer.name}` is also a local trust_domain: Cedar could not tell the peer's principals from"
                " local ones; name the peer differently",
            )
