"""The task API over real HTTP: create, read, list, complete, cancel (issue 2, "Tasks").

Every request is authenticated with a DPoP-bound admin token (the dogfood path).
Negative cases assert the wire (status, ``error``) and the audit record, then run a
positive control on the same server so that a dead fixture cannot make them pass.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import pytest

from helpers import ADMIN, AGENT, Client, RunningSts, admin_token, create_task

AUD = "http://127.0.0.1:9001"
OTHER_AGENT = "spiffe://tether.local/agent/other"


def _count(sts: RunningSts, kind: str) -> int:
    return sum(1 for r in sts.audit() if r.kind == kind)


def _refused(sts: RunningSts, response: httpx.Response, status: int, error: str, *, before: int, path: str) -> None:
    """The wire answer and its audit record (``task.refused``) for one refusal."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    assert isinstance(body.get("error_description"), str)
    assert response.headers["cache-control"] == "no-store"
    if status in (401, 403):
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith("DPoP ")
        assert f'error="{error}"' in challenge
    assert _count(sts, "task.refused") == before + 1
    record = sts.last_audit("task.refused")
    assert record.outcome == "refused"
    assert record.error == error
    assert record.detail["path"] == path


def _admin(sts: RunningSts) -> tuple[Client, str]:
    return admin_token(sts)


# -- create -------------------------------------------------------------------------


def test_create_task_returns_201_with_fields_and_defaults(shared_sts: RunningSts) -> None:
    sts = shared_sts
    client, token = _admin(sts)
    response = client.api("POST", "/tasks", token, json={"agent": AGENT, "audiences": [AUD], "scopes": ["wiki:read"]})
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    assert "dpop-nonce" in response.headers
    task = response.json()
    assert task["id"].startswith("tsk_")
    assert task["agent"] == AGENT
    assert task["audiences"] == [AUD]
    assert task["scopes"] == ["wiki:read"]
    assert task["state"] == "active"
    assert task["on_behalf_of"] is None
    assert task["purpose"] is None
    assert task["tokens_issued"] == 0
    assert task["ended_at"] is None
    assert task["created_by"] == ADMIN
    # server defaults (tether.toml [tasks]): 15 minutes, depth 3, 100 tokens
    assert task["expires_at"] - task["created_at"] == 900
    assert task["max_depth"] == 3
    assert task["max_tokens"] == 100
    record = sts.last_audit("task.created")
    assert record.task == task["id"]
    assert record.principal == ADMIN
    assert record.detail["agent"] == AGENT
    assert record.detail["scopes"] == ["wiki:read"]


def test_create_task_with_every_field(shared_sts: RunningSts) -> None:
    task = create_task(
        shared_sts,
        agent=AGENT,
        audiences=[AUD, "http://127.0.0.1:9002"],
        scopes=["wiki:read", "wiki:write"],
        purpose="summarise the wiki",
        on_behalf_of="user:alice",
        max_duration=120,
        max_depth=2,
        max_tokens=7,
    )
    assert task["audiences"] == [AUD, "http://127.0.0.1:9002"]
    assert task["scopes"] == ["wiki:read", "wiki:write"]
    assert task["purpose"] == "summarise the wiki"
    assert task["on_behalf_of"] == "user:alice"
    assert task["expires_at"] - task["created_at"] == 120
    assert (task["max_depth"], task["max_tokens"]) == (2, 7)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_duration", 901),
        ("max_depth", 6),
        ("max_tokens", 10_001),
        ("max_duration", 0),
        ("max_tokens", -1),
        ("max_depth", True),
        ("max_duration", "60"),
    ],
)
def test_create_task_beyond_server_caps_refused_not_clamped(shared_sts: RunningSts, field: str, value: Any) -> None:
    sts = shared_sts
    client, token = _admin(sts)
    body = {"agent": AGENT, "audiences": [AUD], "scopes": ["wiki:read"], field: value}
    before = _count(sts, "task.refused")
    response = client.api("POST", "/tasks", token, json=body)
    _refused(sts, response, 400, "invalid_request", before=before, path="/tasks")
    assert field in response.json()["error_description"]
    # positive control: the server maximum itself is accepted as given, not clamped
    maxima = {"max_duration": 900, "max_depth": 5, "max_tokens": 10_000}
    ok = client.api("POST", "/tasks", token, json={**body, field: maxima[field]})
    assert ok.status_code == 201, ok.text
    task = ok.json()
    if field == "max_duration":
        assert task["expires_at"] - task["created_at"] == 900
    else:
        assert task[field] == maxima[field]


