"""``[[gateway.mcp]]``: MCP servers the gateway fronts, each one validated like the rest of ``tether.toml``.

An MCP route is served at ``{gateway.url}/mcp/{name}``, which is also the audience of the
tether token an agent must present (RFC 8707), so a token for it is usable nowhere else.
The upstream is reached over streamable HTTP (``url``) or started as a stdio subprocess
(``command``), one per agent session. The agent's token never goes upstream (MCP
authorization spec, "token passthrough" is forbidden). What the upstream gets instead is the
route's ``credential``:

* ``"none"`` (the default without ``secret``; the only one for stdio): nothing;
* ``"secret"`` (implied by ``secret = ...``): a vaulted secret injected as configured; the route
  is then a bearer exception like an HTTP route;
* ``"hop"`` (``url`` routes only): a tether hop token for the upstream's ``audience`` (default:
  the route ``url``), which the gateway gets per agent session by an RFC 8693 delegation
  exchange of the agent's own token with the gateway's workload identity as ``actor_token``
  (``[gateway] identity_file`` or the SPIFFE Workload API; ``tether.gateway.mcp_hop``).
  The upstream is then a server behind ``tether.mcp.protect``, which sees the agent as
  subject and the gateway as ``act``.

Owner, justification and expiry are required for every MCP route, since it grants tools.
``tools`` is the allowlist: ``["*"]`` allows every pinned tool.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from tether.errors import ConfigError
from tether.gateway.inject import Injection
from tether.gateway.routes import ROUTE_NAME, injection_of, parse_table, positive_int, seconds_value, text_value
from tether.rules.tool_call import DEFAULT_MAX_ARGUMENT_BYTES, DEFAULT_SCOPE_PREFIX, valid_tool_name

__all__ = ["CREDENTIALS", "McpRoute", "parse_mcp_routes"]

#: what an upstream is given in place of the agent's token (see the module docstring)
CREDENTIALS = ("none", "secret", "hop")

_KEYS = {
    "name", "command", "url", "env", "cwd", "tools", "owner", "justification", "expires", "secret", "inject", "header",
    "template", "query_param", "username", "max_calls_per_task", "max_calls_per_second", "max_argument_bytes",
    "max_result_bytes", "timeout", "scope_prefix", "tags", "max_sessions", "session_idle_seconds", "credential",
    "audience",
}  # fmt: skip


@dataclass(frozen=True)
class McpRoute:
    name: str
    #: a stdio upstream: argv of the server process (started per agent session)
    command: tuple[str, ...]
    #: a streamable-HTTP upstream (exactly one of ``command`` and ``url``)
    url: str
    tools: tuple[str, ...]
    owner: str
    justification: str
    expires: dt.date
    #: extra environment for a stdio upstream (the gateway's own environment is not passed on)
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = ""
    #: the vault entry injected into an HTTP upstream's requests ("" for none)
    secret: str = ""
    injection: Injection | None = None
    max_calls_per_task: int = 100
    max_calls_per_second: int = 10
    max_argument_bytes: int = DEFAULT_MAX_ARGUMENT_BYTES
    max_result_bytes: int = 1_048_576
    #: seconds one upstream call may take
    timeout: float = 30.0
    #: the scope convention (``tool:<name>``); "" turns it off and leaves tools to Cedar alone
    scope_prefix: str = DEFAULT_SCOPE_PREFIX
    tags: tuple[str, ...] = ()
    #: stdio upstream processes this route runs at once (one per agent session)
    max_sessions: int = 32
    #: a stdio upstream unused this long is stopped
    session_idle_seconds: float = 300.0
    #: what the upstream is given: ``none``, ``secret`` (the vaulted ``secret``) or ``hop`` (a tether token)
    credential: str = "none"
    #: with ``credential = "hop"``: the upstream's tether audience (TOML ``audience``, default the ``url``)
    upstream_audience: str = ""

    @property
    def stdio(self) -> bool:
        return bool(self.command)

    @property
    def hop(self) -> bool:
        """The upstream is tether-protected: it gets a hop token minted for it per agent session."""
        return self.credential == "hop"

    @property
    def per_agent(self) -> bool:
        """One upstream session per (task, caller key): a stdio process, or a hop route's own connection
        (its token is the agent's delegation, so it is never shared with another caller)."""
        return self.stdio or self.hop

    def audience(self, gateway_url: str) -> str:
        return f"{gateway_url}/mcp/{self.name}"

    def allows(self, tool: str) -> bool:
        """The route's allowlist (``*`` admits every tool; pinning still applies)."""
        return "*" in self.tools or tool in self.tools

    def expired(self, today: dt.date) -> bool:
        return today > self.expires


def _strings(key: str, value: Any, *, allow_empty: bool = False) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v and v.isprintable() for v in value):
        raise ConfigError(key, "must be a list of non-empty strings")
    if not value and not allow_empty:
        raise ConfigError(key, "must not be empty")
    return tuple(value)


def _tools(key: str, value: Any) -> tuple[str, ...]:
    tools = _strings(key, value)
    for tool in tools:
        if tool != "*" and not valid_tool_name(tool):
            raise ConfigError(key, f"`{tool[:40]}` is not an MCP tool name")
    return tools


