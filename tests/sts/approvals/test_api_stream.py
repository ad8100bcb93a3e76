"""The approval stream (SSE, ``GET /approvals/{id}/events``) and the approval webhook, over real HTTP.

The stream sends the approval at once and on every change, and ends when it is decided or
expired; it is for an approver who may see it, an admin, or the agent holding a bound token for
the approval's task. The webhook is the running STS's own ``on_hold`` (``ApprovalWebhook``),
delivering to a loopback receiver; the links it carries are then used against the STS.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from approvals_api_kit import ALICE, CAROL, DAVE, EVE, OLIVIA, ApprovalsEnv, Receiver, approvals_env, refused

from helpers import Client, admin_token
from tether.model import Approval, Task
from tether.sts.approval_webhook import ApprovalWebhook
from tether.sts.routes.approvals import ApprovalStreams


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver(fail_first=1) as server:
        yield server


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[ApprovalsEnv]:
    with approvals_env(tmp_path_factory.mktemp("approvals-stream"), webhook_url=receiver.url) as environment:
        yield environment


def events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    name = ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield name, json.loads(line.removeprefix("data: "))


def _stream(env: ApprovalsEnv, approval_id: str, headers: dict[str, str]) -> Any:
    return env.http.stream("GET", f"{env.sts.url}/approvals/{approval_id}/events", headers=headers, timeout=20.0)


def test_stream_emits_the_decision_and_closes(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task())
    with _stream(env, approval.id, {"Authorization": f"Bearer {env.id_token(ALICE)}"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        stream = events(response)
        name, first = next(stream)
        assert (name, first["id"], first["status"]) == ("approval", approval.id, "pending")
        assert env.approve(CAROL, approval.id).status_code == 200
        name, second = next(stream)
        assert (name, second["status"], second["decided_by"]) == ("approval", "approved", CAROL)
        assert list(stream) == []  # the stream ended with the decision


def test_stream_for_the_agent_with_its_task_token(env: ApprovalsEnv) -> None:
    task = env.task()
    approval = env.hold(task)
    client = Client(env.sts)
    session = client.session(task.id)
    assert session.status_code == 200, session.text
    token = session.json()["access_token"]
    url = f"{env.sts.url}/approvals/{approval.id}/events"
    for _ in range(2):  # one retry for a DPoP nonce, as a client would
        headers = {"Authorization": f"DPoP {token}", "DPoP": client.proof("GET", url, access_token=token)}
        with client.http.stream("GET", url, headers=headers, timeout=20.0) as response:
            if "dpop-nonce" in response.headers and response.status_code == 401:
                client.nonce = response.headers["dpop-nonce"]
                continue
            assert response.status_code == 200, response.read()
            stream = events(response)
            assert next(stream)[1]["status"] == "pending"
            assert env.deny(ALICE, approval.id).status_code == 200
            assert next(stream)[1]["status"] == "denied"
            break
    other = env.hold(env.task())  # another task's approval: the agent's token does not see it
    response = client.api("GET", f"/approvals/{other.id}/events", token)
    refused(response, 404, "not_found")


def test_stream_ends_when_the_approval_expires(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task(), created_at=env.now() - 299, ttl=300)
    with _stream(env, approval.id, {"Authorization": f"Bearer {env.id_token(ALICE)}"}) as response:
        statuses = [body["status"] for _, body in events(response)]
    assert statuses[0] in ("pending", "expired")
    assert statuses[-1] == "expired"


def test_stream_refused_to_who_may_not_see_it(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task())
    refused(env.as_(EVE, "GET", f"/approvals/{approval.id}/events"), 404, "not_found")
    response = env.api("GET", f"/approvals/{approval.id}/events", "not-a-token")
    refused(response, 401, "invalid_token")
    assert response.headers["www-authenticate"].startswith("Bearer ")


def test_stream_admin_sees_it(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task())
    env.stored(approval.id)
    client, token = admin_token(env.sts)
    assert env.approve(ALICE, approval.id).status_code == 200
    url = f"{env.sts.url}/approvals/{approval.id}/events"
    headers = {"Authorization": f"DPoP {token}", "DPoP": client.proof("GET", url, access_token=token)}
    with client.http.stream("GET", url, headers=headers, timeout=20.0) as response:
        assert response.status_code == 200
        assert [b["status"] for _, b in events(response)] == ["approved"]  # decided: one event, then the end


def test_stream_caps_per_caller(env: ApprovalsEnv) -> None:
    app = env.sts.sts.app
    saved = getattr(app.state, "approval_streams", None)
    app.state.approval_streams = ApprovalStreams(max_per_caller=1)
    try:
        approval = env.hold(env.task())
        with _stream(env, approval.id, {"Authorization": f"Bearer {env.id_token(ALICE)}"}) as first:
            stream = events(first)
            assert next(stream)[1]["status"] == "pending"
            refused(env.as_(ALICE, "GET", f"/approvals/{approval.id}/events"), 429, "too_many_requests")
            assert env.approve(CAROL, approval.id).status_code == 200
            assert [body["status"] for _, body in stream] == ["approved"]
        with _stream(env, approval.id, {"Authorization": f"Bearer {env.id_token(ALICE)}"}) as again:
            assert again.status_code == 200  # the slot was freed when the first stream ended
            list(events(again))
    finally:
        app.state.approval_streams = saved or ApprovalStreams()


# -- the webhook ------------------------------------------------------------------------------------------


def _announce(env: ApprovalsEnv, approval: Approval, task: Task) -> None:
    """What the token endpoint does for a new hold: ``ctx.on_hold(approval, task)`` in the server's loop."""
    webhook = env.sts.sts.approval_webhook
    assert isinstance(webhook, ApprovalWebhook)
    assert env.sts.sts.ctx.on_hold is webhook
    worker = webhook.sender._worker
    assert worker is not None
    worker.get_loop().call_soon_threadsafe(webhook, approval, task)


