"""A refusal is pinned on a principal or task only when the caller proved it is that party (issue 12 finding 2).

The monitor suspends tasks and scores agents by the principal and task of refused
exchanges. A replayed DPoP proof or a replayed workload JWT proves nothing about who
sent it — a logging proxy, a retrying balancer, anyone who saw one request can send it
again — so such refusals are audited unattributed: ``principal`` and ``task`` empty, the
named party only in ``claimed_principal`` / ``claimed_task``. Each test has the positive
control on the same fixture: the holder's own fresh request is attributed.
"""

from __future__ import annotations

from typing import Any

import httpx
from tokenkit import SERVICE_B, audit_mark, hop_form, ok, raw_post, refused, session_form

from helpers import AGENT, Client, RunningSts, create_task


def _session(sts: RunningSts) -> tuple[dict[str, Any], Client, str]:
    task = create_task(sts, audiences=[SERVICE_B], scopes=["wiki:read", "wiki:write"])
    agent = Client(sts)
    session = ok(agent.session(task["id"], scope="wiki:read"))["access_token"]
    return task, agent, session


def _send(client: Client, form: dict[str, str], proof: str) -> httpx.Response:
    return raw_post(client, form, headers={"DPoP": proof})


def test_D_01_DPOP_12_replayed_hop_proof_is_not_pinned_on_the_holder(sts: RunningSts) -> None:
    task, agent, session = _session(sts)
    form = hop_form(session, SERVICE_B, scope="wiki:read")
    proof = agent.proof()
    ok(_send(agent, form, proof))
    attacker = Client(sts)
    since = audit_mark(sts)
    record = refused(sts, _send(attacker, form, proof), since=since, status=400, error="invalid_dpop_proof",
                     reason="replayed", secrets=[session, proof])  # fmt: skip
    assert record.principal is None and record.task is None, record
    assert record.detail["replay"] is True
    assert record.detail["claimed_task"] == task["id"] and record.detail["claimed_principal"] == AGENT


def test_D_01_replayed_proof_with_other_parameters_is_not_pinned(sts: RunningSts) -> None:
    """The proof does not cover the body: a replay can ask for a wider scope and fail before issuance."""
    task, agent, session = _session(sts)
    proof = agent.proof()
    ok(_send(agent, hop_form(session, SERVICE_B, scope="wiki:read"), proof))
    since = audit_mark(sts)
    widened = hop_form(session, SERVICE_B, scope="wiki:write")
    record = refused(sts, _send(Client(sts), widened, proof), since=since, status=400, error="invalid_scope")
    assert record.principal is None and record.task is None, record
    assert record.detail["claimed_task"] == task["id"]
    # positive control: the holder's own fresh proof asking the same is its own refusal
    since = audit_mark(sts)
    own = refused(sts, agent.post_token(widened), since=since, status=400, error="invalid_scope")
    assert own.principal == AGENT and own.task == task["id"], own
    assert "claimed_task" not in own.detail


def test_replayed_workload_jwt_is_not_pinned_on_its_principal(sts: RunningSts) -> None:
    task = create_task(sts, audiences=[SERVICE_B])
    svid = sts.svid()
    ok(Client(sts).post_token(session_form(task["id"], svid)))
    attacker = Client(sts)
    since = audit_mark(sts)
    record = refused(sts, attacker.post_token(session_form(task["id"], svid)), since=since, status=400,
                     error="invalid_grant", reason="already redeemed", secrets=[svid])  # fmt: skip
    assert record.principal is None and record.task is None
    assert record.detail["claimed_principal"] == AGENT
    # whatever else it asks (an unknown task), a redeemed JWT is refused as redeemed: it learns nothing
    since = audit_mark(sts)
    record = refused(sts, attacker.post_token(session_form("tsk_unknown", svid)), since=since, status=400,
                     error="invalid_grant", reason="already redeemed")  # fmt: skip
    assert record.principal is None and record.detail["requested_task"] == "tsk_unknown"
    # positive control: a fresh JWT for the same unknown task is its principal's own refusal
    since = audit_mark(sts)
    own = refused(sts, attacker.post_token(session_form("tsk_unknown", sts.svid())), since=since, status=400,
                  error="invalid_grant", reason="task")  # fmt: skip
    assert own.principal == AGENT and own.task is None


