"""What approvers see and who may ask (SECURITY APR-05; RFC 6750 §3 for bad approver tokens).

The view shown is the view sealed at hold time; a record written without the master key is
never shown nor decided. Approvers authenticate with ID tokens from the configured provider
only: anything else is 401 ``invalid_token`` with a ``Bearer`` challenge.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
from approvals_api_kit import ALICE, APPROVALS_AUDIENCE, EVE, LENA, OLIVIA, ApprovalsEnv, approvals_env, refused
from identity_support import Tenant, ec_key

from helpers import AGENT, Client, admin_token
from services import store_sql


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApprovalsEnv]:
    with approvals_env(tmp_path_factory.mktemp("approvals-view")) as environment:
        yield environment


# -- APR-05 ---------------------------------------------------------------------------------------


def test_apr05_view_shown_is_the_view_stored(env: ApprovalsEnv) -> None:
    task = env.task(purpose="month-end payments")
    approval = env.hold(task, arguments={"amount": 120, "to": "ACME", "password": "hunter2", "nested": {"Token": "t0p"}})
    response = env.as_(ALICE, "GET", f"/approvals/{approval.id}")
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["request"] == approval.view
    view = body["request"]
    assert (view["agent"], view["task"], view["purpose"], view["audience"]) == (AGENT, task.id, "month-end payments",
                                                                                 "http://127.0.0.1:9001")  # fmt: skip
    assert view["tool"] == "transfer"
    assert view["arguments"] == {"amount": 120, "to": "ACME", "password": "[redacted]", "nested": {"Token": "[redacted]"}}
    assert view["tctx"] == approval.request["tctx"]
    assert (body["id"], body["status"], body["groups"], body["policies"]) == (approval.id, "pending", ["finance"],
                                                                              ["hold-payments"])  # fmt: skip
    assert "request_mac" not in body and "decision_mac" not in body and "hunter2" not in response.text


def test_apr05_forged_approval_is_never_shown_or_decided(env: ApprovalsEnv) -> None:
    """A row written by someone without the master key (a database writer): no valid request MAC."""
    task = env.task()
    forged = env.hold(task, replace(env.build(task), request_mac="A" * 43))
    refused(env.as_(ALICE, "GET", f"/approvals/{forged.id}"), 404, "not_found")
    refused(env.approve(ALICE, forged.id), 404, "not_found")
    listed = env.as_(ALICE, "GET", "/approvals", params={"task": task.id}).json()["approvals"]
    assert listed == []
    refused(env.api("POST", env.link(forged.id, ALICE, "approve"), None, headers={"Accept": "application/json"}),
            404, "not_found")  # fmt: skip
    assert env.status(forged.id) == "pending"


def test_apr05_tampered_view_is_never_shown(env: ApprovalsEnv) -> None:
    """What a pending request shows was changed after the MAC was set (``to`` rewritten)."""
    task = env.task()
    genuine = env.build(task)
    view = {**genuine.view, "arguments": {**genuine.view["arguments"], "to": "Innocent Ltd"}}
    tampered = env.hold(task, replace(genuine, view=view))
    refused(env.as_(ALICE, "GET", f"/approvals/{tampered.id}"), 404, "not_found")
    refused(env.approve(ALICE, tampered.id), 404, "not_found")
    client, token = admin_token(env.sts)
    refused(client.api("GET", f"/approvals/{tampered.id}", token), 404, "not_found")
    assert env.status(tampered.id) == "pending"


def test_apr05_tampered_groups_are_never_shown(env: ApprovalsEnv) -> None:
    """Groups widened after sealing (legal → finance) to let another approver decide."""
    task = env.task()
    genuine = env.build(task, groups=["legal"])
    tampered = env.hold(task, replace(genuine, groups=("finance",)))
    refused(env.approve(ALICE, tampered.id), 404, "not_found")
    assert env.status(tampered.id) == "pending"


def test_apr05_view_rewritten_in_the_database_is_never_shown(env: ApprovalsEnv) -> None:
    """A database writer changes what a pending request shows its approver (the payee)."""
    task = env.task()
    approval = env.hold(task)
    view = {**approval.view, "arguments": {**approval.view["arguments"], "to": "Innocent Ltd"}}
    store_sql(env.sts.config, "UPDATE approvals SET view = ? WHERE id = ?", (json.dumps(view), approval.id))
    refused(env.as_(ALICE, "GET", f"/approvals/{approval.id}"), 404, "not_found")
    refused(env.approve(ALICE, approval.id), 404, "not_found")
    assert env.as_(ALICE, "GET", "/approvals", params={"task": task.id}).json()["approvals"] == []
    refused(env.api("GET", env.link(approval.id, ALICE, "approve"), None, headers={"Accept": "application/json"}),
            404, "not_found")  # fmt: skip
    assert env.status(approval.id) == "pending"


def test_apr05_decision_forged_in_the_database_is_never_shown(env: ApprovalsEnv) -> None:
    """A writer marks a pending request approved, copying a genuine decision's fields and MAC."""
    task = env.task()
    genuine, forged = env.hold(task), env.hold(task)
    assert env.approve(ALICE, genuine.id).status_code == 200
    store_sql(
        env.sts.config,
        "UPDATE approvals SET status = 'approved', decided_by = ?, decided_at = ?, uses = ?, until = ?, decision_mac = "
        "(SELECT decision_mac FROM approvals WHERE id = ?) WHERE id = ?",
        (ALICE, env.now(), 5, env.now() + 600, genuine.id, forged.id),
    )
    refused(env.as_(ALICE, "GET", f"/approvals/{forged.id}"), 404, "not_found")
    listed = [a["id"] for a in env.as_(ALICE, "GET", "/approvals", params={"task": task.id, "status": "approved"}).json()[
        "approvals"]]  # fmt: skip
    assert listed == [genuine.id]


