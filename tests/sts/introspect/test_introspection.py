"""``POST /introspect`` (RFC 7662) over real HTTP: caller authentication, visibility, liveness.

Callers authenticate with a workload JWT as an RFC 7523 client assertion. Only the
token's audience (or a workload registered for it), its client, or an admin learns
anything; everyone else gets ``{"active": false}`` (AUX-04, anti-token-scanning).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey

from helpers import (
    ACCESS,
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
from tether.identity.dev_issuer import DevTrustDomain

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
SVC_D = "spiffe://tether.local/svc/d"


@pytest.fixture(scope="module")
def rs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSts]:
    with running_sts(tmp_path_factory.mktemp("introspect"), extra_toml=RESOURCES + "\n" + QUIET_MONITOR) as server:
        yield server


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[RunningSts]:
    """A per-test server with the same resources, for tests that move the clock."""
    with running_sts(tmp_path, extra_toml=RESOURCES) as server:
        yield server


def _http(sts: RunningSts) -> httpx.Client:
    return Client(sts).http


def introspect(
    sts: RunningSts, caller: str | None, token: str, *, assertion: str | None = None, assertion_type: str = JWT_BEARER
) -> httpx.Response:
    form = {"token": token}
    if caller is not None or assertion is not None:
        form["client_assertion"] = assertion if assertion is not None else sts.svid(caller or AGENT)
        form["client_assertion_type"] = assertion_type
    return _http(sts).post(sts.url + "/introspect", data=form)


def active(sts: RunningSts, caller: str, token: str) -> dict[str, Any]:
    response = introspect(sts, caller, token)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    return body


def _count(sts: RunningSts, kind: str) -> int:
    return sum(1 for r in sts.audit() if r.kind == kind)


def chain(sts: RunningSts, **task_fields: Any) -> dict[str, Any]:
    """A task, its session token, a hop token for B and B's delegated token for C."""
    task = create_task(sts, audiences=[AUD_B, AUD_C], **task_fields)
    agent = Client(sts)
    session = agent.session(task["id"])
    assert session.status_code == 200, session.text
    hop = agent.hop(session.json()["access_token"], AUD_B, scope="wiki:read")
    assert hop.status_code == 200, hop.text
    b = Client(sts)
    delegated = b.hop(hop.json()["access_token"], AUD_C, actor_token=sts.svid(SVC_B), actor_token_type=JWT)
    assert delegated.status_code == 200, delegated.text
    return {
        "task": task,
        "agent": agent,
        "b": b,
        "session": session.json()["access_token"],
        "hop": hop.json()["access_token"],
        "delegated": delegated.json()["access_token"],
    }


# -- caller authentication ------------------------------------------------------------


def test_AUX_04_introspection_requires_caller_authentication(rs: RunningSts) -> None:
    c = chain(rs)
    before = _count(rs, "introspect.refused")
    response = introspect(rs, None, c["hop"])
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    assert "active" not in response.json()
    assert _count(rs, "introspect.refused") == before + 1
    record = rs.last_audit("introspect.refused")
    assert (record.outcome, record.error) == ("refused", "invalid_client")
    # positive control
    assert active(rs, SVC_B, c["hop"])["active"] is True


