"""Unattributed gateway refusals are counted per source and interval (issue 12 finding 10).

Runs with the deployment default (``[audit] refusal_interval = 60``), not the suite's
"every refusal" override: a flood of requests with no token leaves one ``gateway.refused``
record per interval, while a proven caller's refusals stay one record each.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gwkit import GatewayEnv, Upstream, gateway_toml, route_toml, serve_env, serve_upstream

from tether.web.server import free_port


@pytest.fixture
def counting(tmp_path: Path) -> Iterator[GatewayEnv]:
    upstream = Upstream()
    with serve_upstream(upstream) as up:
        apikey = {"inject": "header", "header": "X-Api-Key", "template": "{secret}"}
        toml = gateway_toml(free_port()) + "\n" + route_toml("apikey", f"{up.url}/apikey", **apikey)
        toml += "\n[audit]\nrefusal_interval = 60\n"  # the deployment default
        with serve_env(tmp_path, toml, upstream) as env:
            yield env


def test_a_flood_without_tokens_is_one_record_per_interval(counting: GatewayEnv) -> None:
    gw = counting
    with httpx.Client(trust_env=False) as http:
        for _ in range(60):
            assert http.get(gw.url + "/routes/apikey/v1/items").status_code == 401
    anonymous = [r for r in gw.audit("gateway.refused") if r.principal is None]
    assert len(anonymous) == 1, [(r.error, r.detail.get("reason")) for r in anonymous]
    assert anonymous[0].detail["source"] == "127.0.0.1"
    # positive control: a proven caller's refusals (outside the allowlist) are each recorded
    caller = gw.caller("apikey")
    for _ in range(3):
        assert caller.call("GET", "apikey", "/v1/admin").status_code == 403
    assert len([r for r in gw.audit("gateway.refused") if r.principal is not None]) == 3