def test_a_workload_jwt_is_pinned_on_its_principal_at_most_once(sts: RunningSts) -> None:
    """Otherwise whoever saw a refused request could replay its JWT, attributed, as often as it liked.

    The JWT itself is not burnt by a refusal (SVID-05): the holder fixes the request and retries.
    """
    task = create_task(sts, audiences=[SERVICE_B])
    client = Client(sts)
    svid = sts.svid()
    since = audit_mark(sts)
    first = refused(sts, client.post_token(session_form(task["id"], svid, scope="wiki:admin")), since=since,
                    status=400, error="invalid_scope")  # fmt: skip
    assert first.principal == AGENT, "the first presentation is the holder's own"
    since = audit_mark(sts)
    again = refused(sts, Client(sts).post_token(session_form(task["id"], svid, resource=SERVICE_B)), since=since,
                    status=400, error="invalid_target")  # fmt: skip
    assert again.principal is None and again.detail["claimed_principal"] == AGENT
    ok(client.post_token(session_form(task["id"], svid)))  # positive control: the same JWT, a correct request


def test_replays_do_not_suspend_the_victims_task(sts: RunningSts) -> None:
    """Ten replays of one proof (the review's attack) leave the victim's task active and usable."""
    _, agent, session = _session(sts)
    form = hop_form(session, SERVICE_B, scope="wiki:read")
    proof = agent.proof()
    ok(_send(agent, form, proof))
    attacker = Client(sts)
    for scope in ["wiki:read"] * 5 + ["wiki:write"] * 5:
        response = _send(attacker, hop_form(session, SERVICE_B, scope=scope), proof)
        assert response.status_code == 400
    records = [r for r in sts.audit() if r.kind == "token.refused"]
    assert records and all(r.principal is None and r.task is None for r in records[-10:])
    ok(agent.post_token(form))  # the victim's own next hop is served


def test_a_workload_jwt_without_jti_never_attributes_a_refusal(sts: RunningSts) -> None:
    """A JWT-SVID without ``jti`` (SPIRE issues them so) cannot be redeemed once, so a refusal that
    presents it proves nothing: whoever captured it could otherwise pile refusals on its agent."""
    task = create_task(sts, audiences=[SERVICE_B])
    svid = sts.svid(jti=False)
    for _ in range(3):
        since = audit_mark(sts)
        record = refused(sts, Client(sts).post_token(session_form(task["id"], svid, scope="wiki:admin")), since=since,
                         status=400, error="invalid_scope")  # fmt: skip
        assert record.principal is None and record.task is None and record.detail["claimed_principal"] == AGENT
    # positive control: the same request with a single-use JWT is its principal's own refusal
    since = audit_mark(sts)
    own = refused(sts, Client(sts).post_token(session_form(task["id"], sts.svid(), scope="wiki:admin")), since=since,
                  status=400, error="invalid_scope")  # fmt: skip
    assert own.principal == AGENT


def test_a_redeemed_jwt_learns_nothing_about_what_would_be_granted(sts: RunningSts) -> None:
    """A redeemed JWT is refused as redeemed before any scope, audience or policy check runs."""
    task = create_task(sts, audiences=[SERVICE_B])
    svid = sts.svid()
    ok(Client(sts).post_token(session_form(task["id"], svid)))
    answers = set()
    for extra in ({"scope": "wiki:read"}, {"scope": "wiki:admin"}, {"resource": SERVICE_B}, {}):
        response = Client(sts).post_token(session_form(task["id"], svid, **extra))
        answers.add((response.status_code, response.json()["error"], response.json()["error_description"]))
    assert answers == {(400, "invalid_grant", "workload token has already been used")}
