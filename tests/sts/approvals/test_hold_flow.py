"""Held requests end to end at the token endpoint (RFC 8628 §3.5 polling; SECURITY APR-01, APR-03).

A hop to a payments-tagged audience is held for "finance"; the agent polls with ``approval_id``;
a decision written as the approvers' API writes it (``hold_kit.decide``) lets the poll redeem a
token carrying ``apr`` (and ``tctx`` for a tool call), once per granted use, within the window.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from hold_kit import (
    APPROVER,
    PAYMENTS,
    PLAIN,
    approval_row,
    assert_held,
    audit_of,
    claims_of,
    decide,
    details,
    hold_sts,
    hop,
    new_task,
    refused,
    session_form,
    session_token,
    tctx_of,
)

from helpers import QUIET_MONITOR, Client, RunningSts, admin_token

TOML = QUIET_MONITOR + "\n[approvals]\nttl = 120\ninterval = 2\nmax_pending = 3\n"


@pytest.fixture(scope="module")
def sts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSts]:
    with hold_sts(tmp_path_factory.mktemp("hold-flow"), extra_toml=TOML) as server:
        yield server


def wait(sts: RunningSts) -> None:
    """Let one polling interval pass (the STS's clock; nothing sleeps)."""
    sts.clock.advance(sts.config.approvals.interval)


def poll(sts: RunningSts, client: Client, subject: str, resource: str, approval_id: str, **extra: str) -> httpx.Response:
    wait(sts)
    return hop(client, subject, resource, approval_id=approval_id, **extra)


def held_hop(sts: RunningSts, **extra: str) -> tuple[Client, str, str]:
    """A fresh task and session, and a hop to the payments audience held for approval: (client, session, id)."""
    client = Client(sts)
    session = session_token(sts, client, new_task(sts))
    approval_id = assert_held(hop(client, session, PAYMENTS, **extra))
    return client, session, approval_id


def test_apr01_payments_hop_is_held_then_redeemed_with_apr(sts: RunningSts) -> None:
    mark = sts.audit()[-1].seq
    client, session, approval_id = held_hop(sts)
    approval = approval_row(sts, approval_id)
    assert approval.groups == ("finance",) and approval.policies == ("payments-need-finance",)
    assert approval.view["audience"] == PAYMENTS and approval.view["kind"] == "hop"
    requested = audit_of(sts, "approval.requested", since=mark)
    assert [r.detail["approval"] for r in requested] == [approval_id]
    assert requested[0].task == approval.task and requested[0].detail["groups"] == ["finance"]

    assert assert_held(poll(sts, client, session, PAYMENTS, approval_id)) == approval_id
    decide(sts, approval_id, uses=1)
    response = poll(sts, client, session, PAYMENTS, approval_id)
    assert response.status_code == 200, response.text
    claims = claims_of(response.json()["access_token"])
    assert claims["aud"] == PAYMENTS
    assert claims["apr"] == {"id": approval_id, "by": APPROVER, "at": claims["apr"]["at"]}
    assert "tctx" not in claims
    issued = sts.last_audit("token.issued")
    assert issued.jti == claims["jti"] and issued.detail["approval"] == approval_id


def test_apr01_tool_call_held_then_token_carries_apr_and_tctx(sts: RunningSts) -> None:
    arguments = {"to": "acct-1", "amount": 10}
    call = details("transfer", **arguments)
    client = Client(sts)
    session = session_token(sts, client, new_task(sts))
    approval_id = assert_held(hop(client, session, PLAIN, authorization_details=call))
    approval = approval_row(sts, approval_id)
    assert approval.groups == ("finance",) and approval.policies == ("transfer-needs-finance",)
    assert approval.view["tool"] == "transfer" and approval.view["arguments"] == arguments
    assert approval.view["tctx"] == tctx_of("transfer", arguments)
    decide(sts, approval_id)
    response = poll(sts, client, session, PLAIN, approval_id, authorization_details=call)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["authorization_details"] == [{"type": "tool_call", "tool": "transfer", "arguments": arguments}]
    claims = claims_of(body["access_token"])
    assert claims["tctx"] == tctx_of("transfer", arguments) and claims["apr"]["id"] == approval_id
    issued = sts.last_audit("token.issued")
    assert issued.detail["tctx"] == claims["tctx"] and issued.detail["approval"] == approval_id


def test_groups_of_exchange_and_call_policies_are_merged(sts: RunningSts) -> None:
    client = Client(sts)
    session = session_token(sts, client, new_task(sts))
    approval_id = assert_held(hop(client, session, PAYMENTS, authorization_details=details("transfer", amount=1)))
    approval = approval_row(sts, approval_id)
    assert approval.groups == ("finance",)
    assert set(approval.policies) == {"payments-need-finance", "transfer-needs-finance"}


def test_resending_the_held_request_waits_on_the_same_approval(sts: RunningSts) -> None:
    mark = sts.audit()[-1].seq
    client, session, approval_id = held_hop(sts)
    wait(sts)
    assert assert_held(hop(client, session, PAYMENTS)) == approval_id
    assert len(audit_of(sts, "approval.requested", since=mark)) == 1


def test_apr03_one_use_approval_redeems_once(sts: RunningSts) -> None:
    client, session, approval_id = held_hop(sts)
    decide(sts, approval_id, uses=1)
    assert poll(sts, client, session, PAYMENTS, approval_id).status_code == 200
    mark = sts.audit()[-1].seq
    refused(poll(sts, client, session, PAYMENTS, approval_id), status=400, error="invalid_grant")
    [record] = audit_of(sts, "token.refused", since=mark)
    assert record.error == "invalid_grant" and "use 2 of 1" in record.detail["reason"]


def test_apr03_n_use_approval_redeems_n_times(sts: RunningSts) -> None:
    client, session, approval_id = held_hop(sts)
    decide(sts, approval_id, uses=3)
    jtis = set()
    for _ in range(3):
        response = poll(sts, client, session, PAYMENTS, approval_id)
        assert response.status_code == 200, response.text
        jtis.add(claims_of(response.json()["access_token"])["jti"])
    assert len(jtis) == 3
    refused(poll(sts, client, session, PAYMENTS, approval_id), status=400, error="invalid_grant")


def test_apr03_window_end_refuses_remaining_uses(sts: RunningSts) -> None:
    client, session, approval_id = held_hop(sts)
    decide(sts, approval_id, uses=5, window=30)
    assert poll(sts, client, session, PAYMENTS, approval_id).status_code == 200
    sts.clock.advance(30)
    refused(poll(sts, client, session, PAYMENTS, approval_id), status=400, error="invalid_grant")


def test_apr03_denied_request_is_access_denied(sts: RunningSts) -> None:
    client, session, approval_id = held_hop(sts)
    decide(sts, approval_id, approve=False, reason="not this quarter")
    mark = sts.audit()[-1].seq
    body = refused(poll(sts, client, session, PAYMENTS, approval_id), status=403, error="access_denied")
    assert "denied" in body["error_description"]
    [record] = audit_of(sts, "token.refused", since=mark)
    assert record.error == "access_denied" and approval_id in record.detail["reason"]
    refused(poll(sts, client, session, PAYMENTS, approval_id), status=403, error="access_denied")


def test_apr03_undecided_request_expires(sts: RunningSts) -> None:
    client, session, approval_id = held_hop(sts)
    sts.clock.advance(sts.config.approvals.ttl)
    mark = sts.audit()[-1].seq
    refused(poll(sts, client, session, PAYMENTS, approval_id), status=400, error="expired_token")
    [record] = audit_of(sts, "token.refused", since=mark)
    assert record.error == "expired_token"


def test_polled_faster_than_interval_is_slow_down(sts: RunningSts) -> None:
    client, session, approval_id = held_hop(sts)
    response = hop(client, session, PAYMENTS, approval_id=approval_id)  # no wait
    assert assert_held(response, error="slow_down") == approval_id
    assert response.json()["interval"] == sts.config.approvals.interval + 5
    assert assert_held(poll(sts, client, session, PAYMENTS, approval_id)) == approval_id


def test_pending_polls_are_not_audited(sts: RunningSts) -> None:
    client, session, approval_id = held_hop(sts)
    mark = sts.audit()[-1].seq
    for _ in range(3):
        assert_held(poll(sts, client, session, PAYMENTS, approval_id))
    hop(client, session, PAYMENTS, approval_id=approval_id)  # slow_down
    task = approval_row(sts, approval_id).task
    # nothing about this request (the upkeep may meanwhile expire other tests' approvals, or sign a checkpoint)
    assert [r for r in sts.audit() if r.seq > mark and (r.task == task or r.kind.startswith("token."))] == []


def test_replayed_poll_proof_is_refused(sts: RunningSts) -> None:
    client, session, approval_id = held_hop(sts)
    wait(sts)
    proof = client.proof()
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": session,
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token", "resource": PAYMENTS,
            "approval_id": approval_id}  # fmt: skip
    assert_held(client.post_token(form, proof=proof))
    wait(sts)
    refused(client.post_token(form, proof=proof), status=400, error="invalid_dpop_proof")


