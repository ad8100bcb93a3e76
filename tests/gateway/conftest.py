"""One STS, one legacy upstream and one gateway per module (plus a strict gateway for suspension).

Routes of the main gateway (all on the same upstream, whose first path segment names
the credential it demands):

``apikey``  ``X-Api-Key: {secret}``            ``legacy``  ``X-Legacy-Token: Token {secret}``
``bearer``  ``Authorization: Bearer {secret}``  ``query``   ``?apikey={secret}``
``basic``   basic auth as ``svc-user``          ``capped``  100 calls per task, 1000/s
``rate``    2 calls per second                 ``small``   64-byte requests, 256-byte responses
``expired`` expired in 2001                    ``slow``    0.3 s upstream timeout
``down``    an upstream nobody listens on         ``nosecret`` names a vault entry that does not exist
``tiny``    3 calls per task                  ``trickle`` an upstream that drips its head, 0.3 s timeout
``coded``   a socket-level upstream answering ``/te/{variant}`` under the transfer codings of
            ``gwkit.TRANSFER_CODINGS``
``rolled``  its own vault entry, ``rolled-key`` (rollback tests write its row)

The main gateway never suspends (refusal bursts of 1000, no suspension on a cap hit) so
negative tests can be followed by positive controls on the same task; the strict
gateway suspends after 3 refusals and on a cap hit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from gwkit import (
    QUERY_PARAM,
    USERNAME,
    GatewayEnv,
    Upstream,
    gateway_toml,
    route_toml,
    send_coded,
    serve_env,
    serve_raw,
    serve_trickle,
    serve_upstream,
)

from helpers import QUIET_MONITOR
from tether.web.server import free_port

SMALL_ALLOW = ["POST /upload", "GET /big", "GET /bigstream", "GET /v1/items"]
FAST: dict[str, Any] = {"max_requests_per_second": 1000, "max_requests_per_task": 1000}


def main_routes(up: str, down_port: int, trickle_port: int, coded: str) -> str:
    apikey: dict[str, Any] = {"inject": "header", "header": "X-Api-Key", "template": "{secret}"}
    rows = [
        route_toml("apikey", f"{up}/apikey", **apikey, **FAST),
        route_toml("legacy", f"{up}/legacy", inject="header", header="X-Legacy-Token", template="Token {secret}", **FAST),
        route_toml("bearer", f"{up}/bearer", **FAST),
        route_toml("query", f"{up}/query", inject="query", query_param=QUERY_PARAM, **FAST),
        route_toml("basic", f"{up}/basic", inject="basic", username=USERNAME, **FAST),
        route_toml("capped", f"{up}/apikey", **apikey, max_requests_per_task=100, max_requests_per_second=1000),
        route_toml("rate", f"{up}/apikey", **apikey, max_requests_per_second=2),
        route_toml("small", f"{up}/apikey", **apikey, **FAST, allow=SMALL_ALLOW, max_request_bytes=64, max_response_bytes=256),
        route_toml("expired", f"{up}/apikey", **apikey, **FAST, expires="2001-01-01"),
        route_toml(
            "slow", f"{up}/apikey", **apikey, **FAST, allow=["GET /slow", "GET /v1/items", "POST /v1/items"], timeout=0.3
        ),
        route_toml("down", f"http://127.0.0.1:{down_port}/apikey", **apikey, **FAST),
        route_toml("nosecret", f"{up}/apikey", **apikey, **FAST, secret="absent-key"),
        route_toml("tiny", f"{up}/apikey", **apikey, max_requests_per_task=3, max_requests_per_second=1000),
        route_toml("trickle", f"http://127.0.0.1:{trickle_port}/apikey", **apikey, **FAST, timeout=0.3),
        route_toml("coded", f"{coded}/apikey", **apikey, **FAST, allow=["GET /te/*"]),
        route_toml("rolled", f"{up}/apikey", **apikey, **FAST, secret="rolled-key"),
    ]
    return "\n".join(rows)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayEnv]:
    upstream, elsewhere = Upstream(), Upstream()
    gw_port, down_port = free_port(), free_port()
    with (
        serve_upstream(elsewhere),
        serve_upstream(upstream) as up,
        serve_trickle() as trickle_port,
        serve_raw(send_coded) as coded,
    ):
        up.elsewhere = elsewhere.url
        settings = gateway_toml(gw_port, suspend_after_refusals=1000, suspend_on_cap=False, secret_cache_seconds=1)
        extra = settings + "\n" + main_routes(up.url, down_port, trickle_port, coded.url) + "\n" + QUIET_MONITOR
        with serve_env(tmp_path_factory.mktemp("gw"), extra, upstream, elsewhere=elsewhere, down_port=down_port) as env:
            yield env
