"""Issue 12 findings 7 and 8: method and URL overrides never reach the upstream.

The allowlist judges ``GET /v1/items``; an upstream framework that honours
``X-HTTP-Method-Override: DELETE``, ``X-Original-URL: /admin`` or a ``_method`` form field
would run another call. Override headers are dropped by a rule on the words of their names
(every spelling and case: ``_`` like ``-``); a query parameter or a form field (urlencoded or
multipart body) naming a method override refuses the call with 400 ``invalid_request`` and
never reaches the upstream. Each has a positive control on the same agent, route and fixture.
"""

from __future__ import annotations

import gzip
import socket
from http.client import HTTPResponse
from typing import Any

import httpx
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
    "method_override=PATCH", "page=2;_method=DELETE",
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


# -- issue 12 finding 8: method overrides in form bodies -------------------------------------------
def multipart(disposition: str, value: bytes = b"DELETE", *, boundary: str = "XyZ", newline: str = "\r\n") -> bytes:
    """One part under ``disposition``, then the closing delimiter."""
    head = f"--{boundary}{newline}Content-Disposition: {disposition}{newline}{newline}".encode()
    return head + value + f"{newline}--{boundary}--{newline}".encode()


URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data; boundary=XyZ"
#: (Content-Type or None for none, body): each a field an upstream framework reads a method from.
FORM_OVERRIDES = [
    (URLENCODED, b"_method=DELETE"),
    (URLENCODED + "; charset=utf-8", b"name=widget&_method=DELETE"),
    ("Application/X-WWW-Form-URLEncoded ;charset=UTF-8", b"%5Fmethod=delete"),
    (URLENCODED + ", text/plain", b"X-HTTP-Method-Override=DELETE"),
    (URLENCODED, b"name=widget;_method=DELETE"),
    (URLENCODED, b"_method%5B%5D=DELETE"),
    ("", b"_method=DELETE"),  # Rack reads an empty media type as urlencoded
    ("; charset=utf-8", b"_method=DELETE"),
    (MULTIPART, multipart('form-data; name="_method"')),
    ('Multipart/Form-Data; charset=utf-8; BOUNDARY="XyZ"', multipart("form-data; name=_method")),
    (MULTIPART, multipart('form-data; name="_method"', newline="\n")),
    (MULTIPART, multipart('form-data; name="x_http_method_override"; filename="a.txt"')),
    (MULTIPART, multipart("form-data; name*=utf-8''%5Fmethod")),
    (MULTIPART, multipart('form-data; name*0="_met"; name*1="hod"')),
    (MULTIPART, multipart('form-data;\r\n name="_method"')),
    (MULTIPART, multipart('form-data; name="_m\\ethod"')),
    ("multipart/mixed; boundary=XyZ", multipart('form-data; name="_method"')),
]  # fmt: skip


def post(agent: Caller, route: str, path: str, body: Any, content_type: str | None, **headers: str) -> httpx.Response:
    sent = {**({"Content-Type": content_type} if content_type is not None else {}), **headers}
    return agent.call("POST", route, path, content=body, headers=sent)


@pytest.mark.parametrize(("content_type", "body"), FORM_OVERRIDES, ids=[f"form{i}" for i in range(len(FORM_OVERRIDES))])
def test_a_form_field_naming_a_method_override_is_refused_and_never_forwarded(
    gw: GatewayEnv, agent: Caller, content_type: str | None, body: bytes
) -> None:
    before = len(gw.upstream.log)
    response = post(agent, "apikey", "/v1/items", body, content_type)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request"), response.text
    chunked = post(agent, "apikey", "/v1/items", iter([body[:5], body[5:]]), content_type)  # no Content-Length
    assert (chunked.status_code, chunked.json()["error"]) == (400, "invalid_request"), chunked.text
    assert len(gw.upstream.log) == before, "a method override in a form body reached the upstream"
    # positive control on the same agent and route: the same call without the override field
    ok = post(agent, "apikey", "/v1/items", b"name=widget", URLENCODED)
    assert ok.status_code == 200 and gw.upstream.last()["body"] == b"name=widget"


def test_form_bodies_with_ordinary_fields_are_forwarded_byte_for_byte(gw: GatewayEnv, agent: Caller) -> None:
    """Field values, file contents and file names may say ``method``: only field names are judged."""
    form = b"name=widget&qty=2&note=use+_method%3DDELETE+to+delete&url=https%3A%2F%2Fexample.org"
    upload = multipart('form-data; name="file"; filename="method.txt"', b"_method=DELETE\r\nX-HTTP-Method: PUT")
    for content_type, body in [(URLENCODED + "; charset=utf-8", form), (MULTIPART, upload)]:
        for sent in (body, iter([body[:7], body[7:]])):  # with a Content-Length, and chunked
            response = post(agent, "apikey", "/v1/items", sent, content_type)
            assert response.status_code == 200, response.text
            got = gw.upstream.last()
            assert (got["method"], got["body"], got["headers"]["content-type"]) == ("POST", body, [content_type])


