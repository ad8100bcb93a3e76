"""``GET /metrics`` of a real STS on loopback (issue 8): counters move by exactly what was done.

Each test scrapes, does real exchanges, refusals, revocations or subscriptions over
HTTP, scrapes again and compares. Labels are checked to be bounded sets that never
carry a principal, a task id, a jti or a token. ``metrics.enabled = false`` answers
404, and the endpoint is exempt from the admission limit (an overloaded STS still
answers scrapes), as ``/healthz`` is.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from obskit import by_label, check_labels, delta, scrape, value

from helpers import (
    ADMIN,
    AGENT,
    FEED_SUBSCRIBER,
    JWT_BEARER,
    SVC_RS,
    TOKEN_EXCHANGE,
    Client,
    RunningSts,
    ServerThread,
    admin_token,
    create_task,
    free_port,
    running_sts,
)
from tether.demo.services import docs_service
from tether.rules.jws import b64url_decode, strict_json_loads

AUD = "http://127.0.0.1:9001"
OTHER_AGENT = "spiffe://tether.local/agent/other"
ISSUED = "tether_tokens_issued_total"
REFUSALS = "tether_refusals_total"
SECONDS = "tether_exchange_seconds"
REVOCATIONS = "tether_revocations_total"
SUBSCRIBERS = "tether_feed_subscribers"


@pytest.fixture(scope="module")
def quiet_sts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSts]:
    """An STS without the audit-stream monitor, whose actions (a replayed proof suspends its task) move counters too."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TETHER_MONITOR_ENABLED", "false")
        with running_sts(tmp_path_factory.mktemp("metrics"), extra_toml=FEED_SUBSCRIBER) as server:
            yield server


def _jti(token: str) -> str:
    claims: dict[str, Any] = strict_json_loads(b64url_decode(token.split(".")[1]))
    return str(claims["jti"])


