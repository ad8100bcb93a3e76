"""``POST /revoke`` (RFC 7009) over real HTTP: the lineage tree dies with its root.

The caller authenticates with a workload JWT as a client assertion (ASVS 10.4.10) and
may revoke only tokens issued to it (AUX-05); unknown tokens are a 200. Revoking a
token revokes every token derived from it — hop tokens and actor-delegated tokens —
at introspection and at the token endpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from helpers import (
    ADMIN,
    AGENT,
    JWT,
    JWT_BEARER,
    QUIET_MONITOR,
    SVC_B,
    SVC_C,
    Client,
    RunningSts,
    admin_token,
    create_task,
    running_sts,
)
from tether.rules.jws import b64url_decode, strict_json_loads

AUD_B = "http://127.0.0.1:9001"
AUD_C = "http://127.0.0.1:9002"
RESOURCES = f"""
[[resources]]
uri = "{AUD_B}"
principals = ["{SVC_B}"]

[[resources]]
uri = "{AUD_C}"
principals = ["{SVC_C}"]
"""


@pytest.fixture(scope="module")
def rs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSts]:
    with running_sts(tmp_path_factory.mktemp("revoke"), extra_toml=RESOURCES + "\n" + QUIET_MONITOR) as server:
        yield server


def _jti(token: str) -> str:
    claims: dict[str, Any] = strict_json_loads(b64url_decode(token.split(".")[1]))
    return str(claims["jti"])


def _count(sts: RunningSts, kind: str) -> int:
    return sum(1 for r in sts.audit() if r.kind == kind)


def _post(sts: RunningSts, path: str, form: dict[str, str]) -> httpx.Response:
    return Client(sts).http.post(sts.url + path, data=form)


def revoke(sts: RunningSts, caller: str | None, token: str) -> httpx.Response:
    form = {"token": token}
    if caller is not None:
        form.update(client_assertion=sts.svid(caller), client_assertion_type=JWT_BEARER)
    return _post(sts, "/revoke", form)


def is_active(sts: RunningSts, token: str) -> bool:
    response = _post(
        sts, "/introspect", {"token": token, "client_assertion": sts.svid(ADMIN), "client_assertion_type": JWT_BEARER}
    )
    assert response.status_code == 200, response.text
    return bool(response.json()["active"])


def chain(sts: RunningSts, **task_fields: Any) -> dict[str, Any]:
    """A task with a session token, hop tokens for B and C, and B's actor-delegated token for C."""
    task = create_task(sts, audiences=[AUD_B, AUD_C], **task_fields)
    agent = Client(sts)
    session = agent.session(task["id"])
    assert session.status_code == 200, session.text
    hop = agent.hop(session.json()["access_token"], AUD_B, scope="wiki:read")
    assert hop.status_code == 200, hop.text
    second_hop = agent.hop(session.json()["access_token"], AUD_C, scope="wiki:read")
    assert second_hop.status_code == 200, second_hop.text
    b = Client(sts)
    delegated = b.hop(hop.json()["access_token"], AUD_C, actor_token=sts.svid(SVC_B), actor_token_type=JWT)
    assert delegated.status_code == 200, delegated.text
    return {
        "task": task,
        "agent": agent,
        "b": b,
        "session": session.json()["access_token"],
        "hop": hop.json()["access_token"],
        "second_hop": second_hop.json()["access_token"],
        "delegated": delegated.json()["access_token"],
    }


def _derive_all(sts: RunningSts, c: dict[str, Any]) -> list[httpx.Response]:
    """One further exchange from every token of the chain."""
    return [
        c["agent"].hop(c["session"], AUD_B),
        c["agent"].hop(c["session"], AUD_C),
        Client(sts).hop(c["hop"], AUD_C, actor_token=sts.svid(SVC_B), actor_token_type=JWT),
        Client(sts).hop(c["delegated"], AUD_B, actor_token=sts.svid(SVC_C), actor_token_type=JWT),
    ]


def test_AUX_05_client_revokes_session_token_and_every_derived_token(rs: RunningSts) -> None:
    c = chain(rs)
    control = chain(rs)
    assert all(is_active(rs, c[k]) for k in ("session", "hop", "second_hop", "delegated"))
    before = _count(rs, "token.revoked")
    response = revoke(rs, AGENT, c["session"])
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"

    for name in ("session", "hop", "second_hop", "delegated"):
        assert not is_active(rs, c[name]), name
    # and refused at the token endpoint
    for response in _derive_all(rs, c):
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_grant"
    assert rs.last_audit("token.refused").error == "invalid_grant"

    assert _count(rs, "token.revoked") == before + 1
    record = rs.last_audit("token.revoked")
    assert record.outcome == "ok"
    assert record.principal == AGENT
    assert record.task == c["task"]["id"]
    assert record.jti == _jti(c["session"])
    assert record.detail["revoked"] == 4

    # positive controls: the same exchanges from an unrevoked chain succeed ...
    for response in _derive_all(rs, control):
        assert response.status_code == 200, response.text
    # ... and the task itself is still active, so a new session works
    agent = Client(rs)
    again = agent.session(c["task"]["id"])
    assert again.status_code == 200, again.text
    hop = agent.hop(again.json()["access_token"], AUD_B)
    assert hop.status_code == 200, hop.text
    assert is_active(rs, hop.json()["access_token"])


def test_AUX_05_revoking_a_hop_token_leaves_its_parent_and_siblings(rs: RunningSts) -> None:
    c = chain(rs)
    assert revoke(rs, AGENT, c["hop"]).status_code == 200
    assert not is_active(rs, c["hop"])
    assert not is_active(rs, c["delegated"])  # its child
    assert rs.last_audit("token.revoked").detail["revoked"] == 2
    # positive controls: parent and sibling live on, and the parent still exchanges
    assert is_active(rs, c["session"])
    assert is_active(rs, c["second_hop"])
    ok = c["agent"].hop(c["session"], AUD_B)
    assert ok.status_code == 200, ok.text


