"""Admin tokens: a configured admin's workload JWT without ``task`` → ``tether:admin``, never task-bound."""

from __future__ import annotations

from tokenkit import SERVICE_B, audit_mark, claims_of, header_of, ok, refused

from helpers import ADMIN, AGENT, JWT, TOKEN_EXCHANGE, Client, RunningSts


def _admin_form(svid: str, **extra: str) -> dict[str, str]:
    return {"grant_type": TOKEN_EXCHANGE, "subject_token": svid, "subject_token_type": JWT, **extra}


def test_BCP_08_admin_svid_without_task_gets_admin_token(shared_sts: RunningSts) -> None:
    sts = shared_sts
    client = Client(sts)
    svid = sts.svid(ADMIN, ttl=120)
    body = ok(client.post_token(_admin_form(svid)))
    assert body["scope"] == "tether:admin" and body["token_type"] == "DPoP"
    token = body["access_token"]
    claims = claims_of(token)
    assert header_of(token)["typ"] == "at+jwt"
    assert claims["scope"] == "tether:admin"
    assert "txn" not in claims and "act" not in claims
    assert claims["aud"] == sts.url and claims["sub"] == ADMIN and claims["client_id"] == ADMIN
    assert claims["cnf"] == {"jkt": client.key.jkt}
    assert claims["exp"] <= claims_of(svid)["exp"] and claims["exp"] - claims["iat"] <= 300
    issued = sts.last_audit("token.issued")
    assert issued.detail["token_kind"] == "admin" and issued.task is None
    # It works at the task API (the positive use of the token).
    assert client.api("GET", "/tasks?limit=1", token).status_code == 200


def test_BCP_08_non_admin_svid_without_task_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    client = Client(sts)
    svid = sts.svid(AGENT)
    since = audit_mark(sts)
    record = refused(
        sts,
        client.post_token(_admin_form(svid)),
        since=since,
        status=400,
        error="invalid_request",
        description="`task` is required",
        secrets=[svid],
    )
    assert record.principal == AGENT
    ok(client.post_token(_admin_form(sts.svid(ADMIN))))


def test_T_01_admin_scope_widening_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    client = Client(sts)
    svid = sts.svid(ADMIN)
    since = audit_mark(sts)
    refused(
        sts,
        client.post_token(_admin_form(svid, scope="tether:admin tether:root")),
        since=since,
        status=400,
        error="invalid_scope",
        description="tether:root",
        secrets=[svid],
    )
    ok(client.post_token(_admin_form(svid, scope="tether:admin")))


def test_T_02_admin_token_for_another_audience_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    client = Client(sts)
    svid = sts.svid(ADMIN)
    since = audit_mark(sts)
    refused(
        sts,
        client.post_token(_admin_form(svid, resource=SERVICE_B)),
        since=since,
        status=400,
        error="invalid_target",
        secrets=[svid],
    )
    ok(client.post_token(_admin_form(svid, resource=sts.url)))


def test_SVID_05_admin_svid_redeemed_once(shared_sts: RunningSts) -> None:
    sts = shared_sts
    client = Client(sts)
    svid = sts.svid(ADMIN)
    ok(client.post_token(_admin_form(svid)))
    since = audit_mark(sts)
    refused(
        sts,
        client.post_token(_admin_form(svid)),
        since=since,
        status=400,
        error="invalid_grant",
        reason="already redeemed",
        secrets=[svid],
    )
    ok(client.post_token(_admin_form(sts.svid(ADMIN))))


def test_BCP_08_admin_token_cannot_be_exchanged_for_a_hop(shared_sts: RunningSts) -> None:
    sts = shared_sts
    client = Client(sts)
    admin = ok(client.post_token(_admin_form(sts.svid(ADMIN))))["access_token"]
    since = audit_mark(sts)
    refused(
        sts,
        client.hop(admin, SERVICE_B),
        since=since,
        status=400,
        error="invalid_grant",
        description="not bound to a task",
        secrets=[admin],
    )
    ok(client.post_token(_admin_form(sts.svid(ADMIN))))
