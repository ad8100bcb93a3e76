"""Gateway routes: each one a registered bearer exception, validated like the rest of ``tether.toml``.

A route names an upstream that only takes a long-lived secret, the vault entry holding it (or,
for an upstream that issues OAuth tokens, an ``oauth`` table: ``tether.gateway.oauth_config``), how
to inject it, an allowlist and caps, and, being an exception to "no bearer secrets", an owner,
a justification and an expiry date. Its audience is ``{gateway.url}/routes/{name}``, so a hop
token for it is usable nowhere else. So that no call holds the gateway, each route has its own
connection pool (``max_connections``), a deadline per call that includes the streamed body
(``max_call_seconds`` ≥ ``timeout``) and a cap on one task's calls in flight.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tether.errors import ConfigError
from tether.gateway.allowlist import AllowRule, parse_rule
from tether.gateway.inject import Injection
from tether.gateway.oauth_config import OAuthCredentials, parse_oauth

__all__ = [
    "ROUTE_NAME",
    "GatewayRoute",
    "days_to_expiry",
    "injection_of",
    "parse_routes",
    "parse_table",
    "positive_int",
    "route_warnings",
    "seconds_value",
    "text_value",
    "utc_date",
]

ROUTE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_HEADER = re.compile(r"[A-Za-z0-9-]{1,64}")
_PARAM = re.compile(r"[A-Za-z0-9._~-]{1,64}")
_KEYS = {
    "name", "upstream", "secret", "inject", "header", "template", "query_param", "username", "allow",
    "max_requests_per_task", "max_requests_per_second", "max_request_bytes", "max_response_bytes",
    "max_session_seconds", "timeout", "owner", "justification", "expires", "tags", "max_connections",
    "max_in_flight_per_task", "max_call_seconds", "oauth",
}  # fmt: skip
R = TypeVar("R")
#: the default total deadline per call (or ``timeout``, when that is longer)
CALL_SECONDS = 60.0
EXPIRY_WARNING_DAYS = 14


@dataclass(frozen=True)
class GatewayRoute:
    name: str
    upstream: str
    secret: str
    injection: Injection
    allow: tuple[AllowRule, ...]
    owner: str
    justification: str
    expires: dt.date
    max_requests_per_task: int = 100
    max_requests_per_second: int = 10
    max_request_bytes: int = 1_048_576
    max_response_bytes: int = 10_485_760
    max_session_seconds: int = 900
    timeout: float = 10.0
    tags: tuple[str, ...] = ()
    max_connections: int = 64
    max_in_flight_per_task: int = 32
    max_call_seconds: float = CALL_SECONDS
    #: an OAuth route (``secret`` is then ""): the injected value is an upstream access token
    oauth: OAuthCredentials | None = None

    def audience(self, gateway_url: str) -> str:
        return f"{gateway_url}/routes/{self.name}"

    def expired(self, today: dt.date) -> bool:
        return today > self.expires


def utc_date(now: float) -> dt.date:
    """Routes expire by UTC date, wherever the gateway runs."""
    return dt.datetime.fromtimestamp(now, dt.UTC).date()


def days_to_expiry(route: GatewayRoute, today: dt.date) -> int:
    return (route.expires - today).days


def route_warnings(routes: tuple[GatewayRoute, ...], today: dt.date) -> list[str]:
    """Bearer exceptions that have expired or expire within two weeks (startup and ``tether report``)."""
    warnings = []
    for route in routes:
        days = days_to_expiry(route, today)
        if days < 0:
            warnings.append(f"route `{route.name}` (owner {route.owner}) expired on {route.expires}: it refuses every call")
        elif days <= EXPIRY_WARNING_DAYS:
            warnings.append(f"route `{route.name}` (owner {route.owner}) expires in {days} days ({route.expires})")
    return warnings


def positive_int(key: str, value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(key, "must be a positive integer")
    return value


def seconds_value(key: str, value: Any, most: int) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= most:
        raise ConfigError(key, f"must be between 0 and {most} seconds")
    return float(value)


def text_value(key: str, value: Any, *, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip() or not value.isprintable():
        raise ConfigError(key, "must be non-empty printable text")
    return value


def injection_of(where: str, row: dict[str, Any]) -> Injection:
    """How a route's vaulted secret is injected (``inject``, ``header``, ``template``, ``query_param``, ``username``)."""
    mode = row.get("inject", "header")
    if mode not in ("header", "query", "basic"):
        raise ConfigError(f"{where}.inject", "must be `header`, `query` or `basic`")
    header = row.get("header", "Authorization")
    template = row.get("template", "Bearer {secret}")
    if mode == "header" and (not isinstance(header, str) or not _HEADER.fullmatch(header)):
        raise ConfigError(f"{where}.header", "must be a header name")
    if mode == "header" and (not isinstance(template, str) or template.count("{secret}") != 1 or not template.isprintable()):
        raise ConfigError(f"{where}.template", "must contain `{secret}` exactly once")
    query_param = row.get("query_param", "api_key")
    if mode == "query" and (not isinstance(query_param, str) or not _PARAM.fullmatch(query_param)):
        raise ConfigError(f"{where}.query_param", "must be a parameter name")
    return Injection(
        mode=mode,
        header=str(header),
        template=str(template),
        query_param=str(query_param),
        username=text_value(f"{where}.username", row.get("username"), required=False),
    )


