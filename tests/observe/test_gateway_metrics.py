"""``GET /metrics`` of a real gateway on loopback: calls by route and status, latency, feed lag, suspensions.

One STS, one legacy upstream and one gateway for the module (``gwkit``); each test
uses its own task and compares two scrapes. The allowed call is counted after the response,
just before its ``gateway.result`` record is written, so that record is awaited.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gateway"))

from gwkit import (
    KEY,
    GatewayEnv,
    Upstream,
    encoded_forms,
    gateway_toml,
    put_secret_sync,
    route_toml,
    serve_gateway,
    serve_upstream,
    task_state,
    wait_until,
)
from obskit import by_label, check_labels, delta, scrape, value

from helpers import ADMIN, AGENT, QUIET_MONITOR, running_sts
from tether.config import load_config
from tether.web.server import free_port

CALLS = "tether_gateway_calls_total"
SECONDS = "tether_gateway_seconds"
STALE_AFTER = 10
APIKEY: dict[str, Any] = {"inject": "header", "header": "X-Api-Key", "template": "{secret}", "max_requests_per_second": 1000}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayEnv]:
    """STS (its audit-stream monitor off: its suspensions would move counters too), upstream and gateway."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TETHER_MONITOR_ENABLED", "false")
        yield from _gateway_env(tmp_path_factory)


def _gateway_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayEnv]:
    upstream, elsewhere = Upstream(), Upstream()
    port = free_port()
    with serve_upstream(elsewhere), serve_upstream(upstream) as up:
        routes = [
            route_toml("apikey", f"{up.url}/apikey", **APIKEY, max_requests_per_task=1000),
            route_toml("tiny", f"{up.url}/apikey", **APIKEY, max_requests_per_task=1),
        ]
        settings = gateway_toml(port, suspend_after_refusals=1000, suspend_on_cap=True, stale_after=STALE_AFTER)
        extra = settings + "\n" + "\n".join(routes) + "\n" + QUIET_MONITOR
        with running_sts(tmp_path_factory.mktemp("gwm"), extra_toml=extra) as sts:
            put_secret_sync(sts.config, "legacy-key", upstream.key)
            with serve_gateway(sts.config, sts) as gateway:
                env = GatewayEnv(sts=sts, config=sts.config, gateway=gateway, upstream=upstream, elsewhere=elsewhere,
                                 down_port=free_port())  # fmt: skip
                try:
                    yield env
                finally:
                    env.close()


def _forbidden(env: GatewayEnv, task_id: str) -> list[str]:
    return [ADMIN, AGENT, "spiffe://", "eyJ", "http", task_id, *encoded_forms(KEY)]


def test_calls_are_counted_by_route_and_status(gw: GatewayEnv) -> None:
    caller = gw.caller("apikey")
    assert caller.get("apikey", "/v1/items").status_code == 200  # the session and hop token exist before the scrape
    wait_until(lambda: bool(gw.audit("gateway.result", caller.task["id"])), what="the first call's count")
    before = scrape(gw.url)

    assert caller.get("apikey", "/v1/items").status_code == 200
    outside = caller.get("apikey", "/v1/admin")
    assert outside.status_code == 403 and outside.json()["error"] == "access_denied"
    anonymous = httpx.get(gw.aud("apikey") + "/v1/items", trust_env=False)
    assert anonymous.status_code == 401

    wait_until(lambda: delta(before, scrape(gw.url), CALLS, route="apikey", status="200") == 1, what="the allowed call")
    after = scrape(gw.url)
    assert delta(before, after, CALLS, route="apikey", status="403") == 1
    assert delta(before, after, CALLS, route="apikey", status="401") == 1
    assert delta(before, after, SECONDS + "_count", route="apikey") == 3
    assert delta(before, after, SECONDS + "_bucket", route="apikey", le="+Inf") == 3
    assert "apikey" in by_label(after, CALLS, "route")  # (other test modules of this process add their own routes)
    check_labels(after, _forbidden(gw, caller.task["id"]))


def test_unknown_routes_are_not_counted(gw: GatewayEnv) -> None:
    """A route name comes from the URL: only configured names may become labels (bounded series)."""
    before = scrape(gw.url)
    assert httpx.get(gw.url + "/routes/made-up-route/x", trust_env=False).status_code == 404
    after = scrape(gw.url)
    assert "made-up-route" not in by_label(after, CALLS, "route")
    assert {k: v for k, v in after.items() if k[0] == CALLS} == {k: v for k, v in before.items() if k[0] == CALLS}


def test_a_cap_hit_suspension_is_counted_as_a_task_revocation(gw: GatewayEnv) -> None:
    caller = gw.caller("tiny")
    assert caller.get("tiny", "/v1/items").status_code == 200
    wait_until(lambda: bool(gw.audit("gateway.result", caller.task["id"])), what="the first call's count")
    before = scrape(gw.url)
    capped = caller.get("tiny", "/v1/items")
    assert capped.status_code == 429
    wait_until(lambda: task_state(gw.sts, caller.task["id"]) == "suspended", what="the suspension")
    after = scrape(gw.url)
    assert delta(before, after, "tether_revocations_total", kind="task") == 1
    assert delta(before, after, CALLS, route="tiny", status="429") == 1


def test_feed_lag_is_measured_at_scrape_time(gw: GatewayEnv) -> None:
    lag = value(scrape(gw.url), "tether_feed_lag_seconds")
    assert math.isfinite(lag)
    assert 0 <= lag <= STALE_AFTER  # the gateway's view is fresh (its clock is the STS's manual clock)


def test_gateway_metrics_disabled_is_404(gw: GatewayEnv) -> None:
    port = free_port()
    assert gw.config.path is not None
    env = {
        "TETHER_METRICS_ENABLED": "false",
        "TETHER_GATEWAY_PORT": str(port),
        "TETHER_GATEWAY_URL": f"http://127.0.0.1:{port}",
    }
    config = load_config(Path(gw.config.path), env=env)
    with serve_gateway(config, gw.sts):
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", trust_env=False).status_code == 200  # positive control
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False)
        assert response.status_code == 404
        assert "tether_" not in response.text
