"""Who may call the task API: DPoP-bound tether tokens only (RFC 9449 §7, issue 2 "Tasks").

Each refusal asserts the status, the ``error`` code, the ``WWW-Authenticate: DPoP``
challenge and the ``task.refused`` audit record, then a positive control with a
correct request on the same server.
"""

from __future__ import annotations

import json

import httpx

from helpers import ADMIN, AGENT, JWT, JWT_BEARER, TOKEN_EXCHANGE, Client, RunningSts, admin_token, create_task
from tether.agent.proof import DPoPKey

AUD = "http://127.0.0.1:9001"


def _count(sts: RunningSts, kind: str) -> int:
    return sum(1 for r in sts.audit() if r.kind == kind)


def _refused(sts: RunningSts, response: httpx.Response, status: int, error: str, *, before: int) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("DPoP ")
    assert f'error="{error}"' in challenge
    assert 'algs="' in challenge
    assert _count(sts, "task.refused") == before + 1
    record = sts.last_audit("task.refused")
    assert record.outcome == "refused"
    assert record.error == error


def _send(
    client: Client,
    method: str,
    path: str,
    *,
    authorization: str | None,
    proof: str | None,
    json: object = None,
) -> httpx.Response:
    """One request with exactly the given ``Authorization`` and ``DPoP`` headers (no retry)."""
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization
    if proof is not None:
        headers["DPoP"] = proof
    response = client.http.request(method, client.sts.url + path, headers=headers, json=json)
    client.nonce = response.headers.get("dpop-nonce", client.nonce)
    return response


def _ok_list(client: Client, token: str) -> None:
    response = client.api("GET", "/tasks?limit=1", token)
    assert response.status_code == 200, response.text


def test_no_authorization_refused_with_dpop_challenge(shared_sts: RunningSts) -> None:
    sts = shared_sts
    client, token = admin_token(sts)
    before = _count(sts, "task.refused")
    response = _send(client, "GET", "/tasks", authorization=None, proof=None)
    _refused(sts, response, 401, "invalid_token", before=before)
    assert sts.last_audit("task.refused").detail["path"] == "/tasks"
    before = _count(sts, "task.refused")
    response = _send(
        client,
        "POST",
        "/tasks",
        authorization=None,
        proof=client.proof("POST", sts.url + "/tasks"),
        json={"agent": AGENT, "audiences": [AUD], "scopes": ["a"]},
    )
    _refused(sts, response, 401, "invalid_token", before=before)
    _ok_list(client, token)


def test_DPOP_15_bound_token_as_bearer_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    client, token = admin_token(sts)
    url = sts.url + "/tasks"
    before = _count(sts, "task.refused")
    response = _send(client, "GET", "/tasks", authorization=f"Bearer {token}", proof=None)
    _refused(sts, response, 401, "invalid_token", before=before)
    # a valid proof alongside does not rescue the downgrade
    before = _count(sts, "task.refused")
    proof = client.proof("GET", url, access_token=token)
    response = _send(client, "GET", "/tasks", authorization=f"Bearer {token}", proof=proof)
    _refused(sts, response, 401, "invalid_token", before=before)
    _ok_list(client, token)


def test_DPOP_15_dpop_scheme_without_proof_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    client, token = admin_token(sts)
    before = _count(sts, "task.refused")
    response = _send(client, "GET", "/tasks", authorization=f"DPoP {token}", proof=None)
    _refused(sts, response, 401, "invalid_dpop_proof", before=before)
    _ok_list(client, token)


def test_DPOP_03_proof_without_ath_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    client, token = admin_token(sts)
    proof = client.key.proof("GET", sts.url + "/tasks", nonce=client.nonce, now=sts.clock.now())
    before = _count(sts, "task.refused")
    response = _send(client, "GET", "/tasks", authorization=f"DPoP {token}", proof=proof)
    _refused(sts, response, 401, "invalid_dpop_proof", before=before)
    _ok_list(client, token)


def test_DPOP_14_proof_with_wrong_ath_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    client, token = admin_token(sts)
    _, other_token = admin_token(sts)
    proof = client.key.proof("GET", sts.url + "/tasks", nonce=client.nonce, access_token=other_token, now=sts.clock.now())
    before = _count(sts, "task.refused")
    response = _send(client, "GET", "/tasks", authorization=f"DPoP {token}", proof=proof)
    _refused(sts, response, 401, "invalid_dpop_proof", before=before)
    _ok_list(client, token)