def test_replayed_redeeming_proof_takes_no_use(sts: RunningSts) -> None:
    client, session, approval_id = held_hop(sts)
    decide(sts, approval_id, uses=2)
    wait(sts)
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": session,
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token", "resource": PAYMENTS,
            "approval_id": approval_id}  # fmt: skip
    proof = client.proof()
    assert client.post_token(form, proof=proof).status_code == 200
    refused(client.post_token(form, proof=proof), status=400, error="invalid_dpop_proof")
    assert poll(sts, client, session, PAYMENTS, approval_id).status_code == 200  # the second use was kept


def test_replayed_hold_proof_is_refused(sts: RunningSts) -> None:
    client = Client(sts)
    session = session_token(sts, client, new_task(sts))
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": session,
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token", "resource": PAYMENTS}  # fmt: skip
    proof = client.proof()
    assert_held(client.post_token(form, proof=proof))
    wait(sts)
    refused(client.post_token(form, proof=proof), status=400, error="invalid_dpop_proof")


def test_pending_approvals_per_task_are_capped(sts: RunningSts) -> None:
    client = Client(sts)
    session = session_token(sts, client, new_task(sts))
    ids = {assert_held(hop(client, session, PLAIN, authorization_details=details("transfer", n=n))) for n in range(3)}
    assert len(ids) == 3
    mark = sts.audit()[-1].seq
    response = hop(client, session, PLAIN, authorization_details=details("transfer", n=3))
    refused(response, status=429, error="too_many_requests")
    assert 0 < int(response.headers["retry-after"]) <= sts.config.approvals.ttl
    assert audit_of(sts, "approval.requested", since=mark) == []
    # the same request as a pending one still waits on it: not a new approval, so not capped
    wait(sts)
    assert assert_held(hop(client, session, PLAIN, authorization_details=details("transfer", n=0))) in ids


