"""Suspension: a burst of refused calls, or a cap hit when ``suspend_on_cap`` is on, suspends the task.

A suspended task is ``suspended`` at ``GET /tasks/{id}``, its session token can no longer
be exchanged at the STS (``invalid_grant``) and its held hop token is refused by the
gateway (``invalid_token``, once the revocation push arrives). The strict gateway here
runs on the same STS and store as the main one, with ``suspend_after_refusals = 3`` and
``suspend_on_cap = true``; the main gateway has ``suspend_on_cap = false`` (the control).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gwkit import Caller, GatewayEnv, serve_gateway, task_state, variant_config, wait_until

from tether.agent import ExchangeError
from tether.web.server import free_port


@pytest.fixture(scope="module")
def strict(gw: GatewayEnv) -> Iterator[GatewayEnv]:
    port = free_port()
    config = variant_config(gw.config, url=f"http://127.0.0.1:{port}", port=str(port), suspend_after_refusals="3",
                            refusal_window="60", suspend_on_cap="true")  # fmt: skip
    with serve_gateway(config, gw.sts) as gateway:
        env = GatewayEnv(sts=gw.sts, config=config, gateway=gateway, upstream=gw.upstream, elsewhere=gw.elsewhere,
                         down_port=gw.down_port)  # fmt: skip
        try:
            yield env
        finally:
            env.close()


def _assert_suspended(env: GatewayEnv, caller: Caller, held: str, route: str) -> None:
    task = caller.task["id"]
    wait_until(lambda: task_state(env.sts, task) == "suspended", timeout=5, what="the task to be suspended")
    with pytest.raises(ExchangeError) as caught:  # a new hop token from the session token: refused at the STS
        caller.token(env.aud("legacy"))
    assert caught.value.error == "invalid_grant"
    url = env.aud(route) + "/v1/items"
    wait_until(lambda: caller.manual("GET", url, held).status_code == 401, timeout=5, what="the revocation push")
    assert caller.manual("GET", url, held).json()["error"] == "invalid_token"


def test_a_burst_of_refused_calls_suspends_the_task(strict: GatewayEnv) -> None:
    caller = strict.caller("apikey", "legacy")
    calm = strict.caller("apikey", "legacy")
    held = caller.token(strict.aud("apikey"))
    assert caller.get("apikey", "/v1/items").status_code == 200
    for _ in range(3):
        assert caller.get("apikey", "/v1/admin").status_code == 403
    _assert_suspended(strict, caller, held, "apikey")
    suspended = [r for r in strict.audit("task.suspended", caller.task["id"])]
    assert len(suspended) == 1 and suspended[0].principal == "gateway:apikey"
    # positive control: two refusals (under the limit) leave another task active and served
    for _ in range(2):
        assert calm.get("apikey", "/v1/admin").status_code == 403
    assert calm.get("apikey", "/v1/items").status_code == 200
    assert task_state(strict.sts, calm.task["id"]) == "active"


def test_a_cap_hit_suspends_the_task_when_suspend_on_cap_is_true(strict: GatewayEnv) -> None:
    caller = strict.caller("tiny", "legacy")
    held = caller.token(strict.aud("tiny"))
    for _ in range(3):
        assert caller.get("tiny", "/v1/items").status_code == 200
    refused = caller.get("tiny", "/v1/items")
    assert refused.status_code == 429 and refused.json()["error"] == "too_many_requests"
    _assert_suspended(strict, caller, held, "tiny")


def test_a_cap_hit_does_not_suspend_when_suspend_on_cap_is_false(gw: GatewayEnv) -> None:
    caller = gw.caller("tiny", "legacy")
    for _ in range(3):
        assert caller.get("tiny", "/v1/items").status_code == 200
    assert caller.get("tiny", "/v1/items").status_code == 429
    assert task_state(gw.sts, caller.task["id"]) == "active"
    assert caller.get("legacy", "/v1/items").status_code == 200  # its other route, and the STS, still serve it
    assert caller.get("tiny", "/v1/items").status_code == 429  # the cap itself stays


def test_a_burst_of_oversized_bodies_suspends_the_task(strict: GatewayEnv) -> None:
    """Refusals raised after admission (here 413) count toward the burst as well."""
    caller = strict.caller("small", "legacy")
    held = caller.token(strict.aud("small"))
    assert caller.get("small", "/v1/items").status_code == 200
    for _ in range(3):
        assert caller.call("POST", "small", "/upload", content=b"x" * 100).status_code == 413
    _assert_suspended(strict, caller, held, "small")