@pytest.mark.parametrize(
    ("patch", "error"),
    [
        ({"agent": None}, "invalid_request"),
        ({"agent": "not a principal"}, "invalid_request"),
        ({"audiences": []}, "invalid_request"),
        ({"audiences": ["relative/path"]}, "invalid_target"),
        ({"scopes": []}, "invalid_request"),
        ({"colour": "blue"}, "invalid_request"),
        ({"on_behalf_of": AGENT}, "invalid_request"),
    ],
)
def test_create_task_malformed_request_refused(shared_sts: RunningSts, patch: dict[str, Any], error: str) -> None:
    sts = shared_sts
    client, token = _admin(sts)
    good = {"agent": AGENT, "audiences": [AUD], "scopes": ["wiki:read"]}
    body = {k: v for k, v in {**good, **patch}.items() if v is not None}
    before = _count(sts, "task.refused")
    response = client.api("POST", "/tasks", token, json=body)
    _refused(sts, response, 400, error, before=before, path="/tasks")
    ok = client.api("POST", "/tasks", token, json=good)
    assert ok.status_code == 201, ok.text


def test_create_task_issuer_as_audience_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    client, token = _admin(sts)
    before = _count(sts, "task.refused")
    response = client.api("POST", "/tasks", token, json={"agent": AGENT, "audiences": [sts.url], "scopes": ["a"]})
    _refused(sts, response, 400, "invalid_target", before=before, path="/tasks")
    ok = client.api("POST", "/tasks", token, json={"agent": AGENT, "audiences": [AUD], "scopes": ["a"]})
    assert ok.status_code == 201, ok.text


# -- read -----------------------------------------------------------------------------


def test_get_task_returns_the_task(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts, purpose="read me")
    client, token = _admin(sts)
    response = client.api("GET", f"/tasks/{task['id']}", token)
    assert response.status_code == 200, response.text
    assert response.json() == task


def test_get_unknown_task_is_404_json(shared_sts: RunningSts) -> None:
    sts = shared_sts
    client, token = _admin(sts)
    before = _count(sts, "task.refused")
    response = client.api("GET", "/tasks/tsk_doesnotexist", token)
    _refused(sts, response, 404, "not_found", before=before, path="/tasks/tsk_doesnotexist")
    task = create_task(sts)
    assert client.api("GET", f"/tasks/{task['id']}", token).status_code == 200


# -- list -----------------------------------------------------------------------------


def _ids(client: Client, token: str, query: str) -> set[str]:
    response = client.api("GET", "/tasks" + query, token)
    assert response.status_code == 200, response.text
    return {t["id"] for t in response.json()["tasks"]}


def test_list_tasks_by_state(sts: RunningSts) -> None:
    short = create_task(sts, max_duration=60)
    done = create_task(sts)
    cancelled = create_task(sts)
    live = create_task(sts)
    client, token = _admin(sts)
    assert client.api("POST", f"/tasks/{done['id']}/complete", token).status_code == 200
    assert client.api("POST", f"/tasks/{cancelled['id']}/cancel", token).status_code == 200

    assert _ids(client, token, "?state=active") == {short["id"], live["id"]}
    assert _ids(client, token, "?state=completed") == {done["id"]}
    assert _ids(client, token, "?state=cancelled") == {cancelled["id"]}
    assert _ids(client, token, "?state=expired") == set()
    assert _ids(client, token, "") == {short["id"], done["id"], cancelled["id"], live["id"]}

    sts.clock.advance(61)  # past the short task's hard cap; no sweep needed
    assert _ids(client, token, "?state=expired") == {short["id"]}
    assert _ids(client, token, "?state=active") == {live["id"]}
    shown = client.api("GET", f"/tasks/{short['id']}", token).json()
    assert shown["state"] == "expired"
    listed = client.api("GET", "/tasks?state=expired", token).json()["tasks"]
    assert [t["state"] for t in listed] == ["expired"]


def test_list_tasks_by_agent(shared_sts: RunningSts) -> None:
    sts = shared_sts
    mine = create_task(sts, agent=OTHER_AGENT)
    client, token = _admin(sts)
    ids = _ids(client, token, f"?agent={quote(OTHER_AGENT, safe='')}")
    assert mine["id"] in ids
    response = client.api("GET", f"/tasks?agent={quote(OTHER_AGENT, safe='')}", token)
    assert {t["agent"] for t in response.json()["tasks"]} == {OTHER_AGENT}


# "%C2%B2" is ², a digit to str.isdigit that int() cannot read: invalid_request, never a 500
@pytest.mark.parametrize(
    "query", ["?state=finished", "?limit=0", "?limit=abc", "?limit=1001", "?limit=%C2%B2"]
)  # ² is a digit to isdigit
def test_list_tasks_bad_query_refused(shared_sts: RunningSts, query: str) -> None:
    sts = shared_sts
    client, token = _admin(sts)
    before = _count(sts, "task.refused")
    response = client.api("GET", "/tasks" + query, token)
    _refused(sts, response, 400, "invalid_request", before=before, path="/tasks")
    assert client.api("GET", "/tasks?state=active&limit=5", token).status_code == 200