def _route(index: int, row: Any) -> GatewayRoute:
    where = f"gateway.routes[{index}]"
    if not isinstance(row, dict):
        raise ConfigError(where, "must be a table")
    for key in row:
        if key not in _KEYS:
            raise ConfigError(f"{where}.{key}", "unknown key")
    for key in ("name", "upstream", "allow", "owner", "justification", "expires"):
        if key not in row:
            raise ConfigError(f"{where}.{key}", "is required (every route is a registered bearer exception)")
    if "secret" in row and "oauth" in row:
        raise ConfigError(f"{where}.oauth", "excludes `secret`: the upstream gets one credential")
    if "secret" not in row and "oauth" not in row:
        raise ConfigError(f"{where}.secret", "is required (or an `oauth` table): every route injects a credential")
    name = text_value(f"{where}.name", row["name"])
    if not ROUTE_NAME.fullmatch(name):
        raise ConfigError(f"{where}.name", "must be lower-case letters, digits and dashes")
    upstream = text_value(f"{where}.upstream", row["upstream"]).rstrip("/")
    if not upstream.startswith(("http://", "https://")) or "?" in upstream or "#" in upstream:
        raise ConfigError(f"{where}.upstream", "must be an http(s) url without query or fragment")
    allow_raw = row["allow"]
    if not isinstance(allow_raw, list) or not allow_raw:
        raise ConfigError(f"{where}.allow", "must list at least one `METHOD /path` pattern")
    try:
        allow = tuple(parse_rule(str(rule)) for rule in allow_raw)
    except ValueError as exc:
        raise ConfigError(f"{where}.allow", str(exc)) from exc
    expires_raw = row["expires"]
    try:
        expires = expires_raw if isinstance(expires_raw, dt.date) else dt.date.fromisoformat(str(expires_raw))
    except ValueError as exc:
        raise ConfigError(f"{where}.expires", "must be a date (YYYY-MM-DD)") from exc
    timeout = seconds_value(f"{where}.timeout", row.get("timeout", 10), 300)
    call_seconds = seconds_value(f"{where}.max_call_seconds", row.get("max_call_seconds", max(CALL_SECONDS, timeout)), 3600)
    if call_seconds < timeout:
        raise ConfigError(f"{where}.max_call_seconds", f"must be at least `timeout` ({timeout:g} seconds)")
    connections = positive_int(f"{where}.max_connections", row.get("max_connections"), 64)
    in_flight = positive_int(f"{where}.max_in_flight_per_task", row.get("max_in_flight_per_task"), max(1, connections // 2))
    if in_flight > connections:
        problem = f"must not exceed `max_connections` ({connections}): one task could hold every connection"
        raise ConfigError(f"{where}.max_in_flight_per_task", problem)
    tags = row.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ConfigError(f"{where}.tags", "must be a list of strings")
    return GatewayRoute(
        name=name,
        upstream=upstream,
        secret=text_value(f"{where}.secret", row["secret"]) if "secret" in row else "",
        injection=injection_of(where, row),
        allow=allow,
        owner=text_value(f"{where}.owner", row["owner"]),
        justification=text_value(f"{where}.justification", row["justification"]),
        expires=expires,
        max_requests_per_task=positive_int(f"{where}.max_requests_per_task", row.get("max_requests_per_task"), 100),
        max_requests_per_second=positive_int(f"{where}.max_requests_per_second", row.get("max_requests_per_second"), 10),
        max_request_bytes=positive_int(f"{where}.max_request_bytes", row.get("max_request_bytes"), 1_048_576),
        max_response_bytes=positive_int(f"{where}.max_response_bytes", row.get("max_response_bytes"), 10_485_760),
        max_session_seconds=positive_int(f"{where}.max_session_seconds", row.get("max_session_seconds"), 900),
        timeout=timeout,
        tags=tuple(tags),
        max_connections=connections,
        max_in_flight_per_task=in_flight,
        max_call_seconds=call_seconds,
        oauth=parse_oauth(f"{where}.oauth", row["oauth"], allow) if "oauth" in row else None,
    )


def parse_table(table: str, raw: Any, parse_row: Callable[[int, Any], R]) -> tuple[R, ...]:
    """An array of tables (``[[table]]``) of named routes, each row parsed by ``parse_row``; a name used twice is refused."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(table, f"must be an array of tables ([[{table}]])")
    rows = tuple(parse_row(i, row) for i, row in enumerate(raw))
    names = [getattr(r, "name", None) for r in rows]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(table, f"route name `{name}` is used twice")
    return rows


def parse_routes(raw: Any) -> tuple[GatewayRoute, ...]:
    return parse_table("gateway.routes", raw, _route)
