"""A held request from end to end: held at the token endpoint, announced by the webhook, decided by a
human through ``tether approvals`` (the real executable) or a one-time link, redeemed by the agent's poll.

Everything is real: the STS on loopback with Cedar ``@approval`` policies, the approvers' OIDC
provider on loopback, the webhook receiver, the CLI subprocess, DPoP-bound exchanges.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from approvals_api_kit import ALICE, CAROL, DAVE, ApprovalsEnv, Receiver, approvals_env
from hold_kit import PAYMENTS, PLAIN, POLICIES, RESOURCES, assert_held, claims_of, details, hop, new_task, session_token

from helpers import Client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent / "cli"))

from cli_support import tether


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[ApprovalsEnv]:
    with approvals_env(tmp_path_factory.mktemp("approvals-e2e"), webhook_url=receiver.url, extra_toml=RESOURCES,
                       policies=POLICIES, settings={"ttl": 120, "interval": 2}) as environment:  # fmt: skip
        yield environment


def poll(env: ApprovalsEnv, client: Client, session: str, resource: str, approval_id: str, **extra: str) -> httpx.Response:
    env.sts.clock.advance(env.sts.config.approvals.interval)  # one polling interval, on the STS's clock
    return hop(client, session, resource, approval_id=approval_id, **extra)


def test_hold_then_cli_approve_then_redeem(env: ApprovalsEnv, receiver: Receiver) -> None:
    before = len(receiver.bodies)
    arguments = {"to": "acct-9", "amount": 40}
    call = details("transfer", **arguments)
    client = Client(env.sts)
    session = session_token(env.sts, client, new_task(env.sts, purpose="supplier run"))
    approval_id = assert_held(hop(client, session, PLAIN, authorization_details=call))

    announced = receiver.wait(before + 1)[-1]  # the token endpoint's on_hold: the webhook
    assert announced["approval"]["id"] == approval_id
    assert sorted(announced["links"]) == [ALICE, CAROL, DAVE]

    environ = {"TETHER_APPROVER_TOKEN": env.id_token(ALICE)}
    listed = tether("approvals", "list", "--url", env.sts.url, "--json", env=environ)
    assert listed.returncode == 0, listed.stderr
    assert approval_id in [a["id"] for a in json.loads(listed.stdout)["approvals"]]
    shown = tether("approvals", "show", approval_id, "--url", env.sts.url, env=environ)
    assert shown.returncode == 0, shown.stderr
    assert "supplier run" in shown.stdout and "acct-9" in shown.stdout and "transfer" in shown.stdout
    approved = tether("approvals", "approve", approval_id, "--url", env.sts.url, "--json", env=environ)
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["status"] == "approved"

    response = poll(env, client, session, PLAIN, approval_id, authorization_details=call)
    assert response.status_code == 200, response.text
    claims = claims_of(response.json()["access_token"])
    assert claims["apr"]["id"] == approval_id and claims["apr"]["by"] == ALICE
    again = poll(env, client, session, PLAIN, approval_id, authorization_details=call)
    assert (again.status_code, again.json()["error"]) == (400, "invalid_grant")


def test_hold_then_webhook_deny_link_then_refused(env: ApprovalsEnv, receiver: Receiver) -> None:
    before = len(receiver.bodies)
    client = Client(env.sts)
    session = session_token(env.sts, client, new_task(env.sts))
    approval_id = assert_held(hop(client, session, PAYMENTS))
    announced = receiver.wait(before + 1)[-1]
    assert announced["approval"]["id"] == approval_id
    denied = env.http.post(announced["links"][CAROL]["deny"], headers={"Accept": "application/json"})
    assert denied.status_code == 200, denied.text
    response = poll(env, client, session, PAYMENTS, approval_id)
    assert (response.status_code, response.json()["error"]) == (403, "access_denied")