def test_DPOP_14_proof_key_differs_from_cnf_jkt_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    client, token = admin_token(sts)
    thief = DPoPKey()
    # a well-formed proof with the right ath and a valid server nonce, but signed by another key
    proof = thief.proof("GET", sts.url + "/tasks", nonce=client.nonce, access_token=token, now=sts.clock.now())
    before = _count(sts, "task.refused")
    response = _send(client, "GET", "/tasks", authorization=f"DPoP {token}", proof=proof)
    _refused(sts, response, 401, "invalid_token", before=before)
    assert "key" in sts.last_audit("task.refused").detail["reason"]
    _ok_list(client, token)


def test_DPOP_08_proof_for_another_uri_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    client, token = admin_token(sts)
    proof = client.key.proof("GET", sts.url + "/jwks", nonce=client.nonce, access_token=token, now=sts.clock.now())
    before = _count(sts, "task.refused")
    response = _send(client, "GET", "/tasks", authorization=f"DPoP {token}", proof=proof)
    _refused(sts, response, 401, "invalid_dpop_proof", before=before)
    _ok_list(client, token)


def test_DPOP_12_replayed_api_proof_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    client, token = admin_token(sts)
    proof = client.proof("GET", sts.url + "/tasks", access_token=token)
    first = _send(client, "GET", "/tasks", authorization=f"DPoP {token}", proof=proof)
    assert first.status_code == 200, first.text
    before = _count(sts, "task.refused")
    again = _send(client, "GET", "/tasks", authorization=f"DPoP {token}", proof=proof)
    _refused(sts, again, 401, "invalid_dpop_proof", before=before)
    _ok_list(client, token)


def test_DPOP_10_api_proof_without_nonce_gets_nonce_challenge(shared_sts: RunningSts) -> None:
    sts = shared_sts
    client, token = admin_token(sts)
    proof = client.key.proof("GET", sts.url + "/tasks", access_token=token, now=sts.clock.now())
    before = _count(sts, "task.refused")
    response = _send(client, "GET", "/tasks", authorization=f"DPoP {token}", proof=proof)
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "use_dpop_nonce"
    assert 'error="use_dpop_nonce"' in response.headers["www-authenticate"]
    assert response.headers["dpop-nonce"]
    assert _count(sts, "task.refused") == before  # a nonce challenge is not a refusal
    retry = client.key.proof(
        "GET", sts.url + "/tasks", nonce=response.headers["dpop-nonce"], access_token=token, now=sts.clock.now()
    )
    ok = _send(client, "GET", "/tasks", authorization=f"DPoP {token}", proof=retry)
    assert ok.status_code == 200, ok.text


def test_BCP_07_hop_token_refused_at_task_api(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts)
    agent = Client(sts)
    session = agent.session(task["id"]).json()["access_token"]
    hop = agent.hop(session, AUD, scope="wiki:read")
    assert hop.status_code == 200, hop.text
    hop_token = hop.json()["access_token"]
    before = _count(sts, "task.refused")
    response = agent.api("GET", f"/tasks/{task['id']}", hop_token)
    _refused(sts, response, 401, "invalid_token", before=before)
    # positive control: the session token of the same task may read it
    assert agent.api("GET", f"/tasks/{task['id']}", session).status_code == 200


def test_garbage_token_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    client, token = admin_token(sts)
    before = _count(sts, "task.refused")
    response = client.api("GET", "/tasks", "not.a.jwt")
    _refused(sts, response, 401, "invalid_token", before=before)
    _ok_list(client, token)


def test_token_of_another_deployment_refused(shared_sts: RunningSts, sts: RunningSts) -> None:
    """A correctly signed admin token from another tether is not ours (unknown kid, wrong iss)."""
    home = shared_sts
    client, token = admin_token(home)
    _, foreign = admin_token(sts)
    before = _count(home, "task.refused")
    response = client.api("GET", "/tasks", foreign)
    _refused(home, response, 401, "invalid_token", before=before)
    _ok_list(client, token)