@pytest.mark.parametrize(
    "case",
    [
        "garbage",
        "wrong_type",
        "wrong_audience",
        "foreign_trust_domain",
        "untrusted_key",
        "tampered",
        "expired",
        "tether_token",
        "type_only",
    ],
)
def test_AUX_04_invalid_client_assertion_refused(rs: RunningSts, case: str) -> None:
    c = chain(rs)
    now = int(rs.clock.now())
    assertion_type = JWT_BEARER
    if case == "garbage":
        assertion = "not-a-jwt"
    elif case == "wrong_type":
        assertion, assertion_type = rs.svid(SVC_B), "urn:ietf:params:oauth:client-assertion-type:saml2-bearer"
    elif case == "wrong_audience":
        assertion = rs.svid(SVC_B, audience="https://elsewhere.example")
    elif case == "foreign_trust_domain":
        other = DevTrustDomain("other.example", ECKey.generate_key("P-256", private=True))
        assertion = other.issue("spiffe://other.example/svc/b", audience=rs.url, ttl=60, now=now)
    elif case == "untrusted_key":
        impostor = DevTrustDomain("tether.local", ECKey.generate_key("P-256", private=True))
        assertion = impostor.issue(SVC_B, audience=rs.url, ttl=60, now=now)
    elif case == "tampered":
        head, body, sig = rs.svid(SVC_B).split(".")
        assertion = f"{head}.{body}.{sig[:-6]}AAAAAA"
    elif case == "expired":
        assertion = rs.dev().issue(SVC_B, audience=rs.url, ttl=60, now=now - 3600)
    elif case == "tether_token":
        assertion = c["session"]
    else:
        assertion = ""
    form = {"token": c["hop"], "client_assertion_type": assertion_type}
    if assertion:
        form["client_assertion"] = assertion
    before = _count(rs, "introspect.refused")
    response = _http(rs).post(rs.url + "/introspect", data=form)
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    assert _count(rs, "introspect.refused") == before + 1
    assert rs.last_audit("introspect.refused").error == "invalid_client"
    assert active(rs, SVC_B, c["hop"])["active"] is True


def test_AUX_04_client_assertion_jti_redeemed_once(rs: RunningSts) -> None:
    c = chain(rs)
    assertion = rs.svid(SVC_B)
    first = introspect(rs, None, c["hop"], assertion=assertion)
    assert first.status_code == 200, first.text
    assert first.json()["active"] is True
    before = _count(rs, "introspect.refused")
    second = introspect(rs, None, c["hop"], assertion=assertion)
    assert second.status_code == 401, second.text
    assert second.json()["error"] == "invalid_client"
    assert _count(rs, "introspect.refused") == before + 1
    assert "already" in rs.last_audit("introspect.refused").detail["reason"]
    # positive control: a fresh assertion of the same workload works
    assert active(rs, SVC_B, c["hop"])["active"] is True


P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _high_s(token: str) -> str:
    """The other valid ECDSA signature of the same JWS (s → n − s)."""
    head, body, sig = token.split(".")
    raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    r, s = raw[:32], int.from_bytes(raw[32:], "big")
    flipped = r + (P256_N - s).to_bytes(32, "big")
    return f"{head}.{body}.{base64.urlsafe_b64encode(flipped).rstrip(b'=').decode()}"


def test_K_03_malleated_copy_of_a_used_assertion_refused(rs: RunningSts) -> None:
    """Single use is keyed on the ``jti``, not the token bytes, so a high-S copy is still a replay."""
    c = chain(rs)
    assertion = rs.svid(SVC_B)
    assert introspect(rs, None, c["hop"], assertion=assertion).json()["active"] is True
    copy = _high_s(assertion)
    assert copy != assertion
    replayed = introspect(rs, None, c["hop"], assertion=copy)
    assert replayed.status_code == 401, replayed.text
    assert replayed.json()["error"] == "invalid_client"
    assert active(rs, SVC_B, c["hop"])["active"] is True


def test_SVID_05_svid_spent_at_token_endpoint_cannot_authenticate_introspection(rs: RunningSts) -> None:
    """Issue 2: a JWT-SVID that carries a ``jti`` is redeemed at most once — on any endpoint.

    A workload JWT already redeemed at ``/token`` must not be replayable as client
    credentials at ``/introspect`` (nor at ``/revoke``)."""
    task = create_task(rs)
    svid = rs.svid(AGENT)
    session = Client(rs).session(task["id"], svid=svid)
    assert session.status_code == 200, session.text
    token = session.json()["access_token"]
    before = _count(rs, "introspect.refused")
    replayed = introspect(rs, None, token, assertion=svid)
    assert replayed.status_code == 401, replayed.text
    assert replayed.json()["error"] == "invalid_client"
    assert _count(rs, "introspect.refused") == before + 1
    # positive control: a fresh SVID of the same workload authenticates
    assert active(rs, AGENT, token)["active"] is True