def _wait(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


#: none of these may appear in a label value, nor any task id, jti or token a test handled
PRINCIPALS = (ADMIN, AGENT, OTHER_AGENT, "spiffe://", "eyJ", "http")
ENDPOINTS = {"token", "introspect", "revoke", "jwks", "metadata", "health", "revocations", "revocations_stream",
             "policies", "tasks", "task", "task_transition", "block",
             "approvals", "approval", "approval_decide", "approval_events", "approval_link"}  # fmt: skip


def test_exchanges_and_refusals_move_the_counters_exactly(quiet_sts: RunningSts) -> None:
    task = create_task(quiet_sts)
    agent = Client(quiet_sts)
    assert agent.session(task["id"]).status_code == 200  # takes the nonce challenge before the first scrape
    before = scrape(quiet_sts.url)

    session = agent.session(task["id"])
    assert session.status_code == 200, session.text
    session_token = session.json()["access_token"]
    hop = agent.hop(session_token, AUD, scope="wiki:read")
    assert hop.status_code == 200, hop.text
    widened = agent.hop(session_token, AUD, scope="wiki:read wiki:admin")
    assert widened.json()["error"] == "invalid_scope"
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": session_token,
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token", "resource": AUD}  # fmt: skip
    proof = agent.proof()
    assert agent.post_token(form, proof=proof).status_code == 200
    replayed = agent.post_token(form, proof=proof)
    assert replayed.json()["error"] == "invalid_dpop_proof"
    anonymous = httpx.get(quiet_sts.url + "/tasks", trust_env=False)
    tasks_error = anonymous.json()["error"]
    assert anonymous.status_code == 401

    after = scrape(quiet_sts.url)
    assert delta(before, after, ISSUED, kind="session") == 1
    assert delta(before, after, ISSUED, kind="hop") == 2
    assert delta(before, after, ISSUED, kind="admin") == 0
    assert delta(before, after, REFUSALS, endpoint="token", error="invalid_scope") == 1
    assert delta(before, after, REFUSALS, endpoint="token", error="invalid_dpop_proof") == 1
    assert delta(before, after, REFUSALS, endpoint="token", error="use_dpop_nonce") == 0
    assert delta(before, after, REFUSALS, endpoint="tasks", error=tasks_error) == 1
    for kind, count in (("session", 1), ("hop", 2), ("refused", 2), ("admin", 0)):
        assert delta(before, after, SECONDS + "_count", kind=kind) == count, kind
        assert delta(before, after, SECONDS + "_bucket", kind=kind, le="+Inf") == count, kind
    check_labels(after, [*PRINCIPALS, task["id"], session_token, _jti(session_token), hop.json()["access_token"]])
    assert by_label(after, ISSUED, "kind") <= {"session", "hop", "admin"}
    assert by_label(after, SECONDS + "_count", "kind") <= {
        "session",
        "hop",
        "admin",
        "refused",
        "held",
    }  # held: a request waiting for approval
    assert {"token", "tasks"} <= by_label(after, REFUSALS, "endpoint") <= ENDPOINTS


def test_first_exchange_of_a_client_counts_one_nonce_challenge(quiet_sts: RunningSts) -> None:
    before = scrape(quiet_sts.url)
    _, token = admin_token(quiet_sts)  # a new client: challenged once (RFC 9449 §8), then issued
    after = scrape(quiet_sts.url)
    assert token
    assert delta(before, after, REFUSALS, endpoint="token", error="use_dpop_nonce") == 1
    assert delta(before, after, ISSUED, kind="admin") == 1
    assert delta(before, after, SECONDS + "_count", kind="refused") == 1


def test_revocation_kill_switch_and_completion_are_counted_by_kind(quiet_sts: RunningSts) -> None:
    task = create_task(quiet_sts)
    other = create_task(quiet_sts, agent=OTHER_AGENT)
    agent = Client(quiet_sts)
    session_token = agent.session(task["id"]).json()["access_token"]
    hop_token = agent.hop(session_token, AUD, scope="wiki:read").json()["access_token"]
    admin, admin_tok = admin_token(quiet_sts)
    before = scrape(quiet_sts.url)

    form = {"token": hop_token, "client_assertion": quiet_sts.svid(AGENT), "client_assertion_type": JWT_BEARER}
    assert agent.http.post(quiet_sts.url + "/revoke", data=form).status_code == 200
    again = form | {"client_assertion": quiet_sts.svid(AGENT)}  # a fresh assertion: each is single-use
    assert agent.http.post(quiet_sts.url + "/revoke", data=again).status_code == 200
    done = agent.api("POST", f"/tasks/{task['id']}/complete", session_token)
    assert done.status_code == 200, done.text
    blocked = admin.api("POST", "/principals/block", admin_tok, json={"agent": OTHER_AGENT})
    assert blocked.json()["tasks_cancelled"] == [other["id"]]

    after = scrape(quiet_sts.url)
    assert delta(before, after, REVOCATIONS, kind="jti") == 1  # the second revoke found nothing new
    assert delta(before, after, REVOCATIONS, kind="task") == 2  # one completion, one task cut by the kill switch
    assert by_label(after, REVOCATIONS, "kind") <= {"jti", "task"}
    check_labels(after, [*PRINCIPALS, task["id"], other["id"], _jti(hop_token), hop_token])


def test_feed_subscribers_rise_while_a_resource_server_subscribes(quiet_sts: RunningSts) -> None:
    baseline = value(scrape(quiet_sts.url), SUBSCRIBERS)
    port = free_port()
    app, verifier = docs_service(quiet_sts.url, f"http://127.0.0.1:{port}", quiet_sts.identity(SVC_RS))
    server = ServerThread(app, port).start()
    try:
        _wait(lambda: verifier.feed is not None and verifier.feed.fresh(time.time()), "the resource server's feed")
        _wait(lambda: value(scrape(quiet_sts.url), SUBSCRIBERS) == baseline + 1, "one more subscriber")
    finally:
        server.stop()
    _wait(lambda: value(scrape(quiet_sts.url), SUBSCRIBERS) == baseline, "the subscriber count to fall back")


@pytest.fixture
def busy_sts(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningSts]:
    """An STS whose admission limit refuses every ordinary request (no request may be in flight)."""
    monkeypatch.setenv("TETHER_SERVER_MAX_INFLIGHT", "0")
    with running_sts(tmp_path) as server:
        yield server


def test_metrics_answer_while_admission_refuses_everything_else(busy_sts: RunningSts) -> None:
    before = scrape(busy_sts.url)
    refused = httpx.get(busy_sts.url + "/jwks", trust_env=False)
    assert refused.status_code == 503
    assert refused.json()["error"] == "temporarily_unavailable"
    response = httpx.get(busy_sts.url + "/metrics", trust_env=False)
    assert response.status_code == 200
    after = scrape(busy_sts.url)
    assert delta(before, after, "tether_refusals_total", endpoint="admission", error="temporarily_unavailable") == 1
    assert response.headers["cache-control"] == "no-store"
    assert "tether_tokens_issued" in response.text


def test_stream_requests_are_admitted_like_any_other(busy_sts: RunningSts) -> None:
    # opening a revocation stream authenticates its caller, which is work: the admission limit
    # applies to it too (an open stream gives its slot back, see tests/sts/discovery/test_feed_access.py)
    for path in ("/tasks/x/stream", "/nothing/stream", "/revocations/stream/", "/revocations/stream"):
        refused = httpx.post(busy_sts.url + path, trust_env=False)
        assert refused.status_code == 503 and refused.json()["error"] == "temporarily_unavailable", path
    assert httpx.get(busy_sts.url + "/healthz", trust_env=False).status_code == 200  # positive control: exempt


def test_metrics_disabled_is_404(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_METRICS_ENABLED", "false")
    with running_sts(tmp_path) as sts:
        assert httpx.get(sts.url + "/jwks", trust_env=False).status_code == 200  # positive control: the STS serves
        response = httpx.get(sts.url + "/metrics", trust_env=False)
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"
        assert "tether_" not in response.text
