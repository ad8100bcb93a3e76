"""The monitor sees what happens at the gateway: a replayed proof and a token used after its
task ended, each attributed to the task only because the caller proved possession of the
token's key (issue 8's dpop_replay and use_after_end detectors, DPOP-12).

Its own STS and gateway, so a suspension touches no other test's task. A replay proves
nothing about who sent it (issue 12): it is alerted, naming the task, and never suspends it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gwkit import GatewayEnv, Upstream, gateway_toml, route_toml, serve_env, serve_upstream
from gwkit import wait_until as _wait

from helpers import AGENT
from tether.web.server import free_port


@pytest.fixture
def env(tmp_path: Path) -> Iterator[GatewayEnv]:
    upstream, elsewhere = Upstream(), Upstream()
    with serve_upstream(upstream) as up:
        extra = gateway_toml(free_port(), suspend_after_refusals=1000, suspend_on_cap=False) + route_toml(
            "apikey", f"{up.url}/apikey", inject="header", header="X-Api-Key", template="{secret}",
            max_requests_per_second=1000)  # fmt: skip
        with serve_env(tmp_path, extra + "\n[monitor]\ninterval = 1\n", upstream, elsewhere=elsewhere) as gw:
            yield gw


def alerts(env: GatewayEnv, detector: str, task: str) -> list[object]:
    return [r for r in env.sts.audit() if r.kind == "alert.raised" and r.detail["detector"] == detector and r.task == task]


def replayed(env: GatewayEnv, caller: Any, url: str) -> str:
    """``caller`` calls once, then sends the very same proof again (401); returns its token."""
    token = str(caller.token(env.aud("apikey")))
    proof = caller.key.proof("GET", url, access_token=token)
    assert caller.manual("GET", url, token, proof=proof).status_code == 200
    assert caller.manual("GET", url, token, proof=proof).status_code == 401  # the replay
    return token


def sentinel_replay(env: GatewayEnv, url: str) -> None:
    """A real replay by another task, alerted: the monitor reads in order, so it is past all before it."""
    sentinel = env.caller("apikey")
    replayed(env, sentinel, url)
    _wait(lambda: bool(alerts(env, "dpop_replay", sentinel.task["id"])), timeout=20, what="the sentinel alert")


def test_DPOP_12_a_replay_at_the_gateway_is_alerted_naming_the_task_but_never_suspends_it(env: GatewayEnv) -> None:
    caller = env.caller("apikey")
    url = env.aud("apikey") + "/v1/items"
    token = replayed(env, caller, url)
    task = caller.task["id"]
    _wait(lambda: bool(alerts(env, "dpop_replay", task)), timeout=20, what="the dpop_replay alert")
    sentinel_replay(env, url)
    assert not any(r.kind == "task.suspended" and r.task == task for r in env.sts.audit())
    # the key holder, with a fresh proof, keeps working
    assert caller.manual("GET", url, token).status_code == 200


def test_a_thiefs_replay_at_the_gateway_is_pinned_on_nobody(env: GatewayEnv) -> None:
    caller, thief = env.caller("apikey"), env.caller("apikey")
    url = env.aud("apikey") + "/v1/items"
    stolen = caller.token(env.aud("apikey"))
    proof = thief.key.proof("GET", url, access_token=stolen)
    for _ in range(3):
        assert thief.manual("GET", url, stolen, proof=proof).status_code == 401
    sentinel_replay(env, url)
    assert not [r for r in env.sts.audit() if r.kind == "alert.raised" and r.task == caller.task["id"]]
    assert caller.manual("GET", url, stolen).status_code == 200  # the rightful holder keeps working
    assert all(r.principal in (None, AGENT) for r in env.sts.audit() if r.kind == "gateway.refused")


def test_a_token_used_after_its_task_ended_alerts(env: GatewayEnv) -> None:
    caller = env.caller("apikey")
    url = env.aud("apikey") + "/v1/items"
    held = caller.token(env.aud("apikey"))
    assert caller.manual("GET", url, held).status_code == 200
    caller.complete()
    _wait(lambda: caller.manual("GET", url, held).status_code == 401, timeout=5, what="the gateway to learn of it")
    _wait(lambda: bool(alerts(env, "use_after_end", caller.task["id"])), timeout=20, what="the use_after_end alert")
