"""Deciding held requests through the approvers' API (SECURITY APR-02, APR-03), over real HTTP.

Approvers present ID tokens from a real OIDC provider on loopback; held requests are written
into the store as the token endpoint writes them. Every refusal asserts the wire code and that
nothing was decided; every rule has a positive control on the same server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from approvals_api_kit import ALICE, BOT, CAROL, DAVE, EVE, FRANK, LENA, OLIVIA, ApprovalsEnv, approvals_env, refused

from helpers import admin_token


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApprovalsEnv]:
    with approvals_env(tmp_path_factory.mktemp("approvals-decide")) as environment:
        yield environment


# -- APR-02: separation of duties ---------------------------------------------------------------


def test_apr02_agent_cannot_approve_own_request(env: ApprovalsEnv) -> None:
    """The agent has an identity at the approvers' provider and is in the group by claim: still no."""
    task = env.task(agent=BOT)
    approval = env.hold(task)
    refused(env.approve(BOT, approval.id, groups=["fin-team"]), 403, "access_denied")
    assert env.status(approval.id) == "pending"
    assert env.approve(FRANK, approval.id, groups=["fin-team"]).status_code == 200  # control: another member by claim


def test_apr02_requester_cannot_approve(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task(), client=CAROL)
    refused(env.approve(CAROL, approval.id), 403, "access_denied")
    assert env.status(approval.id) == "pending"
    assert env.approve(ALICE, approval.id).status_code == 200


def test_apr02_actor_cannot_approve(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task(), actors=[CAROL])
    refused(env.approve(CAROL, approval.id), 403, "access_denied")
    assert env.status(approval.id) == "pending"
    assert env.approve(ALICE, approval.id).status_code == 200


def test_apr02_subject_cannot_approve_for_a_named_group(env: ApprovalsEnv) -> None:
    """The end user the request is for is a finance member, but finance must be someone else."""
    approval = env.hold(env.task(on_behalf_of=CAROL))
    refused(env.approve(CAROL, approval.id), 403, "access_denied")
    assert env.status(approval.id) == "pending"
    assert env.approve(ALICE, approval.id).status_code == 200


def test_apr02_task_creator_cannot_approve_without_the_policy_saying_so(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task(created_by=DAVE))
    body = refused(env.approve(DAVE, approval.id), 403, "access_denied")
    assert "creator" in str(body["error_description"])
    assert env.status(approval.id) == "pending"
    record = env.sts.last_audit("approval.refused")
    assert record.error == "access_denied"
    assert record.principal == DAVE


def test_apr02_task_creator_may_approve_with_approval_creator_allowed(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task(created_by=DAVE), creator_may_approve=True)
    response = env.approve(DAVE, approval.id)
    assert response.status_code == 200, response.text
    assert response.json()["decided_by"] == DAVE


def test_apr02_non_member_cannot_approve(env: ApprovalsEnv) -> None:
    """Someone in no group cannot see the approval, so cannot decide it: the same answer as an unknown id."""
    approval = env.hold(env.task())
    invisible = refused(env.approve(EVE, approval.id), 404, "not_found")
    unknown = refused(env.approve(EVE, "apr_" + "x" * 22), 404, "not_found")
    assert invisible == unknown
    refused(env.approve(LENA, approval.id), 404, "not_found")  # in another group
    refused(env.deny(EVE, approval.id), 404, "not_found")
    assert env.status(approval.id) == "pending"


