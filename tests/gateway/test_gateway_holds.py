"""Issue 12 finding 13: no call holds the gateway — a pool per route, a total deadline per call,
an in-flight cap per task, released on every exit path.

Its own STS, upstream and gateway (the tests hold upstream connections on purpose). The
upstream's ``/hold`` answers when the test releases it, ``/drip`` streams 1200 bytes over
3 s (a chunk every 50 ms: never silent long enough for a per-read timeout) and
``/drip-whole`` trickles a 60-byte body that has a ``Content-Length``.

``pooled``    2 connections (so 1 call in flight per task)
``open``      the same upstream host, default pool
``capped``    2 calls in flight per task, 8 connections
``single``    1 call in flight per task, 64-byte requests, 0.5 s timeout, 1 s deadline
``deadline``  0.5 s timeout, 1 s deadline for the whole call
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from gwkit import (
    Caller,
    GatewayEnv,
    Upstream,
    gateway_toml,
    route_toml,
    serve_env,
    serve_upstream,
    wait_until,
)

from helpers import QUIET_MONITOR
from tether.web.server import free_port

ALLOW = ["GET /hold", "GET /v1/items", "GET /drip", "GET /drip-whole", "GET /bigstream", "POST /upload"]
APIKEY: dict[str, Any] = {"inject": "header", "header": "X-Api-Key", "template": "{secret}", "allow": ALLOW,
                          "max_requests_per_second": 1000, "max_requests_per_task": 1000}  # fmt: skip
SINGLE: dict[str, Any] = {**APIKEY, "max_in_flight_per_task": 1, "max_request_bytes": 64, "timeout": 0.5,
                          "max_call_seconds": 1}  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayEnv]:
    upstream = Upstream()
    with serve_upstream(upstream) as up:
        routes = [
            route_toml("pooled", f"{up.url}/apikey", **APIKEY, max_connections=2),
            route_toml("open", f"{up.url}/apikey", **APIKEY),
            route_toml("capped", f"{up.url}/apikey", **APIKEY, max_connections=8, max_in_flight_per_task=2),
            route_toml("single", f"{up.url}/apikey", **SINGLE),
            route_toml("deadline", f"{up.url}/apikey", **APIKEY, timeout=0.5, max_call_seconds=1),
        ]
        settings = gateway_toml(free_port(), suspend_after_refusals=1000, suspend_on_cap=False)
        extra = settings + "\n" + "\n".join(routes) + "\n" + QUIET_MONITOR
        try:
            with serve_env(tmp_path_factory.mktemp("gwholds"), extra, upstream) as gw:
                yield gw
        finally:
            upstream.released.set()


@pytest.fixture
def held(env: GatewayEnv) -> Iterator[Callable[[Caller, str], Future[httpx.Response]]]:
    """``hold(caller, route)``: a ``GET /hold`` in the background, answered when the test ends
    (or sets ``env.upstream.released``); the caller's hop token is fetched first."""
    env.upstream.released.clear()
    pool = ThreadPoolExecutor(max_workers=8)

    def hold(caller: Caller, route: str) -> Future[httpx.Response]:
        caller.token(env.aud(route))
        return pool.submit(caller.get, route, "/hold")

    try:
        yield hold
    finally:
        env.upstream.released.set()
        pool.shutdown(wait=True)


def holding(env: GatewayEnv, count: int) -> None:
    wait_until(lambda: len(env.upstream.requests("/hold")) >= count, what=f"{count} held calls at the upstream")


def results(env: GatewayEnv, caller: Caller) -> list[dict[str, Any]]:
    return [r.detail for r in env.audit("gateway.result", caller.task["id"])]


def idle(env: GatewayEnv, route: str, caller: Caller) -> None:
    task = caller.task["id"]
    wait_until(lambda: env.gateway.in_flight.count(route, task) == 0, what="the call's in-flight slot to be released")


# -- a pool per route -------------------------------------------------------------------------------
def test_a_routes_full_pool_holds_only_that_route(env: GatewayEnv, held: Callable[..., Future[httpx.Response]]) -> None:
    first, second, third = env.caller("pooled", "open"), env.caller("pooled"), env.caller("pooled")
    env.upstream.log.clear()
    holds = [held(first, "pooled"), held(second, "pooled")]
    holding(env, 2)
    hold_peers = {tuple(r["peer"]) for r in env.upstream.requests("/hold")}
    # both connections of `pooled` are taken: a third task's call is admitted and recorded, then waits
    third.token(env.aud("pooled"))
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(third.get, "pooled", "/v1/items")
        wait_until(lambda: bool(env.audit("gateway.call", third.task["id"])), what="the third call's record")
        assert env.gateway.in_flight.count("pooled", third.task["id"]) == 1 and not waiting.done()
        # positive control: another route to the same upstream host has its own pool and is served meanwhile
        assert first.get("open", "/v1/items").status_code == 200
        assert env.upstream.requests("/v1/items") == [env.upstream.last()], "a call went past the route's full pool"
        assert not waiting.done()
        env.upstream.released.set()
        assert [h.result(timeout=10).status_code for h in holds] == [200, 200]
        assert waiting.result(timeout=10).status_code == 200
    # it went out on one of the route's two connections, once one was free
    assert len(hold_peers) == 2 and tuple(env.upstream.last()["peer"]) in hold_peers


