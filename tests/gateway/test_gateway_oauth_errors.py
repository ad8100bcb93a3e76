"""When the upstream's token endpoint fails, the agent gets a clear JSON error and nothing else (FED-04).

Down or too slow → 503 ``temporarily_unavailable``; the gateway's credentials refused → 502
``bad_gateway``; a vault entry missing → 502. The answer is the gateway's own fixed description,
never the upstream's body (which may echo the client's credentials), never a 500; the refusal is
audited (``gateway.oauth.refused``, the upstream's error code only). A token granted wider than
the call asked for, or of another type than Bearer, is never used (and the wide one is revoked).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gwkit import wait_until
from oauthkit import OAuthEnv, serve_oauth_env


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthEnv]:
    with serve_oauth_env(tmp_path_factory.mktemp("gwoauth-err")) as running:
        yield running


def _refused(env: OAuthEnv, route: str, status: int, error: str) -> tuple[dict[str, str], str]:
    caller = env.caller(route)
    seen = len(env.api.seen)
    response = caller.get(route, "/contacts/1")
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error and response.headers["cache-control"] == "no-store"
    assert len(env.api.seen) == seen  # no call without a token
    return body, caller.task["id"]


@pytest.mark.parametrize(("route", "status", "error", "reason"), [
    ("down", 503, "temporarily_unavailable", "ConnectError"),
    ("slow", 503, "temporarily_unavailable", "timed out"),
    ("mac", 503, "temporarily_unavailable", "token_type is not Bearer"),
    ("wrong", 502, "bad_gateway", "401 invalid_client"),
    ("leaky", 502, "bad_gateway", "400 invalid_client"),
])  # fmt: skip
def test_fed04_a_token_endpoint_failure_is_a_clear_error(env: OAuthEnv, route: str, status: int, error: str,
                                                         reason: str) -> None:  # fmt: skip
    body, task = _refused(env, route, status, error)
    assert set(body) == {"error", "error_description"}
    [record] = env.audit("gateway.oauth.refused", task)
    assert reason in record.detail["reason"] and record.detail["route"] == route
    [refusal] = env.audit("gateway.refused", task)
    assert refusal.detail["status"] == status and refusal.error == error


def test_fed04_the_upstreams_error_body_never_reaches_the_agent(env: OAuthEnv) -> None:
    """``leaky`` echoes the client's Basic credentials in its error description."""
    body, task = _refused(env, "leaky", 502, "bad_gateway")
    assert body["error_description"] == "upstream refused the gateway's credentials"
    records = repr([(r.kind, r.detail) for r in env.audit("gateway.oauth.refused", task)])
    assert env.secrets["gw-basic"] not in records and "Basic" not in records


def test_a_missing_vault_entry_is_a_bad_gateway(env: OAuthEnv) -> None:
    body, _ = _refused(env, "absent", 502, "bad_gateway")
    assert body["error_description"] == "upstream credential unavailable"


def test_fed04_a_token_wider_than_asked_for_is_revoked_and_never_used(env: OAuthEnv) -> None:
    _, task = _refused(env, "wide", 502, "bad_gateway")
    [issued] = [t for t in env.fake.issued if t.startswith("wide-")][-1:]
    wait_until(lambda: issued in env.fake.revoked, what="the wide token's revocation")
    [record] = env.audit("gateway.oauth.refused", task)
    assert "admin" in record.detail["reason"]


def test_the_same_task_succeeds_on_a_working_route_after_a_failure(env: OAuthEnv) -> None:
    caller = env.caller("down", "crm")
    assert caller.get("down", "/contacts/1").status_code == 503
    assert caller.get("crm", "/contacts/1").status_code == 200  # an upstream failure is not the task's