def test_apr02_member_by_group_claim_approves(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task())
    response = env.approve(FRANK, approval.id, groups=["fin-team"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "approved"
    assert body["decided_by"] == FRANK
    assert (body["uses"], body["until"] - body["decided_at"]) == (1, 300)  # defaults: one use, [approvals] ttl
    assert env.approve(FRANK, env.hold(env.task()).id, groups=["other-team"]).status_code == 404  # control


def test_apr02_member_by_list_approves_with_uses_window_and_reason(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task())
    response = env.approve(ALICE, approval.id, uses=3, window=600, reason="quarterly run")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["decided_by"], body["uses"], body["reason"]) == ("approved", ALICE, 3, "quarterly run")
    assert body["until"] == body["decided_at"] + 600
    stored = env.stored(approval.id)
    assert stored is not None and stored.decision_mac
    record = env.sts.last_audit("approval.approved")
    assert (record.principal, record.task) == (ALICE, approval.task)
    assert record.detail["approval"] == approval.id
    assert record.detail["groups"] == ["finance"]
    assert record.detail["tool"] == "transfer"
    assert record.detail["tctx"] == approval.request["tctx"]
    assert "hunter2" not in str(record.detail) and "arguments" not in record.detail


def test_apr02_two_groups_need_one_approver_in_both(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task(), groups=["finance", "legal"])
    refused(env.approve(ALICE, approval.id), 404, "not_found")
    refused(env.approve(LENA, approval.id), 404, "not_found")
    assert env.approve(LENA, approval.id, groups=["fin-team"]).status_code == 200


def test_apr02_subject_group_approved_by_the_tasks_user(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task(on_behalf_of=OLIVIA), groups=["subject"])
    response = env.approve(OLIVIA, approval.id)
    assert response.status_code == 200, response.text
    assert response.json()["decided_by"] == OLIVIA


def test_apr02_subject_group_refused_to_anyone_else(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task(on_behalf_of=OLIVIA), groups=["subject"])
    refused(env.approve(ALICE, approval.id), 404, "not_found")
    refused(env.approve(FRANK, approval.id, groups=["fin-team"]), 404, "not_found")
    no_user = env.hold(env.task(), groups=["subject"])  # a task acting for nobody: nobody can approve
    refused(env.approve(OLIVIA, no_user.id), 404, "not_found")
    assert env.status(approval.id) == "pending"
    assert env.status(no_user.id) == "pending"


def test_admin_reads_but_cannot_decide(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task())
    client, token = admin_token(env.sts)
    response = client.api("POST", f"/approvals/{approval.id}/approve", token, json={})
    refused(response, 403, "access_denied")
    assert client.api("GET", f"/approvals/{approval.id}", token).status_code == 200
    assert env.status(approval.id) == "pending"


# -- deny, grant bounds and state ---------------------------------------------------------------------


def test_deny_records_the_denial(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task())
    response = env.deny(ALICE, approval.id, reason="not this vendor")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["decided_by"], body["uses"], body["until"]) == ("denied", ALICE, 0, None)
    record = env.sts.last_audit("approval.denied")
    assert (record.principal, record.detail["approval"], record.detail["reason"]) == (ALICE, approval.id, "not this vendor")
    metrics = env.http.get(env.sts.url + "/metrics").text
    assert 'tether_approvals_total{outcome="denied"}' in metrics


@pytest.mark.parametrize(
    "body",
    [{"uses": 0}, {"uses": 6}, {"uses": "2"}, {"uses": True}, {"window": -1}, {"window": 1801}, {"window": 1.5},
     {"reason": 5}, {"reason": "x" * 501}, {"scope": "more"}],
    ids=["uses-0", "uses-over-max", "uses-string", "uses-bool", "window-negative", "window-over-max", "window-float",
         "reason-number", "reason-long", "unknown-field"],
)  # fmt: skip
def test_grant_outside_bounds_is_invalid_request(env: ApprovalsEnv, body: dict[str, Any]) -> None:
    approval = env.hold(env.task())
    refused(env.approve(ALICE, approval.id, **body), 400, "invalid_request")
    assert env.status(approval.id) == "pending"


def test_deny_takes_only_a_reason(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task())
    refused(env.deny(ALICE, approval.id, uses=2), 400, "invalid_request")
    assert env.status(approval.id) == "pending"


def test_decided_approval_cannot_be_decided_again(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task())
    assert env.approve(ALICE, approval.id).status_code == 200
    body = refused(env.deny(CAROL, approval.id), 400, "invalid_request")
    assert "approved" in str(body["error_description"])
    refused(env.approve(ALICE, approval.id), 400, "invalid_request")
    assert env.status(approval.id) == "approved"


def test_apr03_expired_approval_cannot_be_approved(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task(), created_at=env.now() - 400, ttl=300)
    refused(env.approve(ALICE, approval.id), 400, "expired_token")
    refused(env.deny(ALICE, approval.id), 400, "expired_token")
    assert env.status(approval.id) == "expired"
    got = env.as_(ALICE, "GET", f"/approvals/{approval.id}")
    assert got.status_code == 200 and got.json()["status"] == "expired"


def test_unknown_action_and_malformed_id_are_not_found(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task())
    refused(env.as_(ALICE, "POST", f"/approvals/{approval.id}/extend", json={}), 404, "not_found")
    refused(env.approve(ALICE, "not-an-id"), 404, "not_found")
    assert env.status(approval.id) == "pending"


def test_oversized_body_isrefused(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task())
    big = '{"reason": "' + "x" * 70_000 + '"}'
    response = env.as_(ALICE, "POST", f"/approvals/{approval.id}/approve", content=big,
                       headers={"Content-Type": "application/json"})  # fmt: skip
    refused(response, 400, "invalid_request")
    assert env.status(approval.id) == "pending"


@pytest.mark.parametrize(
    ("content", "ctype"),
    [("[]", "application/json"), ("{", "application/json"), ('{"uses": 1, "uses": 2}', "application/json"),
     ('{"uses": 1}', "text/plain"), ("uses=1", "application/x-www-form-urlencoded")],
    ids=["array", "truncated", "duplicate-key", "text-plain", "form"],
)  # fmt: skip
def test_malformed_decision_body_is_invalid_request(env: ApprovalsEnv, content: str, ctype: str) -> None:
    approval = env.hold(env.task())
    response = env.as_(ALICE, "POST", f"/approvals/{approval.id}/approve", content=content, headers={"Content-Type": ctype})
    refused(response, 400, "invalid_request")
    assert env.status(approval.id) == "pending"