def test_SVID_05_svid_spent_as_client_assertion_cannot_be_exchanged(rs: RunningSts) -> None:
    """The reverse: an SVID redeemed as a client assertion is not then a fresh subject token."""
    task = create_task(rs)
    svid = rs.svid(AGENT)
    first = introspect(rs, None, "garbage", assertion=svid)
    assert first.status_code == 200, first.text
    replayed = Client(rs).session(task["id"], svid=svid)
    assert replayed.status_code == 400, replayed.text
    assert replayed.json()["error"] == "invalid_grant"
    assert rs.last_audit("token.refused").error == "invalid_grant"
    # positive control: a fresh SVID exchanges
    assert Client(rs).session(task["id"]).status_code == 200


def test_AUX_04_assertion_audience_may_name_the_endpoint(rs: RunningSts) -> None:
    c = chain(rs)
    response = introspect(rs, None, c["hop"], assertion=rs.svid(SVC_B, audience=rs.url + "/introspect"))
    assert response.status_code == 200, response.text
    assert response.json()["active"] is True
    hinted = _http(rs).post(
        rs.url + "/introspect",
        data={
            "token": c["hop"],
            "token_type_hint": "access_token",
            "client_assertion": rs.svid(SVC_B),
            "client_assertion_type": JWT_BEARER,
        },
    )
    assert hinted.status_code == 200, hinted.text
    assert hinted.json()["active"] is True


