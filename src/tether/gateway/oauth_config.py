"""``[gateway.routes.oauth]``: a route whose upstream takes OAuth access tokens (RFC 6749 §4.4, §6; RFC 8693).

Many SaaS APIs hand out access tokens instead of static keys. The static part (a client secret,
a refresh token, a private key) is exactly the general-purpose credential an agent must never
hold, so it stays in the vault under the names given here and only the gateway uses it, per
task and per call, to obtain a token with the narrowest scope the call needs (FED-04).

    grant           client_credentials | refresh_token | token_exchange (RFC 8693 at the upstream)
    token_endpoint  where tokens are obtained (http(s); https off loopback, RFC 6749 §3.2 / §1.6)
    revocation_endpoint   optional: RFC 7009 revocation of a task's tokens when it ends
    revoke_access_tokens  whether to use it (default true, but false for grant = refresh_token: RFC 7009
                    §2.1 lets a server revoke the refresh token with an access token of the same grant,
                    and oidc-provider and Google do, which would end the route for every task)
    authorization_endpoint, redirect_uri   refresh_token grant: for ``tether vault oauth-connect``
                    (the redirect is a loopback http URI, RFC 8252 §7.3)
    client_id, client_auth   client_secret_basic | client_secret_post | private_key_jwt | none
    client_secret, private_key, refresh_token   vault entry *names*, never values
    scopes          the most any call on the route may get (RFC 6749 §3.3)
    resource        optional RFC 8707 resource indicator sent upstream
    call_scopes     allow rule → the scopes a call matching it gets

Everything is checked at load, naming the key (``ConfigError``); the parsed form is frozen.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tether.config.console import is_loopback
from tether.errors import ConfigError, InvalidScope
from tether.gateway.allowlist import AllowRule, is_allowed, parse_rule
from tether.rules.scope import parse_scope_list

__all__ = ["CLIENT_AUTHS", "GRANTS", "VAULT_NAME", "OAuthCredentials", "parse_oauth"]

GRANTS = ("client_credentials", "refresh_token", "token_exchange")
CLIENT_AUTHS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
#: a vault entry name: plain, so it reads the same in a log line, the audit and ``tether vault``
VAULT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_KEYS = frozenset({
    "grant", "token_endpoint", "revocation_endpoint", "authorization_endpoint", "redirect_uri", "client_id",
    "client_auth", "client_secret", "private_key", "refresh_token", "scopes", "resource", "call_scopes",
    "revoke_access_tokens",
})  # fmt: skip


@dataclass(frozen=True)
class OAuthCredentials:
    """How the gateway obtains a route's upstream access tokens; vault fields are entry names."""

    grant: str
    token_endpoint: str
    client_id: str
    client_auth: str
    scopes: tuple[str, ...]
    revocation_endpoint: str = ""
    authorization_endpoint: str = ""
    redirect_uri: str = ""
    client_secret: str = ""
    private_key: str = ""
    refresh_token: str = ""
    resource: str = ""
    #: (allow rule, its scopes), in the order of the route's allowlist
    call_scopes: tuple[tuple[AllowRule, tuple[str, ...]], ...] = ()
    #: revoke (RFC 7009) each access token the gateway stops using; only with ``revocation_endpoint``
    revoke_access_tokens: bool = False

    def scopes_for(self, method: str, segments: tuple[str, ...]) -> tuple[str, ...]:
        """The narrowest scope for a call: of the matching rules with ``call_scopes``, the one
        granting fewest (ties: allowlist order); without one, the route's ``scopes``. A token
        scoped to the call is all a leaked or misused one can do (RFC 6749 §3.3, least privilege)."""
        matching = [scopes for rule, scopes in self.call_scopes if is_allowed((rule,), method, segments)]
        return min(matching, key=len) if matching else self.scopes

    def vault_entries(self) -> tuple[str, ...]:
        """The vault entries the route reads (``tether report`` checks they exist)."""
        return tuple(n for n in (self.client_secret, self.private_key, self.refresh_token) if n)


def _url(key: str, value: Any, *, loopback_http_only: bool = False) -> str:
    """An absolute http(s) URL without fragment or userinfo; plain http only to a loopback host,
    where nothing on the network can read the credentials it carries (RFC 6749 §3.1, §3.2)."""
    if not isinstance(value, str) or not value.isprintable() or " " in value:
        raise ConfigError(key, "must be an http(s) url")
    try:
        parts = urlsplit(value)
        _ = parts.port  # a malformed port raises here
    except ValueError as exc:
        raise ConfigError(key, "must be an http(s) url") from exc
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host or parts.fragment or "#" in value or "@" in parts.netloc:
        raise ConfigError(key, "must be an http(s) url with a host and no fragment or user")
    if loopback_http_only and (parts.scheme != "http" or not _loopback_literal(host)):
        raise ConfigError(key, "must be http on a loopback address such as http://127.0.0.1:8765/callback (RFC 8252 §7.3)")
    if parts.scheme == "http" and not is_loopback(host):
        raise ConfigError(key, f"must be https: `{host}` is not a loopback host")
    return value


def _loopback_literal(host: str) -> bool:
    """RFC 8252 §8.3: a loopback redirect uses an IP literal, not ``localhost``."""
    return is_loopback(host) and host.lower() not in ("localhost", "localhost.", "ip6-localhost")


def _vault_name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not VAULT_NAME.fullmatch(value):
        raise ConfigError(key, "must be a vault entry name (letters, digits, `.`, `_`, `-`)")
    return value