# -- visibility ---------------------------------------------------------------------------------------


def test_list_shows_only_what_the_approver_may_decide(env: ApprovalsEnv) -> None:
    task = env.task(on_behalf_of=OLIVIA)
    finance = env.hold(task)
    legal = env.hold(task, groups=["legal"])
    subject = env.hold(task, groups=["subject"])

    def ids(principal: str, **params: str) -> list[str]:
        response = env.as_(principal, "GET", "/approvals", params={"task": task.id, **params})
        assert response.status_code == 200, response.text
        return [a["id"] for a in response.json()["approvals"]]

    assert ids(ALICE) == [finance.id]
    assert ids(LENA) == [legal.id]
    assert ids(OLIVIA) == [subject.id]
    assert ids(EVE) == []
    client, token = admin_token(env.sts)
    everything = client.api("GET", "/approvals", token, params={"task": task.id})
    assert everything.status_code == 200, everything.text
    assert {a["id"] for a in everything.json()["approvals"]} == {finance.id, legal.id, subject.id}
    refused(env.as_(EVE, "GET", f"/approvals/{finance.id}"), 404, "not_found")
    refused(env.as_(LENA, "GET", f"/approvals/{finance.id}"), 404, "not_found")
    assert env.as_(ALICE, "GET", f"/approvals/{finance.id}").status_code == 200


def test_list_filters_and_pages(env: ApprovalsEnv) -> None:
    task = env.task()
    held = [env.hold(task, created_at=env.now() - 10 + i) for i in range(4)]
    assert env.approve(ALICE, held[0].id).status_code == 200
    expired = env.hold(task, created_at=env.now() - 400, ttl=300)

    def ids(**params: str) -> list[str]:
        response = env.as_(ALICE, "GET", "/approvals", params={"task": task.id, **params})
        assert response.status_code == 200, response.text
        return [a["id"] for a in response.json()["approvals"]]

    newest_first = [h.id for h in reversed(held)]
    assert ids(status="pending") == newest_first[:3]
    assert ids(status="approved") == [held[0].id]
    assert ids(status="expired") == [expired.id]
    assert ids(status="pending", limit="2") == newest_first[:2]
    assert ids(status="pending", limit="2", before=newest_first[1]) == [newest_first[2]]


@pytest.mark.parametrize(
    "params",
    [{"status": "maybe"}, {"limit": "0"}, {"limit": "1001"}, {"limit": "x"}, {"before": "apr_short"}],
    ids=["status", "limit-0", "limit-big", "limit-text", "before"],
)
def test_list_bad_query_is_invalid_request(env: ApprovalsEnv, params: dict[str, str]) -> None:
    refused(env.as_(ALICE, "GET", "/approvals", params=params), 400, "invalid_request")


# -- approver authentication -----------------------------------------------------------------------------


def _unauthorized(response: httpx.Response) -> None:
    refused(response, 401, "invalid_token")
    assert response.headers["www-authenticate"].startswith("Bearer ")


def test_bad_approver_token_wrong_issuer(env: ApprovalsEnv) -> None:
    other = Tenant(env.provider)
    key = ec_key("other-1")
    other.publish(key)
    token = env.id_token(ALICE, key=key, iss=other.issuer)
    _unauthorized(env.api("GET", "/approvals", token))
    forged = env.id_token(ALICE, key=key)  # right issuer, a key it never published
    _unauthorized(env.api("GET", "/approvals", forged))
    assert env.as_(ALICE, "GET", "/approvals").status_code == 200  # control


def test_bad_approver_token_wrong_audience(env: ApprovalsEnv) -> None:
    _unauthorized(env.api("GET", "/approvals", env.id_token(ALICE, aud="some-other-app")))
    assert env.api("GET", "/approvals", env.id_token(ALICE, aud=[APPROVALS_AUDIENCE])).status_code == 200


def test_bad_approver_token_expired(env: ApprovalsEnv) -> None:
    now = env.now()
    _unauthorized(env.api("GET", "/approvals", env.id_token(ALICE, iat=now - 900, exp=now - 600)))


def test_bad_approver_token_a_tether_workload_jwt(env: ApprovalsEnv) -> None:
    """A JWT-SVID of the agent, and the agent's own tether access token sent as Bearer."""
    _unauthorized(env.api("GET", "/approvals", env.sts.svid(AGENT)))
    _, token = admin_token(env.sts, Client(env.sts))
    _unauthorized(env.api("GET", "/approvals", token))  # DPoP-bound, presented as bearer


def test_bad_approver_token_missing_or_malformed(env: ApprovalsEnv) -> None:
    _unauthorized(env.api("GET", "/approvals", None))
    _unauthorized(env.api("GET", "/approvals", "not-a-jwt"))
    _unauthorized(env.api("GET", "/approvals", None, headers={"Authorization": "Basic YWxpY2U6cHc="}))
    approval = env.hold(env.task())
    _unauthorized(env.api("POST", f"/approvals/{approval.id}/approve", "not-a-jwt", json={}))
    assert env.status(approval.id) == "pending"


def test_bad_approver_token_is_audited_without_the_token(env: ApprovalsEnv) -> None:
    token = env.id_token(ALICE, aud="some-other-app")
    _unauthorized(env.api("GET", "/approvals", token))
    record = env.sts.last_audit("approval.refused")
    assert record.error == "invalid_token"
    assert token not in str(record.detail) and token.split(".")[1] not in str(record.detail)