def test_session_exchange_is_held_and_redeemed(sts: RunningSts) -> None:
    client = Client(sts)
    task = new_task(sts, purpose="needs ops")
    approval_id = assert_held(client.post_token(session_form(sts, task)))
    approval = approval_row(sts, approval_id)
    assert approval.groups == ("ops",) and approval.view["kind"] == "session"
    svid = sts.svid()
    wait(sts)
    assert assert_held(client.post_token(session_form(sts, task, approval_id=approval_id))) == approval_id
    decide(sts, approval_id, approver="user:olga@example.com")
    wait(sts)
    form = {**session_form(sts, task, approval_id=approval_id), "subject_token": svid}
    response = client.post_token(form)
    assert response.status_code == 200, response.text
    claims = claims_of(response.json()["access_token"])
    assert claims["aud"] == sts.url and claims["apr"]["id"] == approval_id
    # the workload JWT polled with was spent by the issuance
    wait(sts)
    refused(client.post_token(form), status=400, error="invalid_grant")


def test_apr01_hop_from_an_apr_token_does_not_inherit_it(sts: RunningSts) -> None:
    client = Client(sts)
    task = new_task(sts, purpose="needs ops")
    approval_id = assert_held(client.post_token(session_form(sts, task)))
    decide(sts, approval_id, approver="user:olga@example.com")
    wait(sts)
    session = client.post_token(session_form(sts, task, approval_id=approval_id)).json()["access_token"]
    assert claims_of(session)["apr"]["id"] == approval_id
    response = hop(client, session, PLAIN)
    assert response.status_code == 200, response.text
    assert "apr" not in claims_of(response.json()["access_token"])


def end_task(sts: RunningSts, task: str) -> None:
    admin, token = admin_token(sts)
    response = admin.api("POST", f"/tasks/{task}/complete", token)
    assert response.status_code == 200, response.text


def test_ended_task_holds_nothing(sts: RunningSts) -> None:
    client = Client(sts)
    task = new_task(sts)
    session = session_token(sts, client, task)
    end_task(sts, task)
    mark = sts.audit()[-1].seq
    refused(hop(client, session, PAYMENTS), status=400, error="invalid_grant")
    assert audit_of(sts, "approval.requested", since=mark) == []


