"""``[[gateway.mcp]]`` is validated when the config loads: every refusal names the key at fault."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

import tether.features  # noqa: F401 - registers the feature tables
from tether.config import parse_config
from tether.errors import ConfigError
from tether.gateway.mcp_routes import McpRoute

# runs the same whatever TETHER_TEST_STORE says: the PostgreSQL pass of scripts/test leaves it out
pytestmark = pytest.mark.store_independent

STDIO: dict[str, Any] = {
    "name": "files",
    "command": ["python", "-m", "some_mcp_server"],
    "tools": ["read_file", "list_directory"],
    "owner": "team-docs",
    "justification": "agents read the shared drive",
    "expires": dt.date(2027, 3, 31),
}


def routes(*rows: dict[str, Any]) -> tuple[McpRoute, ...]:
    return parse_config({"gateway": {"mcp": list(rows)}}, path=None, env={}).mcp_routes


def refused(row: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        routes(row)
    return info.value


def test_stdio_route_as_the_issue_writes_it() -> None:
    (route,) = routes(STDIO)
    assert route.stdio and route.command == ("python", "-m", "some_mcp_server") and route.url == ""
    assert route.audience("https://gw.example") == "https://gw.example/mcp/files"
    assert route.allows("read_file") and not route.allows("write_file")
    assert route.scope_prefix == "tool:" and route.secret == "" and route.injection is None


def test_http_route_with_a_vaulted_secret() -> None:
    row = {k: v for k, v in STDIO.items() if k != "command"} | {
        "url": "https://mcp.example/mcp",
        "secret": "mcp-key",
        "header": "X-Api-Key",
        "template": "{secret}",
        "tools": ["*"],
    }
    (route,) = routes(row)
    assert not route.stdio and route.url == "https://mcp.example/mcp"
    assert route.injection is not None and route.injection.header == "X-Api-Key"
    assert route.allows("anything")


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"url": "https://mcp.example/mcp"}, "gateway.mcp[0]"),  # both command and url
        ({"command": None}, "gateway.mcp[0]"),  # neither
        ({"secret": "k"}, "gateway.mcp[0].secret"),  # a stdio server never gets a secret
        ({"header": "X-Key"}, "gateway.mcp[0].inject"),  # injection settings without a secret
        ({"tools": []}, "gateway.mcp[0].tools"),
        ({"tools": ["read file"]}, "gateway.mcp[0].tools"),
        ({"name": "Files"}, "gateway.mcp[0].name"),
        ({"expires": "soon"}, "gateway.mcp[0].expires"),
        ({"owner": None}, "gateway.mcp[0].owner"),
        ({"env": {"A": 1}}, "gateway.mcp[0].env"),
        ({"max_calls_per_task": 0}, "gateway.mcp[0].max_calls_per_task"),
        ({"scope_prefix": "tool: "}, "gateway.mcp[0].scope_prefix"),
        ({"surprise": 1}, "gateway.mcp[0].surprise"),
    ],
)
def test_bad_route_refused_naming_the_key(change: dict[str, Any], key: str) -> None:
    row = {k: v for k, v in (STDIO | change).items() if v is not None}
    assert refused(row).key == key


def test_http_url_must_be_http() -> None:
    row = {k: v for k, v in STDIO.items() if k != "command"} | {"url": "file:///etc/passwd"}
    assert refused(row).key == "gateway.mcp[0].url"


def test_duplicate_names_refused() -> None:
    with pytest.raises(ConfigError, match="used twice"):
        routes(STDIO, STDIO)


def test_an_mcp_route_needs_a_valid_gateway_url() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"gateway": {"url": "not a url", "mcp": [STDIO]}}, path=None, env={})
    assert info.value.key == "gateway.url"