def test_session_token_is_not_admin(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts)
    agent = Client(sts)
    session = agent.session(task["id"]).json()["access_token"]
    before = _count(sts, "task.refused")
    response = agent.api("POST", "/tasks", session, json={"agent": AGENT, "audiences": [AUD], "scopes": ["wiki:read"]})
    _refused(sts, response, 403, "insufficient_scope", before=before)
    before = _count(sts, "task.refused")
    _refused(sts, agent.api("GET", "/tasks", session), 403, "insufficient_scope", before=before)
    before = _count(sts, "principal.refused")
    blocked = agent.api("POST", "/principals/block", session, json={"agent": AGENT})
    assert blocked.status_code == 403, blocked.text
    assert blocked.json()["error"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in blocked.headers["www-authenticate"]
    assert _count(sts, "principal.refused") == before + 1
    assert agent.api("GET", f"/tasks/{task['id']}", session).json()["state"] == "active"
    # positive control: an admin token creates and lists
    client, token = admin_token(sts)
    assert client.api("POST", "/tasks", token, json={"agent": AGENT, "audiences": [AUD], "scopes": ["a"]}).status_code == 201
    _ok_list(client, token)


def test_session_token_reads_and_completes_only_its_own_task(shared_sts: RunningSts) -> None:
    sts = shared_sts
    mine = create_task(sts)
    other = create_task(sts)
    agent = Client(sts)
    session = agent.session(mine["id"]).json()["access_token"]

    for path in (f"/tasks/{other['id']}", f"/tasks/{other['id']}/complete", f"/tasks/{other['id']}/cancel"):
        before = _count(sts, "task.refused")
        response = agent.api("POST" if path.endswith(("complete", "cancel")) else "GET", path, session)
        assert response.status_code == 404, response.text
        assert response.json()["error"] == "not_found"
        assert _count(sts, "task.refused") == before + 1
        assert sts.last_audit("task.refused").error == "not_found"
    client, admin = admin_token(sts)
    assert client.api("GET", f"/tasks/{other['id']}", admin).json()["state"] == "active"

    # positive control: its own task it may read and complete
    own = agent.api("GET", f"/tasks/{mine['id']}", session)
    assert own.status_code == 200, own.text
    assert own.json()["id"] == mine["id"]
    done = agent.api("POST", f"/tasks/{mine['id']}/complete", session)
    assert done.status_code == 200, done.text
    assert done.json()["state"] == "completed"
    assert sts.last_audit("task.completed").principal == AGENT
    # completing revoked every token of the task, including the caller's own session token
    before = _count(sts, "task.refused")
    _refused(sts, agent.api("GET", f"/tasks/{mine['id']}", session), 401, "invalid_token", before=before)


def test_revoked_admin_token_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    client, token = admin_token(sts)
    _ok_list(client, token)
    revoked = client.http.post(
        sts.url + "/revoke",
        data={"token": token, "client_assertion_type": JWT_BEARER, "client_assertion": sts.svid(ADMIN)},
    )
    assert revoked.status_code == 200, revoked.text
    before = _count(sts, "task.refused")
    response = client.api("GET", "/tasks", token)
    _refused(sts, response, 401, "invalid_token", before=before)
    assert "revoked" in sts.last_audit("task.refused").detail["reason"]
    # positive control: a fresh admin token from the same client works
    fresh = client.post_token({"grant_type": TOKEN_EXCHANGE, "subject_token": sts.svid(ADMIN), "subject_token_type": JWT})
    assert fresh.status_code == 200, fresh.text
    _ok_list(client, fresh.json()["access_token"])


def test_expired_admin_token_refused(sts: RunningSts) -> None:
    client, token = admin_token(sts)
    _ok_list(client, token)
    sts.clock.advance(301)  # admin_ttl is 300 s
    before = _count(sts, "task.refused")
    client.nonce = None  # the old nonce has expired too; let the client take a fresh challenge
    response = client.api("GET", "/tasks", token)
    _refused(sts, response, 401, "invalid_token", before=before)
    _, fresh = admin_token(sts, client)
    _ok_list(client, fresh)


def test_audit_of_refusal_holds_no_token(shared_sts: RunningSts) -> None:
    sts = shared_sts
    client, token = admin_token(sts)
    response = _send(client, "GET", "/tasks", authorization=f"Bearer {token}", proof=None)
    assert response.status_code == 401
    record = sts.last_audit("task.refused")
    dumped = json.dumps(record.as_json())
    assert token not in dumped
    assert token.split(".")[2] not in dumped
    _ok_list(client, token)
