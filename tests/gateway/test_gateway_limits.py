"""Caps and limits: rate, request and response size, session duration, route expiry, timeouts,
an unreachable upstream, and redirects that are relayed (scrubbed) but never followed.

Refusals are 403/413/429 with a JSON reason; upstream failures are 502/504 with a fixed
description — never the secret, never a stack trace.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gwkit import (
    KEY,
    GatewayEnv,
    Upstream,
    encoded_forms,
    gateway_toml,
    route_toml,
    serve_env,
    serve_upstream,
    wait_until,
)

from tether.gateway.routes import route_warnings
from tether.web.server import free_port


def _clean_failure(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    assert set(body) == {"error", "error_description"}
    for form in encoded_forms():
        assert form not in response.text
    assert "Traceback" not in response.text and "httpx" not in response.text


def test_requests_per_second_are_capped_with_retry_after(gw: GatewayEnv) -> None:
    caller = gw.caller("rate")
    statuses = []
    for _ in range(20):  # a cap of 2 per second: a burst of fast calls must hit it
        response = caller.get("rate", "/v1/items")
        statuses.append(response.status_code)
        if response.status_code == 429:
            break
    assert statuses[-1] == 429, statuses
    assert response.json()["error"] == "too_many_requests"
    assert int(response.headers["retry-after"]) >= 1
    # positive controls: the rate is per task, and the same task is served again in a later second
    assert gw.caller("rate").get("rate", "/v1/items").status_code == 200
    wait_until(lambda: caller.get("rate", "/v1/items").status_code == 200, timeout=5, what="the next second")


def test_a_request_body_over_the_cap_with_content_length_is_413(gw: GatewayEnv) -> None:
    caller = gw.caller("small")
    before = len(gw.upstream.log)
    response = caller.call("POST", "small", "/upload", content=b"x" * 65)
    _clean_failure(response, 413, "request_too_large")
    assert len(gw.upstream.log) == before, "an oversized body was forwarded"
    ok = caller.call("POST", "small", "/upload", content=b"x" * 64)  # positive control: exactly the cap
    assert ok.status_code == 200 and ok.json()["bytes"] == 64


def _chunks(count: int, size: int = 16) -> Iterator[bytes]:
    for _ in range(count):
        yield b"c" * size


def test_a_chunked_request_body_growing_past_the_cap_is_413(gw: GatewayEnv) -> None:
    caller = gw.caller("small")
    before = len(gw.upstream.log)
    response = caller.call("POST", "small", "/upload", content=_chunks(10))  # 160 bytes, no Content-Length
    _clean_failure(response, 413, "request_too_large")
    assert all(not r["complete"] or len(r["body"]) <= 64 for r in gw.upstream.log[before:]), "the upstream got it all"
    ok = caller.call("POST", "small", "/upload", content=_chunks(3))  # positive control: 48 bytes, chunked
    assert ok.status_code == 200 and ok.json()["bytes"] == 48


def test_a_response_over_the_cap_with_content_length_is_502(gw: GatewayEnv) -> None:
    caller = gw.caller("small")
    _clean_failure(caller.get("small", "/big"), 502, "bad_gateway")  # 5000 bytes announced, cap 256
    assert caller.get("small", "/v1/items").status_code == 200  # positive control


def test_a_streamed_response_over_the_cap_is_cut_at_the_cap(gw: GatewayEnv) -> None:
    caller = gw.caller("small")
    response = caller.get("small", "/bigstream")  # 5000 bytes, no Content-Length
    assert len(response.content) <= 256
    task = caller.task["id"]
    wait_until(lambda: bool(gw.audit("gateway.result", task)), what="the call's result record")
    result = gw.audit("gateway.result", task)[-1].detail
    assert result["truncated"] is True and result["cut"] == "size"
    assert caller.get("small", "/v1/items").status_code == 200


def test_an_expired_route_refuses_every_call_and_is_warned_about(gw: GatewayEnv) -> None:
    caller = gw.caller("expired", "apikey")
    before = len(gw.upstream.log)
    response = caller.get("expired", "/v1/items")
    assert response.status_code == 403 and response.json()["error"] == "access_denied"
    assert "expired" in response.json()["error_description"]
    assert len(gw.upstream.log) == before
    assert caller.get("apikey", "/v1/items").status_code == 200  # positive control: a current route
    warnings = route_warnings(gw.config.routes, dt.date.today())
    assert any("`expired`" in w and "2001-01-01" in w for w in warnings)
    assert not any("`apikey`" in w for w in warnings)


def test_route_warnings_name_routes_expiring_within_two_weeks() -> None:
    from tether.config import parse_config

    today = dt.date(2030, 6, 1)
    rows = [{"name": name, "upstream": "http://127.0.0.1:1", "secret": "s", "allow": ["GET /x"], "owner": "o",
             "justification": "j", "expires": expires}
            for name, expires in (("soon", dt.date(2030, 6, 6)), ("later", dt.date(2030, 7, 1)),
                                  ("gone", dt.date(2030, 5, 31)), ("today", today))]  # fmt: skip
    routes = parse_config({"gateway": {"routes": rows}}, path=None, env={}).routes
    warnings = route_warnings(routes, today)
    assert any("`soon`" in w and "5 days" in w for w in warnings)
    assert any("`gone`" in w and "expired" in w for w in warnings)
    assert any("`today`" in w and "0 days" in w for w in warnings)
    assert not any("`later`" in w for w in warnings)  # positive control: far enough away


def test_an_upstream_timeout_is_504(gw: GatewayEnv) -> None:
    caller = gw.caller("slow")
    _clean_failure(caller.get("slow", "/slow"), 504, "gateway_timeout")
    assert caller.get("slow", "/v1/items").status_code == 200  # positive control: same route, fast path


def test_an_upstream_that_trickles_its_head_is_504(gw: GatewayEnv) -> None:
    # a byte every 50 ms never trips the 0.3 s per-read timeout; the whole head has a deadline
    _clean_failure(gw.caller("trickle").get("trickle", "/v1/items"), 504, "gateway_timeout")


def test_an_unreachable_upstream_is_502_until_it_comes_up(gw: GatewayEnv) -> None:
    caller = gw.caller("down")
    _clean_failure(caller.get("down", "/v1/items"), 502, "bad_gateway")
    with serve_upstream(Upstream(), gw.down_port) as late:  # positive control: the same route, now reachable
        assert caller.get("down", "/v1/items").status_code == 200
        assert late.last()["headers"]["x-api-key"] == [KEY]


def test_a_redirect_to_another_host_is_not_followed_and_its_location_is_scrubbed(gw: GatewayEnv) -> None:
    caller = gw.caller("apikey", "query")
    for route in ("apikey", "query"):
        response = caller.get(route, "/redirect")
        assert response.status_code == 302
        assert response.headers["location"] == f"{gw.elsewhere.url}/steal?key=[REDACTED]"
    assert gw.elsewhere.log == [], "the gateway followed the redirect to another host"
    # positive control: the other host is up and records what it receives
    with httpx.Client(trust_env=False, timeout=5.0) as http:
        assert http.get(gw.elsewhere.url + "/steal").status_code == 401
    assert len(gw.elsewhere.log) == 1


# -- session duration: its own STS, so moving the clock affects no other test --------------------------
@pytest.fixture
def session_env(tmp_path: Path) -> Iterator[GatewayEnv]:
    upstream, elsewhere = Upstream(), Upstream()
    port = free_port()
    with serve_upstream(upstream) as up:
        extra = gateway_toml(port, suspend_after_refusals=1000) + route_toml(
            "session", f"{up.url}/apikey", inject="header", header="X-Api-Key", template="{secret}",
            max_session_seconds=30, max_requests_per_second=1000)  # fmt: skip
        with serve_env(tmp_path, extra, upstream, elsewhere=elsewhere) as env:
            yield env


def test_a_session_longer_than_max_session_seconds_is_refused(session_env: GatewayEnv) -> None:
    env = session_env
    caller = env.caller("session")
    assert caller.get("session", "/v1/items").status_code == 200  # the session starts here
    env.sts.clock.advance(20)
    wait_until(lambda: env.gateway.feed.fresh(env.gateway.clock.now()), what="feed heartbeat")
    assert caller.get("session", "/v1/items").status_code == 200  # inside the 30 s
    env.sts.clock.advance(11)
    wait_until(lambda: env.gateway.feed.fresh(env.gateway.clock.now()), what="feed heartbeat")
    response = caller.get("session", "/v1/items")
    assert response.status_code == 403 and response.json()["error"] == "access_denied"
    assert "session" in response.json()["error_description"]
    # positive control: a task whose session starts now is served by the same route
    assert env.caller("session").get("session", "/v1/items").status_code == 200