def test_AUX_05_actor_revokes_its_delegated_token(rs: RunningSts) -> None:
    """SVC_B is the client of the token it obtained as actor, so it may revoke it (with a type hint)."""
    c = chain(rs)
    response = _post(
        rs,
        "/revoke",
        {
            "token": c["delegated"],
            "token_type_hint": "access_token",
            "client_assertion": rs.svid(SVC_B),
            "client_assertion_type": JWT_BEARER,
        },
    )
    assert response.status_code == 200, response.text
    assert not is_active(rs, c["delegated"])
    assert is_active(rs, c["hop"])


def test_AUX_05_unknown_token_is_200(rs: RunningSts) -> None:
    before = _count(rs, "token.revoked")
    for token in ("garbage", "a.b.c", "x" * 5000):
        response = revoke(rs, AGENT, token)
        assert response.status_code == 200, response.text
    assert _count(rs, "token.revoked") == before
    # positive control
    c = chain(rs)
    assert revoke(rs, AGENT, c["session"]).status_code == 200
    assert not is_active(rs, c["session"])


def test_AUX_05_revoking_twice_is_200(rs: RunningSts) -> None:
    c = chain(rs)
    assert revoke(rs, AGENT, c["session"]).status_code == 200
    again = revoke(rs, AGENT, c["session"])
    assert again.status_code == 200, again.text
    assert rs.last_audit("token.revoked").detail["revoked"] == 0


def test_AUX_05_other_client_cannot_revoke(rs: RunningSts) -> None:
    c = chain(rs)
    before = _count(rs, "revoke.refused")
    for caller, token in ((SVC_C, c["session"]), (SVC_B, c["session"]), (SVC_C, c["hop"])):
        response = revoke(rs, caller, token)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "unauthorized_client"
    assert _count(rs, "revoke.refused") == before + 3
    assert rs.last_audit("revoke.refused").error == "unauthorized_client"
    assert is_active(rs, c["session"])
    assert is_active(rs, c["hop"])
    # positive control: the token's own client may
    assert revoke(rs, AGENT, c["session"]).status_code == 200
    assert not is_active(rs, c["hop"])


def test_ASVS_10_4_10_revocation_requires_client_authentication(rs: RunningSts) -> None:
    c = chain(rs)
    before = _count(rs, "revoke.refused")
    response = revoke(rs, None, c["session"])
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    assertion = rs.svid(AGENT)
    assert (
        _post(
            rs, "/revoke", {"token": c["session"], "client_assertion": assertion, "client_assertion_type": JWT_BEARER}
        ).status_code
        == 200
    )
    # the same assertion a second time is refused (single use)
    reused = _post(rs, "/revoke", {"token": c["hop"], "client_assertion": assertion, "client_assertion_type": JWT_BEARER})
    assert reused.status_code == 401, reused.text
    assert reused.json()["error"] == "invalid_client"
    assert _count(rs, "revoke.refused") == before + 2
    assert rs.last_audit("revoke.refused").error == "invalid_client"
    # positive control: the first, authenticated request did revoke
    assert not is_active(rs, c["session"])


def test_ASVS_10_4_9_admin_may_revoke_any_token(rs: RunningSts) -> None:
    c = chain(rs)
    assert revoke(rs, ADMIN, c["session"]).status_code == 200
    assert not is_active(rs, c["delegated"])
    assert rs.last_audit("token.revoked").principal == ADMIN


def test_completing_a_task_revokes_all_its_tokens(rs: RunningSts) -> None:
    c = chain(rs)
    control = chain(rs)
    client, admin = admin_token(rs)
    done = client.api("POST", f"/tasks/{c['task']['id']}/complete", admin)
    assert done.status_code == 200, done.text
    for name in ("session", "hop", "second_hop", "delegated"):
        assert not is_active(rs, c[name]), name
    refused = c["agent"].hop(c["session"], AUD_B)
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_grant"
    session = Client(rs).session(c["task"]["id"])
    assert session.status_code == 400
    assert session.json()["error"] == "invalid_grant"
    record = rs.last_audit("task.completed")
    assert record.task == c["task"]["id"]
    # the revocation feed names the task, for resource servers
    feed = Client(rs).http.post(rs.url + "/revocations", data=rs.client_auth())
    assert feed.status_code == 200
    assert {"kind": "task", "value": c["task"]["id"]}.items() <= next(
        e for e in feed.json()["revocations"] if e["value"] == c["task"]["id"]
    ).items()
    # positive control: another task's lineage is untouched
    assert all(is_active(rs, control[k]) for k in ("session", "hop", "second_hop", "delegated"))
    ok = control["agent"].hop(control["session"], AUD_B)
    assert ok.status_code == 200, ok.text


def test_revocation_feed_lists_revoked_jtis(rs: RunningSts) -> None:
    c = chain(rs)
    http = Client(rs).http
    cursor = http.post(rs.url + "/revocations", data=rs.client_auth()).json()["cursor"]
    assert revoke(rs, AGENT, c["hop"]).status_code == 200
    feed = http.post(rs.url + "/revocations", data=rs.client_auth(after=str(cursor))).json()
    values = {(e["kind"], e["value"]) for e in feed["revocations"]}
    assert values == {("jti", _jti(c["hop"])), ("jti", _jti(c["delegated"]))}
    for after in ("-1", "\u00b2"):  # "²" is a digit to str.isdigit, not to int(): never a 500
        bad = http.post(rs.url + "/revocations", data=rs.client_auth(after=after))
        assert bad.status_code == 400
        assert bad.json()["error"] == "invalid_request"
