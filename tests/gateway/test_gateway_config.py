"""``[[gateway.routes]]``: every route is a registered bearer exception, validated with the rest of the config.

A route needs an owner, a justification, an expiry date and an allowlist; injection
settings are checked per mode (a template with ``{secret}`` once, a header name, a
query parameter name). The documented default query parameter, ``api_key``, must load.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from tether.config import parse_config
from tether.errors import ConfigError

# runs the same whatever TETHER_TEST_STORE says: the PostgreSQL pass of scripts/test leaves it out
pytestmark = pytest.mark.store_independent

BASE: dict[str, Any] = {
    "name": "crm",
    "upstream": "https://crm.example/api",
    "secret": "crm-key",
    "allow": ["GET /v1/*"],
    "owner": "team-crm",
    "justification": "no OAuth at the vendor",
    "expires": dt.date(2099, 1, 1),
}


def routes(**changes: Any) -> Any:
    row = {**BASE, **changes}
    for key in [k for k, v in row.items() if v is None]:
        del row[key]
    return parse_config({"gateway": {"routes": [row]}}, path=None, env={}).routes


def test_a_complete_route_loads() -> None:
    [route] = routes()
    assert route.name == "crm" and route.upstream == "https://crm.example/api"
    assert route.injection.mode == "header" and route.injection.template == "Bearer {secret}"
    assert route.audience("http://127.0.0.1:8710") == "http://127.0.0.1:8710/routes/crm"
    assert (route.max_requests_per_task, route.max_requests_per_second, route.max_session_seconds) == (100, 10, 900)


def test_query_injection_with_the_default_parameter_loads() -> None:
    """``inject = "query"`` alone uses the default parameter ``api_key`` — which must then be valid."""
    [route] = routes(inject="query")
    assert route.injection.query_param == "api_key"


@pytest.mark.parametrize("name", ["api_key", "access_token", "apikey", "key"])
def test_common_query_parameter_names_load(name: str) -> None:
    [route] = routes(inject="query", query_param=name)
    assert route.injection.query_param == name


@pytest.mark.parametrize("missing", ["owner", "justification", "expires", "allow", "secret", "upstream"])
def test_a_route_without_its_registration_is_refused(missing: str) -> None:
    with pytest.raises(ConfigError, match=missing):
        routes(**{missing: None})
    assert routes()  # positive control


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"template": "Bearer"}, "template"),
        ({"template": "{secret} {secret}"}, "template"),
        ({"header": "X Bad"}, "header"),
        ({"inject": "cookie"}, "inject"),
        ({"allow": ["GET /v1/../admin"]}, "allow"),
        ({"allow": []}, "allow"),
        ({"expires": "someday"}, "expires"),
        ({"upstream": "ftp://x"}, "upstream"),
        ({"upstream": "https://x/?a=1"}, "upstream"),
        ({"max_requests_per_task": 0}, "max_requests_per_task"),
        ({"timeout": 0}, "timeout"),
        ({"name": "Bad_Name"}, "name"),
        ({"unknown": 1}, "unknown"),
        ({"max_connections": 0}, "max_connections"),
        ({"max_connections": 2.5}, "max_connections"),
        ({"max_in_flight_per_task": 0}, "max_in_flight_per_task"),
        ({"max_connections": 4, "max_in_flight_per_task": 5}, "max_in_flight_per_task"),
        ({"max_call_seconds": 0}, "max_call_seconds"),
        ({"max_call_seconds": 3601}, "max_call_seconds"),
        ({"max_call_seconds": True}, "max_call_seconds"),
        ({"max_call_seconds": "60"}, "max_call_seconds"),
        ({"timeout": 30, "max_call_seconds": 20}, "max_call_seconds"),
    ],
)
def test_invalid_route_settings_are_refused(changes: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        routes(**changes)
    assert routes()  # positive control


def test_connection_settings_default_to_a_pool_a_deadline_and_half_the_pool_per_task() -> None:
    """Issue 12 finding 13: each route its own pool, a total deadline per call, an in-flight cap per task."""
    [route] = routes()
    assert (route.max_connections, route.max_in_flight_per_task, route.max_call_seconds) == (64, 32, 60.0)
    [small] = routes(max_connections=5)
    assert small.max_in_flight_per_task == 2  # half the pool, so one task cannot hold all of it
    assert routes(max_connections=1)[0].max_in_flight_per_task == 1
    [slow] = routes(timeout=120)
    assert slow.max_call_seconds == 120.0  # never shorter than the route's timeout
    [tuned] = routes(max_connections=4, max_in_flight_per_task=4, max_call_seconds=2.5, timeout=1)
    assert (tuned.max_connections, tuned.max_in_flight_per_task, tuned.max_call_seconds) == (4, 4, 2.5)


def test_in_flight_and_deadline_errors_name_the_key_and_the_limit() -> None:
    with pytest.raises(ConfigError, match=r"max_in_flight_per_task.*`max_connections` \(4\)"):
        routes(max_connections=4, max_in_flight_per_task=5)
    with pytest.raises(ConfigError, match=r"max_call_seconds.*`timeout` \(30 seconds\)"):
        routes(timeout=30, max_call_seconds=20)
    assert routes(max_connections=4, max_in_flight_per_task=4, timeout=30, max_call_seconds=30)  # positive control


def test_two_routes_with_one_name_are_refused() -> None:
    with pytest.raises(ConfigError, match="twice"):
        parse_config({"gateway": {"routes": [BASE, BASE]}}, path=None, env={})
    assert len(parse_config({"gateway": {"routes": [BASE, {**BASE, "name": "crm2"}]}}, path=None, env={}).routes) == 2