# -- complete / cancel ----------------------------------------------------------------


def test_complete_task_then_second_complete_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts)
    client, token = _admin(sts)
    response = client.api("POST", f"/tasks/{task['id']}/complete", token)
    assert response.status_code == 200, response.text
    ended = response.json()
    assert ended["state"] == "completed"
    assert isinstance(ended["ended_at"], int)
    record = sts.last_audit("task.completed")
    assert (record.task, record.principal) == (task["id"], ADMIN)
    assert client.api("GET", f"/tasks/{task['id']}", token).json()["state"] == "completed"

    path = f"/tasks/{task['id']}/complete"
    before = _count(sts, "task.refused")
    again = client.api("POST", path, token)
    _refused(sts, again, 400, "invalid_request", before=before, path=path)
    assert "completed" in again.json()["error_description"]
    before = _count(sts, "task.refused")
    cancel = client.api("POST", f"/tasks/{task['id']}/cancel", token)
    _refused(sts, cancel, 400, "invalid_request", before=before, path=f"/tasks/{task['id']}/cancel")
    assert client.api("GET", f"/tasks/{task['id']}", token).json()["state"] == "completed"
    # positive control: another task still completes
    other = create_task(sts)
    assert client.api("POST", f"/tasks/{other['id']}/complete", token).status_code == 200


def test_cancel_task(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts)
    client, token = _admin(sts)
    response = client.api("POST", f"/tasks/{task['id']}/cancel", token)
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"
    assert sts.last_audit("task.cancelled").task == task["id"]
    path = f"/tasks/{task['id']}/complete"
    before = _count(sts, "task.refused")
    _refused(sts, client.api("POST", path, token), 400, "invalid_request", before=before, path=path)


def test_expired_task_cannot_be_completed(sts: RunningSts) -> None:
    task = create_task(sts, max_duration=30)
    control = create_task(sts)
    client, token = _admin(sts)
    sts.clock.advance(31)
    path = f"/tasks/{task['id']}/complete"
    before = _count(sts, "task.refused")
    response = client.api("POST", path, token)
    _refused(sts, response, 400, "invalid_request", before=before, path=path)
    assert "expired" in response.json()["error_description"]
    assert client.api("POST", f"/tasks/{control['id']}/complete", token).status_code == 200


def test_unknown_task_action_is_404_json(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts)
    client, token = _admin(sts)
    path = f"/tasks/{task['id']}/frobnicate"
    before = _count(sts, "task.refused")
    response = client.api("POST", path, token)
    _refused(sts, response, 404, "not_found", before=before, path=path)
    assert response.headers["content-type"].startswith("application/json")
    assert client.api("GET", f"/tasks/{task['id']}", token).json()["state"] == "active"
    # positive control
    assert client.api("POST", f"/tasks/{task['id']}/complete", token).status_code == 200


def test_complete_unknown_task_is_404(shared_sts: RunningSts) -> None:
    sts = shared_sts
    client, token = _admin(sts)
    before = _count(sts, "task.refused")
    response = client.api("POST", "/tasks/tsk_nope/complete", token)
    _refused(sts, response, 404, "not_found", before=before, path="/tasks/tsk_nope/complete")
    task = create_task(sts)
    assert client.api("POST", f"/tasks/{task['id']}/complete", token).status_code == 200


def _raw(client: Client, method: str, path: str, token: str, *, content: bytes, content_type: str) -> httpx.Response:
    """A DPoP-authenticated request with a hand-made body (``Client.api`` only sends JSON)."""
    url = client.sts.url + path
    headers = {
        "Authorization": f"DPoP {token}",
        "DPoP": client.proof(method, url, access_token=token),
        "Content-Type": content_type,
    }
    response = client.http.request(method, url, headers=headers, content=content)
    client.nonce = response.headers.get("dpop-nonce", client.nonce)
    return response


def test_create_task_requires_json_body(shared_sts: RunningSts) -> None:
    sts = shared_sts
    client, token = _admin(sts)
    before = _count(sts, "task.refused")
    response = _raw(client, "POST", "/tasks", token, content=b"agent=x", content_type="text/plain")
    _refused(sts, response, 400, "invalid_request", before=before, path="/tasks")
    before = _count(sts, "task.refused")
    dup = f'{{"agent": "{AGENT}", "agent": "{AGENT}", "audiences": ["{AUD}"], "scopes": ["a"]}}'.encode()
    response = _raw(client, "POST", "/tasks", token, content=dup, content_type="application/json")
    _refused(sts, response, 400, "invalid_request", before=before, path="/tasks")
    good = f'{{"agent": "{AGENT}", "audiences": ["{AUD}"], "scopes": ["a"]}}'.encode()
    ok = _raw(client, "POST", "/tasks", token, content=good, content_type="application/json")
    assert ok.status_code == 201, ok.text
