"""Task caps and task state at the token endpoint (DESIGN "Depth and count caps", "Fail closed").

``max_tokens`` is counted atomically with the issuance (one SQLite transaction), so
concurrent exchanges can never overshoot it; a task that ended or passed its hard
cap, or an agent behind the kill switch, gets nothing more.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
from tokenkit import SERVICE_B, audit_mark, nonce_for, ok, raw_post, refused, session_form

from helpers import AGENT, SVC_B, Client, RunningSts, admin_token, create_task


def test_TX_07_max_tokens_cap_refuses_the_next_exchange(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts, max_tokens=3)
    agent = Client(sts)
    session = ok(agent.session(task["id"]))["access_token"]
    ok(agent.hop(session, SERVICE_B))
    ok(agent.hop(session, SERVICE_B))
    since = audit_mark(sts)
    response = agent.hop(session, SERVICE_B)
    record = refused(
        sts, response, since=since, status=400, error="invalid_grant", description="task token limit reached", secrets=[session]
    )
    assert record.task == task["id"]
    svid = sts.svid()
    since = audit_mark(sts)
    refused(
        sts,
        agent.session(task["id"], svid=svid),
        since=since,
        status=400,
        error="invalid_grant",
        description="task token limit reached",
        secrets=[svid],
    )
    # Positive control: the same agent and SVID on a task with room left.
    other = create_task(sts)
    ok(agent.hop(ok(agent.session(other["id"], svid=svid))["access_token"], SERVICE_B))


def test_TX_07_RACE_concurrent_exchanges_never_overshoot_max_tokens(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts, max_tokens=5)
    clients = [Client(sts) for _ in range(20)]
    nonce = nonce_for(clients[0])
    for client in clients:
        client.nonce = nonce
    forms = [session_form(task["id"], sts.svid()) for _ in clients]
    proofs = [c.proof() for c in clients]
    barrier = threading.Barrier(len(clients))
    since = audit_mark(sts)

    def one(i: int) -> httpx.Response:
        barrier.wait(timeout=10)
        return raw_post(clients[i], forms[i], headers={"DPoP": proofs[i]})

    with ThreadPoolExecutor(max_workers=len(clients)) as pool:
        responses = list(pool.map(one, range(len(clients))))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 5, [r.text for r in responses]
    refusals = [r for r in responses if r.status_code != 200]
    assert all(r.status_code == 400 and r.json()["error"] == "invalid_grant" for r in refusals), [r.text for r in refusals]
    assert all("task token limit reached" in r.json()["error_description"] for r in refusals)
    new = [r for r in sts.audit() if r.seq > since and r.task == task["id"]]
    assert len([r for r in new if r.kind == "token.issued"]) == 5
    assert len([r for r in new if r.kind == "token.refused" and r.error == "invalid_grant"]) == 15
    admin, token = admin_token(sts)
    assert admin.api("GET", f"/tasks/{task['id']}", token).json()["tokens_issued"] == 5


def test_TX_07_completed_task_refuses_exchanges(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts, audiences=[SERVICE_B])
    agent = Client(sts)
    session = ok(agent.session(task["id"]))["access_token"]
    admin, token = admin_token(sts)
    done = admin.api("POST", f"/tasks/{task['id']}/complete", token)
    assert done.status_code == 200 and done.json()["state"] == "completed", done.text
    svid = sts.svid()
    since = audit_mark(sts)
    refused(
        sts,
        agent.session(task["id"], svid=svid),
        since=since,
        status=400,
        error="invalid_grant",
        description="task is completed",
        secrets=[svid],
    )
    since = audit_mark(sts)
    refused(sts, agent.hop(session, SERVICE_B), since=since, status=400, error="invalid_grant", secrets=[session])
    # Positive control: the same agent and SVID on an active task.
    other = create_task(sts, audiences=[SERVICE_B])
    ok(agent.hop(ok(agent.session(other["id"], svid=svid))["access_token"], SERVICE_B))


def test_TX_07_cancelled_task_refuses_exchanges(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts)
    agent = Client(sts)
    admin, token = admin_token(sts)
    assert admin.api("POST", f"/tasks/{task['id']}/cancel", token).status_code == 200
    svid = sts.svid()
    since = audit_mark(sts)
    refused(
        sts,
        agent.session(task["id"], svid=svid),
        since=since,
        status=400,
        error="invalid_grant",
        description="task is cancelled",
        secrets=[svid],
    )
    ok(agent.session(create_task(sts)["id"], svid=svid))


def test_T_03_task_hard_cap_refuses_exchanges(sts: RunningSts) -> None:
    task = create_task(sts, audiences=[SERVICE_B], max_duration=60)
    agent = Client(sts)
    session = ok(agent.session(task["id"]))["access_token"]
    sts.clock.advance(61)
    svid = sts.svid()
    since = audit_mark(sts)
    refused(
        sts,
        agent.session(task["id"], svid=svid),
        since=since,
        status=400,
        error="invalid_grant",
        description="task is expired",
        secrets=[svid],
    )
    since = audit_mark(sts)
    refused(sts, agent.hop(session, SERVICE_B), since=since, status=400, error="invalid_grant", secrets=[session])
    other = create_task(sts, audiences=[SERVICE_B])
    ok(agent.hop(ok(agent.session(other["id"], svid=svid))["access_token"], SERVICE_B))


def test_TX_07_kill_switch_refuses_the_agent_with_access_denied(sts: RunningSts) -> None:
    task = create_task(sts, audiences=[SERVICE_B])
    bystander_task = create_task(sts, agent=SVC_B, audiences=[SERVICE_B])
    agent = Client(sts)
    session = ok(agent.session(task["id"]))["access_token"]
    admin, token = admin_token(sts)
    blocked = admin.api("POST", "/principals/block", token, json={"agent": AGENT})
    assert blocked.status_code == 200 and blocked.json()["blocked"] is True, blocked.text
    svid = sts.svid()
    since = audit_mark(sts)
    record = refused(
        sts,
        agent.session(task["id"], svid=svid),
        since=since,
        status=403,
        error="access_denied",
        reason="blocked",
        secrets=[svid],
    )
    assert record.principal == AGENT
    # Its existing session token died with the block (revoked), so hops are refused too.
    since = audit_mark(sts)
    refused(sts, agent.hop(session, SERVICE_B), since=since, status=400, error="invalid_grant", secrets=[session])
    # Positive control: another agent on the same STS is unaffected.
    ok(Client(sts).session(bystander_task["id"], svid=sts.svid(SVC_B)))
    # Lifting the block lets the agent work again, on a new task.
    lifted = admin.api("POST", "/principals/unblock", token, json={"agent": AGENT})
    assert lifted.status_code == 200, lifted.text
    fresh = create_task(sts, audiences=[SERVICE_B])
    ok(agent.hop(ok(agent.session(fresh["id"], svid=svid))["access_token"], SERVICE_B))


def test_TX_07_kill_switch_on_subject_refuses_on_behalf_of_exchanges(sts: RunningSts) -> None:
    task = create_task(sts, on_behalf_of="user:mallory", audiences=[SERVICE_B])
    agent = Client(sts)
    session = ok(agent.session(task["id"]))["access_token"]
    admin, token = admin_token(sts)
    blocked = admin.api("POST", "/principals/block", token, json={"subject": "user:mallory"})
    assert blocked.status_code == 200 and blocked.json()["tasks_cancelled"] == [task["id"]], blocked.text
    svid = sts.svid()
    since = audit_mark(sts)
    refused(
        sts,
        agent.session(task["id"], svid=svid),
        since=since,
        status=403,
        error="access_denied",
        description="blocked",
        secrets=[svid],
    )
    since = audit_mark(sts)
    refused(
        sts,
        agent.hop(session, SERVICE_B),
        since=since,
        status=400,
        error="invalid_grant",
        description="revoked",
        secrets=[session],
    )
    # No new task can be opened on the blocked subject's behalf, so no new session either.
    again = admin.api(
        "POST",
        "/tasks",
        token,
        json={"agent": AGENT, "audiences": [SERVICE_B], "scopes": ["wiki:read"], "on_behalf_of": "user:mallory"},
    )
    assert again.status_code == 403 and again.json()["error"] == "access_denied", again.text
    # Positive control: the same agent and SVID working for another subject.
    ok(agent.session(create_task(sts, on_behalf_of="user:alice")["id"], svid=svid))