def test_a_body_without_content_type_reaches_the_upstream_as_octet_stream(gw: GatewayEnv, agent: Caller) -> None:
    """Rack reads a POST without a media type as a form; the upstream is never sent one: the
    gateway's client labels it ``application/octet-stream``, which no framework reads fields from."""
    for sent in (b"_method=DELETE", iter([b"_meth", b"od=DELETE"])):
        response = post(agent, "apikey", "/v1/items", sent, None)
        assert response.status_code == 200, response.text
        got = gw.upstream.last()
        assert (got["body"], got["headers"]["content-type"]) == (b"_method=DELETE", ["application/octet-stream"])


def test_a_json_body_is_no_form_and_is_forwarded(gw: GatewayEnv, agent: Caller) -> None:
    body = b'{"_method": "DELETE", "X-HTTP-Method-Override": "DELETE"}'
    response = post(agent, "apikey", "/v1/items", body, "application/json")
    assert response.status_code == 200, response.text
    assert gw.upstream.last()["body"] == body
    # and the same fields as a form are refused (negative control on the same call)
    assert post(agent, "apikey", "/v1/items", b"_method=DELETE", URLENCODED).status_code == 400


def test_forms_that_cannot_be_judged_are_refused(gw: GatewayEnv, agent: Caller) -> None:
    """A content-coded form (decoded upstream, perhaps, but not here) and Content-Type fields that disagree."""
    before = len(gw.upstream.log)
    coded = post(agent, "apikey", "/v1/items", gzip.compress(b"_method=DELETE"), URLENCODED, **{"Content-Encoding": "gzip"})
    assert (coded.status_code, coded.json()["error"]) == (400, "invalid_request")
    headers = [("Content-Type", "application/json"), ("Content-Type", URLENCODED)]
    mixed = agent.call("POST", "apikey", "/v1/items", content=b"_method=DELETE", headers=headers)
    assert (mixed.status_code, mixed.json()["error"]) == (400, "invalid_request")
    assert len(gw.upstream.log) == before
    same = post(agent, "apikey", "/v1/items", b"name=widget", URLENCODED, **{"Content-Encoding": "identity"})
    assert same.status_code == 200  # positive control: identity is no coding


def test_a_form_body_over_the_routes_cap_is_413_and_never_forwarded(gw: GatewayEnv) -> None:
    agent = gw.caller("small")  # max_request_bytes = 64
    before = len(gw.upstream.log)
    big = b"name=" + b"w" * 100
    for sent in (big, iter([big[:50], big[50:]])):
        response = post(agent, "small", "/upload", sent, URLENCODED)
        assert (response.status_code, response.json()["error"]) == (413, "request_too_large"), response.text
    assert len(gw.upstream.log) == before
    assert post(agent, "small", "/upload", b"name=widget", URLENCODED).status_code == 200  # positive control
    assert gw.upstream.last()["body"] == b"name=widget"


def test_a_form_body_that_stops_arriving_is_refused_at_the_routes_timeout(gw: GatewayEnv) -> None:
    """Route ``slow`` (0.3 s timeout): half a chunked form body, then nothing; the gateway answers
    without waiting for the rest, and forwards nothing."""
    agent = gw.caller("slow")
    url = gw.aud("slow") + "/v1/items"
    token = agent.token(gw.aud("slow"))
    head = (f"POST /routes/slow/v1/items HTTP/1.1\r\nHost: {gw.url.split('//')[1]}\r\nAuthorization: DPoP {token}\r\n"
            f"DPoP: {agent.key.proof('POST', url, access_token=token)}\r\nContent-Type: {URLENCODED}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n5\r\nname=\r\n")  # fmt: skip
    before = len(gw.upstream.log)
    host, port = gw.url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        response = HTTPResponse(sock, method="POST")
        response.begin()
        body = response.read()
        response.close()
    assert response.status == 400 and b'"invalid_request"' in body
    assert len(gw.upstream.log) == before
    ok = post(agent, "slow", "/v1/items", b"name=widget", URLENCODED)  # positive control: the whole body in time
    assert ok.status_code == 200 and gw.upstream.last()["body"] == b"name=widget"
