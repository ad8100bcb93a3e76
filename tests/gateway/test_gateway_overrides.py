"""Issue 12 finding 7: method and URL overrides never reach the upstream.

The allowlist judges ``GET /v1/items``; an upstream framework that honours
``X-HTTP-Method-Override: DELETE`` or ``X-Original-URL: /admin`` would run another call.
Override headers are dropped by a rule on the words of their names (every spelling and
case: ``_`` like ``-``); a query parameter naming a method override refuses the call with
400 ``invalid_request`` and never reaches the upstream. Each has a positive control on the
same agent, route and fixture.
"""

from __future__ import annotations

import pytest
from gwkit import Caller, GatewayEnv

from tether.errors import InvalidRequest
from tether.gateway.inject import Injection, forward_headers
from tether.gateway.overrides import check_query, is_override_header

HEADER = Injection(mode="header", header="X-Api-Key", template="{secret}")

#: Each a method or URL an upstream framework or proxy layer would act on instead of the request line.
OVERRIDE_HEADERS = [
    "X-HTTP-Method-Override", "x-http-method-override", "X-HTTP-METHOD-OVERRIDE", "X_HTTP_Method_Override",
    "X-Method-Override", "X-HTTP-Method", "X-Original-Method", "X-Forwarded-Method", "XHTTPMethodOverride",
    "X-Original-URL", "X-Rewrite-URL", "X-Override-URL", "X-Original-URI", "X-Forwarded-Uri", "X-Forwarded-Prefix",
    "X-Envoy-Original-Path", "X-Forwarded-Path", "x-rewrite-url", "X_Original_Url", "X-Override",
]  # fmt: skip
#: Ordinary request headers an agent sends: all still forwarded.
PLAIN_HEADERS = ["Accept", "Content-Type", "X-Trace", "X-Request-ID", "If-None-Match", "Accept-Language", "X-Keep"]

OVERRIDE_QUERIES = [
    "_method=DELETE", "method=DELETE", "_METHOD=delete", "_httpMethod=DELETE", "X-HTTP-Method-Override=DELETE",
    "x_http_method=PUT", "%5Fmethod=DELETE", "_me%74hod=DELETE", "page=2&_method=DELETE", "_method",
    "method_override=PATCH",
]  # fmt: skip
PLAIN_QUERIES = ["page=2", "q=method", "url=https%3A%2F%2Fexample.org%2F", "path=%2Fa%2Fb", "sort=-created", ""]


# -- the rule (pure) -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", OVERRIDE_HEADERS)
def test_override_headers_are_dropped_whatever_their_spelling(name: str) -> None:
    assert is_override_header(name)
    sent = [(name, "DELETE"), *((plain, "1") for plain in PLAIN_HEADERS)]
    assert forward_headers(sent, HEADER) == [(plain, "1") for plain in PLAIN_HEADERS]  # positive control


@pytest.mark.parametrize("query", OVERRIDE_QUERIES)
def test_a_query_naming_a_method_override_is_invalid_request(query: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_query(query)
    assert caught.value.error == "invalid_request"
    for plain in PLAIN_QUERIES:  # positive control: url and path are ordinary data in a query
        check_query(plain)


# -- at the running gateway ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def agent(gw: GatewayEnv) -> Caller:
    return gw.caller("apikey")


def test_BCP_14_override_headers_do_not_reach_the_upstream(gw: GatewayEnv, agent: Caller) -> None:
    before = len(gw.upstream.log)
    headers = [(name, "DELETE" if "ethod" in name.lower() else "/admin") for name in OVERRIDE_HEADERS]
    response = agent.get("apikey", "/v1/items", headers=[*headers, ("X-Keep", "kept")])
    assert response.status_code == 200, response.text
    [got] = gw.upstream.log[before:]
    assert got["method"] == "GET" and got["path"] == "/apikey/v1/items"
    leaked = sorted(name for name in got["headers"] if is_override_header(name))
    assert leaked == [], f"override headers reached the upstream: {leaked}"
    assert got["headers"]["x-keep"] == ["kept"]  # positive control: an ordinary header on the same call


def test_a_query_method_override_is_refused_and_never_forwarded(gw: GatewayEnv, agent: Caller) -> None:
    before = len(gw.upstream.log)
    for query in ("_method=DELETE", "page=2&X-HTTP-Method-Override=DELETE", "%5Fmethod=DELETE", "method=items.delete"):
        response = agent.get("apikey", f"/v1/items?{query}")
        assert response.status_code == 400, (query, response.text)
        assert response.json()["error"] == "invalid_request"
    assert len(gw.upstream.log) == before, "a method override in the query reached the upstream"
    ok = agent.get("apikey", "/v1/items?page=2&url=https%3A%2F%2Fexample.org")  # positive control
    assert ok.status_code == 200
    assert gw.upstream.last()["query"] == "page=2&url=https%3A%2F%2Fexample.org"
