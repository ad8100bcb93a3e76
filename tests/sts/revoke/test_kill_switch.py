"""The kill switch: ``POST /principals/block`` and ``tether revoke --agent|--subject [--lift]``.

Blocking a principal cancels its active tasks, revokes their tokens, and refuses new
exchanges and new tasks for it (``access_denied``) until lifted; lifting restores
exchanges for NEW tasks only (the cancelled ones stay cancelled).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from helpers import ADMIN, AGENT, JWT, JWT_BEARER, SVC_B, Client, RunningSts, admin_token, create_task, running_sts

AUD = "http://127.0.0.1:9001"
OTHER_AGENT = "spiffe://tether.local/agent/other"
TETHER = str(Path(sys.prefix) / "bin" / "tether")


def _count(sts: RunningSts, kind: str) -> int:
    return sum(1 for r in sts.audit() if r.kind == kind)


def cli(sts: RunningSts, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TETHER, *args, "--config", str(sts.config.path)], capture_output=True, text=True, timeout=60, check=False
    )


def is_active(sts: RunningSts, token: str) -> bool:
    response = Client(sts).http.post(
        sts.url + "/introspect", data={"token": token, "client_assertion": sts.svid(ADMIN), "client_assertion_type": JWT_BEARER}
    )
    assert response.status_code == 200, response.text
    return bool(response.json()["active"])


def live_task(sts: RunningSts, agent: str = AGENT, **fields: Any) -> dict[str, Any]:
    task = create_task(sts, agent=agent, **fields)
    client = Client(sts)
    session = client.session(task["id"], svid=sts.svid(agent))
    assert session.status_code == 200, session.text
    hop = client.hop(session.json()["access_token"], AUD)
    assert hop.status_code == 200, hop.text
    return {"task": task, "client": client, "session": session.json()["access_token"], "hop": hop.json()["access_token"]}


def state(sts: RunningSts, task_id: str) -> str:
    client, token = admin_token(sts)
    return str(client.api("GET", f"/tasks/{task_id}", token).json()["state"])


def create(sts: RunningSts, **fields: Any) -> httpx.Response:
    client, token = admin_token(sts)
    body = {"agent": AGENT, "audiences": [AUD], "scopes": ["wiki:read"], **fields}
    return client.api("POST", "/tasks", token, json=body)


def assert_denied(response: httpx.Response, *, challenge: bool) -> None:
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "access_denied"
    if challenge:
        assert 'error="access_denied"' in response.headers["www-authenticate"]


def test_block_agent_over_http_cancels_revokes_and_refuses(sts: RunningSts) -> None:
    victim = live_task(sts)
    second = live_task(sts)
    bystander = live_task(sts, OTHER_AGENT)
    client, admin = admin_token(sts)
    response = client.api("POST", "/principals/block", admin, json={"agent": AGENT})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["agent"] == AGENT
    assert body["blocked"] is True
    assert set(body["tasks_cancelled"]) == {victim["task"]["id"], second["task"]["id"]}
    record = sts.last_audit("principal.blocked")
    assert record.principal == ADMIN
    assert record.detail["agent"] == AGENT
    assert set(record.detail["tasks"]) == set(body["tasks_cancelled"])

    for t in (victim, second):
        assert state(sts, t["task"]["id"]) == "cancelled"
        assert not is_active(sts, t["session"])
        assert not is_active(sts, t["hop"])
    # new exchanges refused: a session for its (cancelled) task, and the old session's hop
    before = _count(sts, "token.refused")
    assert_denied(Client(sts).session(victim["task"]["id"]), challenge=False)
    assert sts.last_audit("token.refused").error == "access_denied"
    assert _count(sts, "token.refused") == before + 1
    stale = victim["client"].hop(victim["session"], AUD)
    assert stale.status_code in (400, 403), stale.text
    assert stale.json()["error"] in ("invalid_grant", "access_denied")
    # new tasks for the agent refused
    before = _count(sts, "task.refused")
    assert_denied(create(sts), challenge=True)
    assert _count(sts, "task.refused") == before + 1
    assert sts.last_audit("task.refused").error == "access_denied"

    # positive control: another agent is untouched, and can still get new tasks
    assert state(sts, bystander["task"]["id"]) == "active"
    assert is_active(sts, bystander["hop"])
    assert bystander["client"].hop(bystander["session"], AUD).status_code == 200
    assert create(sts, agent=OTHER_AGENT).status_code == 201

    # lift: new tasks and their exchanges work again; the cancelled task stays cancelled
    lifted = client.api("POST", "/principals/unblock", admin, json={"agent": AGENT})
    assert lifted.status_code == 200, lifted.text
    assert lifted.json() == {"agent": AGENT, "blocked": False, "was_blocked": True}
    assert sts.last_audit("principal.unblocked").detail == {"agent": AGENT}
    fresh = live_task(sts)
    assert is_active(sts, fresh["hop"])
    assert state(sts, victim["task"]["id"]) == "cancelled"
    refused = Client(sts).session(victim["task"]["id"])
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == "invalid_grant"


def test_block_is_admin_only(sts: RunningSts) -> None:
    t = live_task(sts)
    before = _count(sts, "principal.refused")
    response = t["client"].api("POST", "/principals/block", t["session"], json={"agent": OTHER_AGENT})
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "insufficient_scope"
    assert _count(sts, "principal.refused") == before + 1
    assert sts.last_audit("principal.refused").error == "insufficient_scope"
    assert create(sts, agent=OTHER_AGENT).status_code == 201  # nothing was blocked


def test_block_body_must_name_exactly_one_principal(sts: RunningSts) -> None:
    client, admin = admin_token(sts)
    for body in ({}, {"agent": AGENT, "subject": "user:alice"}, {"agent": 7}, {"agent": AGENT, "why": "x"}):
        before = _count(sts, "principal.refused")
        response = client.api("POST", "/principals/block", admin, json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"] == "invalid_request"
        assert _count(sts, "principal.refused") == before + 1
    unknown = client.api("POST", "/principals/frobnicate", admin, json={"agent": AGENT})
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "not_found"
    # positive control: nothing above blocked the agent
    assert create(sts).status_code == 201


def test_kill_switch_cli_agent_and_lift(sts: RunningSts) -> None:
    victim = live_task(sts)
    bystander = live_task(sts, OTHER_AGENT)
    result = cli(sts, "revoke", "--agent", AGENT, "--json")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["blocked"] is True
    assert body["tasks_cancelled"] == [victim["task"]["id"]]
    assert state(sts, victim["task"]["id"]) == "cancelled"
    assert not is_active(sts, victim["session"])
    assert not is_active(sts, victim["hop"])
    assert_denied(Client(sts).session(victim["task"]["id"]), challenge=False)
    assert_denied(create(sts), challenge=True)
    assert is_active(sts, bystander["hop"])  # positive control

    lifted = cli(sts, "revoke", "--agent", AGENT, "--lift", "--json")
    assert lifted.returncode == 0, lifted.stderr
    assert json.loads(lifted.stdout)["blocked"] is False
    fresh = live_task(sts)
    assert is_active(sts, fresh["session"])
    assert state(sts, victim["task"]["id"]) == "cancelled"


def test_kill_switch_cli_needs_exactly_one_target(sts: RunningSts) -> None:
    both = cli(sts, "revoke", "--agent", AGENT, "--subject", "user:alice")
    assert both.returncode == 2
    assert len(both.stderr.strip().splitlines()) == 1
    neither = cli(sts, "revoke")
    assert neither.returncode == 2
    assert create(sts).status_code == 201


def test_kill_switch_subject(sts: RunningSts) -> None:
    alice = live_task(sts, on_behalf_of="user:alice")
    alice_2 = live_task(sts, OTHER_AGENT, on_behalf_of="user:alice")
    bob = live_task(sts, on_behalf_of="user:bob")
    plain = live_task(sts)
    result = cli(sts, "revoke", "--subject", "user:alice", "--json")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["subject"] == "user:alice"
    assert set(body["tasks_cancelled"]) == {alice["task"]["id"], alice_2["task"]["id"]}
    for t in (alice, alice_2):
        assert state(sts, t["task"]["id"]) == "cancelled"
        assert not is_active(sts, t["session"])
        assert not is_active(sts, t["hop"])
    # new exchanges on alice's behalf and new tasks for her are refused
    session = Client(sts).session(alice["task"]["id"])
    assert session.status_code in (400, 403), session.text  # the exact code: see the test below
    assert_denied(create(sts, on_behalf_of="user:alice"), challenge=True)
    assert sts.last_audit("task.refused").error == "access_denied"
    # positive controls: the same agent for bob or for itself is untouched
    for t in (bob, plain):
        assert state(sts, t["task"]["id"]) == "active"
        assert is_active(sts, t["hop"])
        assert t["client"].hop(t["session"], AUD).status_code == 200
    assert create(sts, on_behalf_of="user:bob").status_code == 201

    lifted = cli(sts, "revoke", "--subject", "user:alice", "--lift", "--json")
    assert lifted.returncode == 0, lifted.stderr
    fresh = live_task(sts, on_behalf_of="user:alice")
    assert is_active(sts, fresh["hop"])
    assert state(sts, alice["task"]["id"]) == "cancelled"


def test_kill_switch_subject_refuses_exchanges_with_access_denied(sts: RunningSts) -> None:
    """As for ``--agent``: a session exchange for a task on behalf of a blocked subject is
    refused because the subject is blocked (``access_denied``), not only because its task
    happens to be cancelled — the block must be checked at exchange time too."""
    alice = live_task(sts, on_behalf_of="user:alice")
    client, admin = admin_token(sts)
    assert client.api("POST", "/principals/block", admin, json={"subject": "user:alice"}).status_code == 200
    before = _count(sts, "token.refused")
    assert_denied(Client(sts).session(alice["task"]["id"]), challenge=False)
    assert _count(sts, "token.refused") == before + 1
    assert sts.last_audit("token.refused").error == "access_denied"
    # positive control: lifting the block lets a new task on alice's behalf exchange
    assert client.api("POST", "/principals/unblock", admin, json={"subject": "user:alice"}).status_code == 200
    assert is_active(sts, live_task(sts, on_behalf_of="user:alice")["session"])


def test_block_a_service_revokes_its_delegated_tokens_and_refuses_it_as_actor(tmp_path: Path) -> None:
    """The kill switch also offboards a service that acts for agents (an ``act`` principal)."""
    extra = f'[[resources]]\nuri = "{AUD}"\nprincipals = ["{SVC_B}"]\n'
    with running_sts(tmp_path, extra_toml=extra) as sts:
        t = live_task(sts, audiences=[AUD, "http://127.0.0.1:9002"])
        other = live_task(sts, audiences=[AUD, "http://127.0.0.1:9002"])
        b = Client(sts)
        delegated = b.hop(t["hop"], "http://127.0.0.1:9002", actor_token=sts.svid(SVC_B), actor_token_type=JWT)
        assert delegated.status_code == 200, delegated.text
        client, admin = admin_token(sts)
        assert client.api("POST", "/principals/block", admin, json={"agent": SVC_B}).status_code == 200
        assert not is_active(sts, delegated.json()["access_token"])
        refused = Client(sts).hop(other["hop"], "http://127.0.0.1:9002", actor_token=sts.svid(SVC_B), actor_token_type=JWT)
        assert_denied(refused, challenge=False)
        # positive control: the agents' own tokens are untouched, and unblocking restores the actor
        assert is_active(sts, t["hop"])
        assert client.api("POST", "/principals/unblock", admin, json={"agent": SVC_B}).status_code == 200
        ok = Client(sts).hop(other["hop"], "http://127.0.0.1:9002", actor_token=sts.svid(SVC_B), actor_token_type=JWT)
        assert ok.status_code == 200, ok.text