# -- an in-flight cap per task ----------------------------------------------------------------------
def test_a_task_over_its_in_flight_cap_is_refused_429(env: GatewayEnv, held: Callable[..., Future[httpx.Response]]) -> None:
    busy, other = env.caller("capped"), env.caller("capped")
    env.upstream.log.clear()
    holds = [held(busy, "capped"), held(busy, "capped")]
    holding(env, 2)
    refused = busy.get("capped", "/v1/items")
    assert refused.status_code == 429 and refused.json()["error"] == "too_many_requests"
    assert refused.headers["retry-after"] == "1"
    assert env.upstream.requests("/v1/items") == [], "a call over the in-flight cap reached the upstream"
    record = env.audit("gateway.refused", busy.task["id"])[-1]
    assert record.error == "too_many_requests" and record.detail["in_flight_cap"] is True
    # positive controls: another task on the same route is served, and so is this one once its calls end
    assert other.get("capped", "/v1/items").status_code == 200
    env.upstream.released.set()
    assert [h.result(timeout=10).status_code for h in holds] == [200, 200]
    idle(env, "capped", busy)
    assert busy.get("capped", "/v1/items").status_code == 200


def test_the_in_flight_slot_is_released_on_every_exit_path(env: GatewayEnv) -> None:
    """``single`` allows one call in flight: after each way a call can end, the next one is served."""
    caller = env.caller("single")
    task = caller.task["id"]

    def next_call_is_served(after: str) -> None:
        idle(env, "single", caller)
        response = caller.get("single", "/v1/items")
        assert response.status_code == 200, f"after {after}: {response.status_code} {response.text}"

    env.upstream.released.clear()
    try:
        assert caller.get("single", "/hold").status_code == 504  # the upstream does not answer in time
    finally:
        env.upstream.released.set()
    next_call_is_served("an upstream timeout")
    assert caller.call("POST", "single", "/upload", content=b"x" * 65).status_code == 413  # after admission
    next_call_is_served("a refused request body")
    with pytest.raises(httpx.RemoteProtocolError):
        caller.get("single", "/drip")  # cut at the 1 s deadline
    next_call_is_served("a call cut at its deadline")
    token = caller.token(env.aud("single"))
    url = env.aud("single") + "/drip"
    headers = {"Authorization": f"DPoP {token}", "DPoP": caller.key.proof("GET", url, access_token=token)}
    with caller.plain.stream("GET", url, headers=headers) as stream:
        assert stream.status_code == 200
        assert next(stream.iter_raw())  # one chunk, then the agent goes away
    next_call_is_served("the agent disconnecting mid-stream")
    cut = [r.get("cut") for r in results(env, caller) if r["path"] == "/drip"]
    assert cut == ["deadline", "client"], cut
    assert env.gateway.in_flight.count("single", task) == 0


# -- a total deadline per call ----------------------------------------------------------------------
def test_a_trickling_body_is_cut_at_the_calls_deadline(env: GatewayEnv) -> None:
    caller = env.caller("deadline")
    with pytest.raises(httpx.RemoteProtocolError):  # aborted, not a short body that looks whole
        caller.get("deadline", "/drip")
    wait_until(lambda: bool(results(env, caller)), what="the call's result record")
    [result] = results(env, caller)
    assert result["status"] == 200 and result["truncated"] is True and result["cut"] == "deadline"
    assert 0 < result["bytes_out"] < 1200
    # positive control: a body that streams within the deadline is relayed whole, uncut
    response = caller.get("deadline", "/bigstream")
    assert response.status_code == 200 and response.content == b"y" * 5000
    wait_until(lambda: len(results(env, caller)) == 2, what="the second result record")
    assert results(env, caller)[-1]["truncated"] is False and "cut" not in results(env, caller)[-1]


def test_a_trickling_body_with_a_length_is_504_at_the_deadline(env: GatewayEnv) -> None:
    """A small body with a ``Content-Length`` is read whole before it is sent: the deadline bounds that read."""
    caller = env.caller("deadline")
    response = caller.get("deadline", "/drip-whole")
    assert response.status_code == 504 and response.json()["error"] == "gateway_timeout"
    assert caller.get("deadline", "/v1/items").status_code == 200  # positive control