def _scopes(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(key, "must be a list of scope tokens")
    try:
        parsed = parse_scope_list(value)
    except InvalidScope as exc:
        raise ConfigError(key, exc.description) from exc
    if len(parsed) != len(value):
        raise ConfigError(key, "names a scope twice")
    return tuple(value)


def _call_scopes(
    where: str, value: Any, allow: Sequence[AllowRule], scopes: tuple[str, ...]
) -> tuple[tuple[AllowRule, tuple[str, ...]], ...]:
    """``call_scopes``: each key one of the route's allow rules, each value within ``scopes``."""
    if not isinstance(value, dict):
        raise ConfigError(where, 'must be a table of allow rule = ["scope", ...]')
    found: dict[AllowRule, tuple[str, ...]] = {}
    for text, raw in value.items():
        key = f"{where}.{text}"
        try:
            rule = parse_rule(str(text))
        except ValueError as exc:
            raise ConfigError(key, str(exc)) from exc
        if rule not in allow:
            raise ConfigError(key, "is not one of the route's `allow` rules")
        if rule in found:
            raise ConfigError(key, "names an allow rule twice")
        granted = _scopes(key, raw)
        beyond = sorted(set(granted) - set(scopes))
        if beyond:
            raise ConfigError(key, f"grants `{' '.join(beyond)}`, beyond the route's `scopes`")
        found[rule] = granted
    return tuple((rule, found[rule]) for rule in allow if rule in found)


def _require(where: str, row: dict[str, Any], key: str, why: str) -> None:
    if key not in row:
        raise ConfigError(f"{where}.{key}", f"is required {why}")


def _refuse(where: str, row: dict[str, Any], key: str, why: str) -> None:
    if key in row:
        raise ConfigError(f"{where}.{key}", why)


def _check_client_auth(where: str, row: dict[str, Any], grant: str, client_auth: str) -> None:
    """Each client authentication names exactly the vault entry it uses (RFC 6749 §2.3, RFC 7523 §2.2)."""
    if client_auth == "none" and grant == "client_credentials":
        raise ConfigError(f"{where}.client_auth", "client_credentials needs an authenticated client (RFC 6749 §4.4)")
    if client_auth.startswith("client_secret_"):
        _require(where, row, "client_secret", f"for client_auth = {client_auth}")
    else:
        _refuse(where, row, "client_secret", f"is only used with client_auth = client_secret_*, not {client_auth}")
    if client_auth == "private_key_jwt" or grant == "token_exchange":
        why = "to sign the subject token (grant = token_exchange)" if grant == "token_exchange" else ""
        _require(where, row, "private_key", why or "for client_auth = private_key_jwt (RFC 7523 §2.2)")
    else:
        _refuse(where, row, "private_key", "is only used with private_key_jwt or grant = token_exchange")


def _check_grant(where: str, row: dict[str, Any], grant: str) -> None:
    """What each grant needs, and nothing it would ignore."""
    connect = ("authorization_endpoint", "redirect_uri", "refresh_token")
    if grant == "refresh_token":
        for key in connect:
            _require(where, row, key, "for grant = refresh_token (tether vault oauth-connect uses it)")
    else:
        for key in connect:
            _refuse(where, row, key, "is only used with grant = refresh_token")


def parse_oauth(where: str, row: Any, allow: Sequence[AllowRule]) -> OAuthCredentials:
    """Parse and check a route's ``oauth`` table against its ``allow`` rules."""
    if not isinstance(row, dict):
        raise ConfigError(where, "must be a table")
    for key in row:
        if key not in _KEYS:
            raise ConfigError(f"{where}.{key}", "unknown key")
    for key in ("grant", "token_endpoint", "client_id"):
        _require(where, row, key, "for an OAuth route")
    grant = row["grant"]
    if grant not in GRANTS:
        raise ConfigError(f"{where}.grant", f"must be one of {', '.join(GRANTS)}")
    client_auth = row.get("client_auth", "client_secret_basic")
    if client_auth not in CLIENT_AUTHS:
        raise ConfigError(f"{where}.client_auth", f"must be one of {', '.join(CLIENT_AUTHS)}")
    _check_grant(where, row, grant)
    _check_client_auth(where, row, grant, client_auth)
    client_id = row["client_id"]
    if not isinstance(client_id, str) or not client_id or not client_id.isprintable() or len(client_id) > 256:
        raise ConfigError(f"{where}.client_id", "must be printable text")
    scopes = _scopes(f"{where}.scopes", row.get("scopes", []))
    revoke = row.get("revoke_access_tokens", grant != "refresh_token" and "revocation_endpoint" in row)
    if not isinstance(revoke, bool):
        raise ConfigError(f"{where}.revoke_access_tokens", "must be true or false")
    if revoke and "revocation_endpoint" not in row:
        raise ConfigError(f"{where}.revoke_access_tokens", "needs a `revocation_endpoint` (RFC 7009)")

    def url(key: str, **kwargs: bool) -> str:
        return _url(f"{where}.{key}", row[key], **kwargs) if key in row else ""

    def vault(key: str) -> str:
        return _vault_name(f"{where}.{key}", row[key]) if key in row else ""

    return OAuthCredentials(
        grant=grant,
        token_endpoint=url("token_endpoint"),
        client_id=client_id,
        client_auth=client_auth,
        scopes=scopes,
        revocation_endpoint=url("revocation_endpoint"),
        authorization_endpoint=url("authorization_endpoint"),
        redirect_uri=url("redirect_uri", loopback_http_only=True),
        client_secret=vault("client_secret"),
        private_key=vault("private_key"),
        refresh_token=vault("refresh_token"),
        resource=url("resource"),
        call_scopes=_call_scopes(f"{where}.call_scopes", row.get("call_scopes", {}), allow, scopes),
        revoke_access_tokens=revoke,
    )