def test_pending_poll_after_task_end_is_refused(sts: RunningSts) -> None:
    client = Client(sts)
    task = new_task(sts)
    session = session_token(sts, client, task)
    approval_id = assert_held(hop(client, session, PAYMENTS))
    end_task(sts, task)
    body = refused(poll(sts, client, session, PAYMENTS, approval_id), status=400, error="invalid_grant")
    assert "task is" in body["error_description"]


def test_apr01_stolen_workload_jwt_with_another_key_does_not_redeem(sts: RunningSts) -> None:
    """A held session: whoever has a JWT of the agent but not its DPoP key cannot redeem the approval."""
    client = Client(sts)
    task = new_task(sts, purpose="needs ops")
    approval_id = assert_held(client.post_token(session_form(sts, task)))
    decide(sts, approval_id, approver="user:olga@example.com")
    wait(sts)
    thief = Client(sts)
    body = refused(thief.post_token(session_form(sts, task, approval_id=approval_id)), status=400, error="invalid_grant")
    assert body["error_description"] == "the approval does not cover this request"
    wait(sts)
    assert client.post_token(session_form(sts, task, approval_id=approval_id)).status_code == 200


def test_on_hold_is_called_once_per_new_approval(sts: RunningSts) -> None:
    calls: list[tuple[str, str]] = []
    sts.sts.ctx.on_hold = lambda approval, task: calls.append((approval.id, task.id))
    try:
        client = Client(sts)
        task = new_task(sts)
        session = session_token(sts, client, task)
        approval_id = assert_held(hop(client, session, PAYMENTS))
        wait(sts)
        assert_held(hop(client, session, PAYMENTS))  # the same request: the same approval, no new call
        assert_held(poll(sts, client, session, PAYMENTS, approval_id))
    finally:
        sts.sts.ctx.on_hold = None
    assert calls == [(approval_id, task)]


def test_apr05_view_redacts_secret_fields_and_tokens(sts: RunningSts) -> None:
    client = Client(sts)
    session = session_token(sts, client, new_task(sts))
    arguments = {"to": "acct-1", "auth": {"Password": "hunter2"}, "note": session}
    approval_id = assert_held(hop(client, session, PLAIN, authorization_details=details("transfer", **arguments)))
    view = approval_row(sts, approval_id).view
    assert view["arguments"] == {"to": "acct-1", "auth": {"Password": "[redacted]"}, "note": "[redacted]"}
    assert view["tctx"] == tctx_of("transfer", arguments)  # the hash covers what was asked, unredacted


def test_delegation_is_held_and_redeemed_by_the_same_actor(sts: RunningSts) -> None:
    """The plain audience's service exchanges the agent's token for the payments audience (RFC 8693 actor)."""
    agent = Client(sts)
    session = session_token(sts, agent, new_task(sts))
    hop_token = hop(agent, session, PLAIN).json()["access_token"]
    service = Client(sts)

    def delegate(**extra: str) -> httpx.Response:
        return hop(service, hop_token, PAYMENTS, actor_token=sts.svid("spiffe://tether.local/svc/plain"),
                   actor_token_type="urn:ietf:params:oauth:token-type:jwt", **extra)  # fmt: skip

    approval_id = assert_held(delegate())
    approval = approval_row(sts, approval_id)
    assert approval.view["kind"] == "delegation" and approval.view["actors"] == ["spiffe://tether.local/svc/plain"]
    decide(sts, approval_id)
    wait(sts)
    response = delegate(approval_id=approval_id)
    assert response.status_code == 200, response.text
    claims = claims_of(response.json()["access_token"])
    assert claims["apr"]["id"] == approval_id and claims["act"]["sub"] == "spiffe://tether.local/svc/plain"


def test_apr05_view_redacts_vaulted_secrets_in_arguments(sts: RunningSts) -> None:
    from tether.gateway.vault import store_secret

    secret = "sk-live-9f8e7d6c5b4a"
    store_secret(sts.config, "payments-api-key", secret, actor="test")
    client = Client(sts)
    session = session_token(sts, client, new_task(sts))
    arguments = {"to": "acct-1", "memo": f"key={secret}", "items": ["fine", secret]}
    approval_id = assert_held(hop(client, session, PLAIN, authorization_details=details("transfer", **arguments)))
    view = approval_row(sts, approval_id).view
    assert view["arguments"] == {"to": "acct-1", "memo": "[redacted]", "items": ["fine", "[redacted]"]}
    assert secret not in str(view)