def test_webhook_delivers_working_links(env: ApprovalsEnv, receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    task = env.task()
    approval = env.hold(task)
    before = len(receiver.bodies)
    _announce(env, approval, task)  # the receiver fails the first attempt: delivered on the retry
    body = receiver.wait(before + 1)[-1]
    assert body["type"] == "approval.requested"
    assert body["approval"]["id"] == approval.id
    assert body["approval"]["request"] == approval.view
    links = body["links"]
    assert sorted(links) == [ALICE, CAROL, DAVE]  # listed finance members; never FRANK (by claim only)
    approve = links[ALICE]["approve"]
    assert approve.startswith(env.sts.url + "/approvals/link/")
    assert links[ALICE]["approve"] != links[CAROL]["approve"] != links[ALICE]["deny"]
    page = env.http.get(approve)
    assert page.status_code == 200 and '<form method="post">' in page.text
    decided = env.http.post(approve, headers={"Accept": "application/json"})
    assert decided.status_code == 200, decided.text
    assert (decided.json()["status"], decided.json()["decided_by"]) == ("approved", ALICE)
    late = env.http.post(links[CAROL]["deny"], headers={"Accept": "application/json"})
    refused(late, 400, "invalid_request")
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(("tether", "uvicorn")))
    assert "webhook" in text  # the failed first attempt was logged (scheme and host only)
    for pair in links.values():
        for url in pair.values():
            assert url.rsplit("/", 1)[1] not in text
    assert "/approvals/link/" not in text


def test_webhook_links_skip_parties_and_follow_the_subject(env: ApprovalsEnv, receiver: Receiver) -> None:
    task = env.task(created_by=DAVE)
    approval = env.hold(task, client=CAROL)
    before = len(receiver.bodies)
    _announce(env, approval, task)
    body = receiver.wait(before + 1)[-1]
    assert sorted(body["links"]) == [ALICE]  # Carol requested it, Dave created the task
    mine = env.task(on_behalf_of=OLIVIA)
    subject = env.hold(mine, groups=["subject"])
    _announce(env, subject, mine)
    body = receiver.wait(before + 2)[-1]
    assert body["approval"]["id"] == subject.id
    assert sorted(body["links"]) == [OLIVIA]