def test_introspection_requires_token_parameter(rs: RunningSts) -> None:
    response = _http(rs).post(
        rs.url + "/introspect", data={"client_assertion": rs.svid(SVC_B), "client_assertion_type": JWT_BEARER}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
    c = chain(rs)
    assert active(rs, SVC_B, c["hop"])["active"] is True


# -- what the caller learns -------------------------------------------------------------


def test_AUX_04_audience_sees_active_with_cnf_scope_txn_client_id(rs: RunningSts) -> None:
    c = chain(rs, purpose="research")
    body = active(rs, SVC_B, c["hop"])
    assert body["active"] is True
    assert body["cnf"] == {"jkt": c["agent"].key.jkt}
    assert body["scope"] == "wiki:read"
    assert body["txn"] == c["task"]["id"]
    assert body["client_id"] == AGENT
    assert body["sub"] == AGENT
    assert body["aud"] == AUD_B
    assert body["iss"] == rs.url
    assert body["token_type"] == "DPoP"
    assert body["purp"] == "research"
    assert isinstance(body["exp"], int) and body["exp"] > body["iat"]
    assert "act" not in body


def test_AUX_04_delegated_token_shows_act_chain(rs: RunningSts) -> None:
    c = chain(rs)
    body = active(rs, SVC_C, c["delegated"])
    assert body["active"] is True
    assert body["act"] == {"sub": SVC_B}
    assert body["client_id"] == SVC_B
    assert body["sub"] == AGENT
    assert body["aud"] == AUD_C
    assert body["cnf"] == {"jkt": c["b"].key.jkt}
    assert body["txn"] == c["task"]["id"]


def test_AUX_04_on_behalf_of_token_shows_agent_as_actor(rs: RunningSts) -> None:
    c = chain(rs, on_behalf_of="user:alice")
    body = active(rs, SVC_B, c["hop"])
    assert body["active"] is True
    assert body["sub"] == "user:alice"
    assert body["act"] == {"sub": AGENT}
    delegated = active(rs, SVC_C, c["delegated"])
    assert delegated["act"] == {"sub": SVC_B, "act": {"sub": AGENT}}


def test_AUX_04_unrelated_workload_sees_only_inactive(rs: RunningSts) -> None:
    c = chain(rs)
    for caller, token in ((SVC_C, c["hop"]), (SVC_D, c["hop"]), (SVC_D, c["session"]), (SVC_B, c["session"])):
        assert active(rs, caller, token) == {"active": False}, (caller, token[:20])
    # positive controls: the audience, the token's client and an admin see it
    assert active(rs, SVC_B, c["hop"])["active"] is True
    assert active(rs, AGENT, c["hop"])["active"] is True
    assert active(rs, AGENT, c["session"])["active"] is True
    assert active(rs, ADMIN, c["session"])["active"] is True


def test_garbage_token_is_inactive_not_an_error(rs: RunningSts) -> None:
    for token in ("garbage", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", "x" * 10_000):
        assert active(rs, SVC_B, token) == {"active": False}
    c = chain(rs)
    assert active(rs, SVC_B, c["hop"])["active"] is True


def test_token_of_another_deployment_is_inactive(rs: RunningSts, sts: RunningSts) -> None:
    task = create_task(sts)
    foreign = Client(sts).session(task["id"]).json()["access_token"]
    assert active(sts, AGENT, foreign)["active"] is True  # live at home
    assert active(rs, ADMIN, foreign) == {"active": False}
    c = chain(rs)
    assert active(rs, ADMIN, c["session"])["active"] is True


# -- liveness -----------------------------------------------------------------------------


def test_completed_task_tokens_inactive_at_once(rs: RunningSts) -> None:
    c = chain(rs)
    control = chain(rs)
    assert active(rs, SVC_B, c["hop"])["active"] is True
    client, admin = admin_token(rs)
    done = client.api("POST", f"/tasks/{c['task']['id']}/complete", admin)
    assert done.status_code == 200, done.text
    # no clock movement, no sweep: inactive on the very next request
    assert active(rs, SVC_B, c["hop"]) == {"active": False}
    assert active(rs, SVC_C, c["delegated"]) == {"active": False}
    assert active(rs, AGENT, c["session"]) == {"active": False}
    assert active(rs, ADMIN, c["session"]) == {"active": False}
    # positive control: another task's tokens are untouched
    assert active(rs, SVC_B, control["hop"])["active"] is True
    assert active(rs, SVC_C, control["delegated"])["active"] is True


def test_cancelled_task_tokens_inactive(rs: RunningSts) -> None:
    c = chain(rs)
    client, admin = admin_token(rs)
    assert client.api("POST", f"/tasks/{c['task']['id']}/cancel", admin).status_code == 200
    assert active(rs, SVC_B, c["hop"]) == {"active": False}
    other = chain(rs)
    assert active(rs, SVC_B, other["hop"])["active"] is True


def test_revoked_token_inactive(rs: RunningSts) -> None:
    c = chain(rs)
    revoke = _http(rs).post(
        rs.url + "/revoke", data={"token": c["hop"], "client_assertion": rs.svid(AGENT), "client_assertion_type": JWT_BEARER}
    )
    assert revoke.status_code == 200, revoke.text
    assert active(rs, SVC_B, c["hop"]) == {"active": False}
    assert active(rs, SVC_C, c["delegated"]) == {"active": False}  # derived from the hop token
    # positive control: the parent session token is not revoked by revoking its child
    assert active(rs, AGENT, c["session"])["active"] is True


def test_expired_token_and_task_inactive(fresh: RunningSts) -> None:
    sts = fresh
    c = chain(sts, max_duration=120)
    long_lived = chain(sts)
    assert active(sts, SVC_B, c["hop"])["active"] is True
    sts.clock.advance(121)  # past the short task's hard cap (and so its tokens' exp)
    assert active(sts, SVC_B, c["hop"]) == {"active": False}
    assert active(sts, AGENT, c["session"]) == {"active": False}
    assert active(sts, SVC_B, long_lived["hop"])["active"] is True
    sts.clock.advance(300)  # hop_ttl: now every hop token has expired
    assert active(sts, SVC_B, long_lived["hop"]) == {"active": False}
    # positive control: a fresh chain on the same server is live
    assert active(sts, SVC_B, chain(sts)["hop"])["active"] is True


def test_hop_token_exchange_reflects_introspection(rs: RunningSts) -> None:
    """What introspection says inactive, the token endpoint refuses too (same source of truth)."""
    c = chain(rs)
    client, admin = admin_token(rs)
    assert client.api("POST", f"/tasks/{c['task']['id']}/complete", admin).status_code == 200
    refused = c["agent"].hop(c["session"], AUD_B)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == "invalid_grant"
    again = Client(rs).hop(c["hop"], AUD_C, actor_token=rs.svid(SVC_B), actor_token_type=JWT)
    assert again.json()["error"] == "invalid_grant"
    live = chain(rs)
    ok = live["agent"].hop(live["session"], AUD_B)
    assert ok.status_code == 200, ok.text
    assert ok.json()["issued_token_type"] == ACCESS