def _env(key: str, value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigError(key, "must be a table of strings")
    return tuple(sorted(value.items()))


def _route(index: int, row: Any) -> McpRoute:
    where = f"gateway.mcp[{index}]"
    if not isinstance(row, dict):
        raise ConfigError(where, "must be a table")
    for key in row:
        if key not in _KEYS:
            raise ConfigError(f"{where}.{key}", "unknown key")
    for key in ("name", "tools", "owner", "justification", "expires"):
        if key not in row:
            raise ConfigError(f"{where}.{key}", "is required (every MCP route grants tools and is registered)")
    name = text_value(f"{where}.name", row["name"])
    if not ROUTE_NAME.fullmatch(name):
        raise ConfigError(f"{where}.name", "must be lower-case letters, digits and dashes")
    if ("command" in row) == ("url" in row):
        raise ConfigError(where, "needs exactly one of `command` (a stdio server) and `url` (streamable HTTP)")
    command = _strings(f"{where}.command", row["command"]) if "command" in row else ()
    url = ""
    if "url" in row:
        url = text_value(f"{where}.url", row["url"])
        if not url.startswith(("http://", "https://")) or "#" in url:
            raise ConfigError(f"{where}.url", "must be an http(s) url without fragment")
    secret = text_value(f"{where}.secret", row.get("secret"), required=False)
    if secret and command:
        raise ConfigError(f"{where}.secret", "only an HTTP upstream takes a vaulted secret (a stdio server gets none)")
    if not secret and any(k in row for k in ("inject", "header", "template", "query_param", "username")):
        raise ConfigError(f"{where}.inject", "says how to inject a secret, but the route names no `secret`")
    credential, audience = _credential(where, row, url=url, secret=secret)
    expires_raw = row["expires"]
    try:
        expires = expires_raw if isinstance(expires_raw, dt.date) else dt.date.fromisoformat(str(expires_raw))
    except ValueError as exc:
        raise ConfigError(f"{where}.expires", "must be a date (YYYY-MM-DD)") from exc
    prefix = row.get("scope_prefix", DEFAULT_SCOPE_PREFIX)
    if not isinstance(prefix, str) or not prefix.isprintable() or " " in prefix:
        raise ConfigError(f"{where}.scope_prefix", 'must be text without spaces ("" turns the convention off)')
    tags = row.get("tags", [])
    cwd = row.get("cwd", "")
    if not isinstance(cwd, str):
        raise ConfigError(f"{where}.cwd", "must be a directory path")
    return McpRoute(
        name=name,
        command=command,
        url=url,
        tools=_tools(f"{where}.tools", row["tools"]),
        owner=text_value(f"{where}.owner", row["owner"]),
        justification=text_value(f"{where}.justification", row["justification"]),
        expires=expires,
        env=_env(f"{where}.env", row.get("env")),
        cwd=cwd,
        secret=secret,
        injection=injection_of(where, row) if secret else None,
        max_calls_per_task=positive_int(f"{where}.max_calls_per_task", row.get("max_calls_per_task"), 100),
        max_calls_per_second=positive_int(f"{where}.max_calls_per_second", row.get("max_calls_per_second"), 10),
        max_argument_bytes=positive_int(
            f"{where}.max_argument_bytes", row.get("max_argument_bytes"), DEFAULT_MAX_ARGUMENT_BYTES
        ),
        max_result_bytes=positive_int(f"{where}.max_result_bytes", row.get("max_result_bytes"), 1_048_576),
        timeout=seconds_value(f"{where}.timeout", row.get("timeout", 30), 3600),
        scope_prefix=prefix,
        tags=_strings(f"{where}.tags", tags, allow_empty=True),
        max_sessions=positive_int(f"{where}.max_sessions", row.get("max_sessions"), 32),
        session_idle_seconds=seconds_value(f"{where}.session_idle_seconds", row.get("session_idle_seconds", 300), 86400),
        credential=credential,
        upstream_audience=audience,
    )


def _credential(where: str, row: dict[str, Any], *, url: str, secret: str) -> tuple[str, str]:
    """``credential`` (checked against ``url`` and ``secret``) and, for ``hop``, the upstream audience."""
    default = "secret" if secret else "none"
    credential = row.get("credential", default)
    if credential not in CREDENTIALS:
        raise ConfigError(f"{where}.credential", f"must be one of {', '.join(CREDENTIALS)}")
    if credential == "hop" and not url:
        raise ConfigError(f"{where}.credential", '"hop" needs a `url` route (a stdio server gets no credential)')
    if credential == "hop" and secret:
        raise ConfigError(f"{where}.credential", '"hop" and `secret` exclude each other: the upstream gets one credential')
    if credential == "secret" and not secret:
        raise ConfigError(f"{where}.credential", '"secret" needs the vault entry named by `secret`')
    if credential == "none" and secret:
        raise ConfigError(f"{where}.credential", '"none" contradicts `secret` (which injects a vaulted secret)')
    if "audience" not in row:
        return credential, url if credential == "hop" else ""
    if credential != "hop":
        raise ConfigError(f"{where}.audience", 'is the upstream\'s tether audience: only for credential = "hop"')
    audience = text_value(f"{where}.audience", row["audience"])
    if not audience.startswith(("http://", "https://")) or "#" in audience or "?" in audience:
        raise ConfigError(f"{where}.audience", "must be an http(s) url without query or fragment (RFC 8707 §2)")
    return credential, audience


def parse_mcp_routes(raw: Any) -> tuple[McpRoute, ...]:
    return parse_table("gateway.mcp", raw, _route)
