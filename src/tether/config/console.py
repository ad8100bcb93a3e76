"""``[console]`` and ``[console.oidc]``: the operator console (``tether.console``) and how humans log in.

The console is served on its own port (``tether console``, or by ``tether serve`` with
``enabled = true``). Humans log in with the organisation's OIDC provider (authorization code
with PKCE S256, OIDC Core §3.1 and RFC 7636) or, on a laptop, with a one-time link that
``tether console`` prints. Roles come from lists of principals here, or from the provider's
group claim (``*_groups``); ``operator`` and ``approver`` include ``viewer``
(SECURITY WEB-01..05).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tether.errors import ConfigError
from tether.rules.jws import ASYMMETRIC_ALGS

__all__ = ["ConsoleOidcSettings", "ConsoleSettings", "check_console", "is_loopback", "plain_http_refusal"]


@dataclass(frozen=True)
class ConsoleSettings:
    """``[console]``: where the console listens and how long a human stays logged in."""

    #: serve the console from ``tether serve`` too (``tether console`` serves it either way)
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8701
    #: the URL humans open (the OIDC redirect URI is this + ``/login/callback``); default ``http://host:port``;
    #: ``https://`` (a TLS front) when ``host`` is not loopback (WEB-01)
    public_url: str = ""
    #: seconds without a request before a session ends, and the most a session lives (WEB-01)
    session_idle: int = 1800
    session_max: int = 43200
    #: seconds a one-time login link stays valid (WEB-04)
    link_ttl: int = 300
    #: principals given each role (a login's principal is rendered by ``[console.oidc] principal``)
    viewers: tuple[str, ...] = ()
    operators: tuple[str, ...] = ()
    approvers: tuple[str, ...] = ()
    #: rows per page on the list pages
    page_size: int = 50

    def base_url(self, host: str | None = None, port: int | None = None) -> str:
        """The URL humans open: ``public_url``, else ``http://host:port`` (``tether console --host/--port``
        override the bind address); the OIDC redirect URI and the login links start with it."""
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{host or self.host}:{port or self.port}"


@dataclass(frozen=True)
class ConsoleOidcSettings:
    """``[console.oidc]``: the organisation's OIDC provider (OIDC Core §3.1, discovery §4)."""

    issuer: str = ""
    client_id: str = ""
    #: the environment variable holding the client secret (a confidential client); empty: a public client with PKCE only
    client_secret_env: str = ""
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    #: the principal rendered from the ID token's claims (the same form as ``[approvals] principal``)
    principal: str = "user:{/email}"
    group_claim: str = "groups"
    viewer_groups: tuple[str, ...] = ()
    operator_groups: tuple[str, ...] = ()
    approver_groups: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")


_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address) only answers on this machine."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def plain_http_refusal(host: str, public_url: str) -> str | None:
    """Why the console may not listen on ``host`` with ``public_url`` (``None``: it may).

    The console serves plain HTTP. Off loopback, a network observer would read the one-time link
    in the request and the session cookie in the answer (WEB-01: ``Secure`` except loopback dev),
    so it needs a TLS front that humans reach at an ``https`` public URL."""
    if is_loopback(host) or public_url.startswith("https://"):
        return None
    return (f"the console serves plain HTTP: on `{host}` (not loopback) put it behind TLS and set "
            "[console] public_url to its https:// address")  # fmt: skip


def check_console(console: Mapping[str, Any], oidc: Mapping[str, Any], *, uri: Callable[[str, str], str]) -> None:
    """Ranges and URLs of ``[console]`` / ``[console.oidc]`` (``uri``: ``config.scalars.issuer_uri``)."""
    if not 0 < console["port"] < 65536:
        raise ConfigError("console.port", "must be a port number")
    for key in ("session_idle", "session_max", "link_ttl", "page_size"):
        if console[key] <= 0:
            raise ConfigError(f"console.{key}", "must be a positive integer")
    if console["session_idle"] > console["session_max"]:
        raise ConfigError("console.session_idle", "must not exceed console.session_max")
    if console["link_ttl"] > 3600:
        raise ConfigError("console.link_ttl", "must be at most 3600 seconds (a login link is for minutes)")
    if console["page_size"] > 500:
        raise ConfigError("console.page_size", "must be at most 500")
    if console["public_url"]:
        uri(console["public_url"], "console.public_url")
    refusal = plain_http_refusal(console["host"], console["public_url"])
    if refusal is not None:
        raise ConfigError("console.host", refusal)
    if oidc["issuer"]:
        uri(oidc["issuer"], "console.oidc.issuer")
        if not oidc["client_id"]:
            raise ConfigError("console.oidc.client_id", "is required with console.oidc.issuer")
        if "openid" not in oidc["scopes"]:
            raise ConfigError("console.oidc.scopes", "must include `openid`")
        if "{/" not in oidc["principal"]:
            raise ConfigError("console.oidc.principal", "must name a claim, e.g. `user:{/email}`")
    for alg in oidc["algorithms"]:
        if alg not in ASYMMETRIC_ALGS:
            raise ConfigError("console.oidc.algorithms", f"`{alg}` is not an asymmetric signature algorithm")
