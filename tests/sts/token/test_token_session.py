"""Step 2 of the flow: workload JWT + DPoP + ``task`` → session token (RFC 8693 §2, RFC 9068, RFC 9449).

Every refusal asserts the wire error, its ``token.refused`` audit record and that no
token or proof leaked (BCP-13), and is followed by a positive control on the same
client and task.
"""

from __future__ import annotations

import secrets

from tokenkit import (
    ACCESS,
    SERVICE_B,
    RawKey,
    assert_no_leak,
    audit_mark,
    claims_of,
    header_of,
    high_s,
    ok,
    raw_post,
    refused,
    respelled,
    session_form,
    sign_jws,
    thumbprint,
)

from helpers import AGENT, SVC_B, Client, RunningSts, create_task


def test_TX_03_session_token_shape(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts, purpose="summarise the wiki", max_duration=600)
    agent = Client(sts)
    svid = sts.svid(ttl=120)
    response = agent.session(task["id"], svid=svid)
    body = ok(response)
    assert body["issued_token_type"] == ACCESS
    assert body["token_type"] == "DPoP"
    assert body["scope"] == "wiki:read wiki:write"
    assert isinstance(body["expires_in"], int) and 0 < body["expires_in"] <= 120
    assert response.headers["cache-control"] == "no-store"
    token = body["access_token"]
    assert header_of(token)["typ"] == "at+jwt"
    assert header_of(token)["alg"] in ("ES256", "EdDSA")
    claims = claims_of(token)
    assert claims["iss"] == sts.url
    assert claims["aud"] == sts.url
    assert claims["sub"] == AGENT and claims["client_id"] == AGENT and claims["agt"] == AGENT
    assert claims["cnf"] == {"jkt": thumbprint(agent.key.public_jwk)}
    assert claims["txn"] == task["id"]
    assert claims["purp"] == "summarise the wiki"
    assert claims["scope"] == "wiki:read wiki:write"
    assert "act" not in claims
    assert claims["iat"] == claims["nbf"] and isinstance(claims["jti"], str)
    assert claims["exp"] <= claims_of(svid)["exp"]
    assert claims["exp"] <= task["expires_at"]
    assert body["expires_in"] == claims["exp"] - claims["iat"]
    issued = sts.last_audit("token.issued")
    assert issued.jti == claims["jti"] and issued.task == task["id"] and issued.detail["token_kind"] == "session"
    assert_no_leak(sts, [token, svid])


def test_T_03_session_exp_capped_by_task_hard_cap(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts, max_duration=30)
    claims = claims_of(ok(Client(sts).session(task["id"], svid=sts.svid(ttl=600)))["access_token"])
    assert claims["exp"] <= task["expires_at"]
    assert claims["exp"] - claims["iat"] <= 30


def test_T_03_session_exp_capped_by_svid_exp(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts)
    svid = sts.svid(ttl=45)
    claims = claims_of(ok(Client(sts).session(task["id"], svid=svid))["access_token"])
    assert claims["exp"] <= claims_of(svid)["exp"]


def test_TX_05_on_behalf_of_session_nests_agent_as_actor(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts, on_behalf_of="user:alice")
    agent = Client(sts)
    claims = claims_of(ok(agent.session(task["id"]))["access_token"])
    assert claims["sub"] == "user:alice"
    assert claims["act"] == {"sub": AGENT}
    assert claims["client_id"] == AGENT and claims["agt"] == AGENT
    assert claims["cnf"]["jkt"] == agent.key.jkt


def test_JWT_08_wrong_agent_for_task_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts)
    client = Client(sts)
    svid = sts.svid(SVC_B)
    since = audit_mark(sts)
    response = client.session(task["id"], svid=svid)
    record = refused(
        sts, response, since=since, status=400, error="invalid_grant", reason=f"{SVC_B} != {AGENT}", secrets=[svid]
    )
    # the refusal is SVC_B's, not the task's: a stranger naming a task must not count against it
    assert record.principal == SVC_B and record.task is None
    assert record.detail["requested_task"] == task["id"]
    ok(client.session(task["id"], svid=sts.svid(AGENT)))


def test_JWT_08_unknown_task_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts)
    client = Client(sts)
    svid = sts.svid()
    since = audit_mark(sts)
    response = client.session("tsk_" + secrets.token_urlsafe(16), svid=svid)
    refused(sts, response, since=since, status=400, error="invalid_grant", description="unknown task", secrets=[svid])
    ok(client.session(task["id"], svid=svid))


def test_SVID_01_svid_signed_by_unknown_key_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts)
    client = Client(sts)
    now = int(sts.clock.now())
    claims = {"sub": AGENT, "aud": [sts.url], "iat": now, "exp": now + 120, "jti": secrets.token_urlsafe(16)}
    rogue = RawKey("P-256")
    unknown_kid = sign_jws({"alg": "ES256", "kid": rogue.jkt, "typ": "JWT"}, claims, rogue, "ES256")
    trusted_kid = sign_jws({"alg": "ES256", "kid": sts.dev().kid, "typ": "JWT"}, claims, rogue, "ES256")
    for forged, reason in ((unknown_kid, "no trusted key"), (trusted_kid, "signature")):
        since = audit_mark(sts)
        response = client.session(task["id"], svid=forged)
        refused(sts, response, since=since, status=400, error="invalid_grant", reason=reason, secrets=[forged])
    ok(client.session(task["id"]))


def test_C_01_expired_svid_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts)
    client = Client(sts)
    expired = sts.dev().issue(AGENT, audience=sts.url, ttl=60, now=int(sts.clock.now()) - 120)
    since = audit_mark(sts)
    response = client.session(task["id"], svid=expired)
    refused(sts, response, since=since, status=400, error="invalid_grant", reason="expired", secrets=[expired])
    ok(client.session(task["id"]))


def test_JWT_09_svid_for_another_audience_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts)
    client = Client(sts)
    foreign = sts.svid(audience=SERVICE_B)
    since = audit_mark(sts)
    response = client.session(task["id"], svid=foreign)
    refused(sts, response, since=since, status=400, error="invalid_grant", reason="aud", secrets=[foreign])
    ok(client.session(task["id"]))


def test_SVID_05_svid_jti_redeemed_at_most_once(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts)
    client = Client(sts)
    svid = sts.svid()
    ok(client.session(task["id"], svid=svid))
    since = audit_mark(sts)
    response = client.session(task["id"], svid=svid)
    refused(sts, response, since=since, status=400, error="invalid_grant", reason="already redeemed", secrets=[svid])
    other = Client(sts)
    since = audit_mark(sts)
    refused(sts, other.session(task["id"], svid=svid), since=since, status=400, error="invalid_grant", secrets=[svid])
    ok(client.session(task["id"], svid=sts.svid()))


def test_SVID_05_nonce_challenge_does_not_burn_svid_jti(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts)
    client = Client(sts)
    svid = sts.svid()
    form = session_form(task["id"], svid)
    challenge = raw_post(client, form, headers={"DPoP": client.proof()})
    assert challenge.status_code == 400 and challenge.json()["error"] == "use_dpop_nonce"
    assert challenge.headers["dpop-nonce"]
    ok(raw_post(client, form, headers={"DPoP": client.proof()}))


def test_SVID_05_refusal_does_not_burn_svid_jti(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts)
    client = Client(sts)
    svid = sts.svid()
    since = audit_mark(sts)
    response = client.session(task["id"], svid=svid, scope="wiki:read wiki:admin")
    refused(sts, response, since=since, status=400, error="invalid_scope", description="wiki:admin", secrets=[svid])
    since = audit_mark(sts)
    response = client.session(task["id"], svid=svid, resource=SERVICE_B)
    refused(sts, response, since=since, status=400, error="invalid_target", secrets=[svid])
    body = ok(client.session(task["id"], svid=svid, scope="wiki:read"))
    assert body["scope"] == "wiki:read"


def test_TX_02_client_id_naming_the_workload_accepted(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts)
    claims = claims_of(ok(Client(sts).session(task["id"], client_id=AGENT))["access_token"])
    assert claims["client_id"] == AGENT


def test_TX_02_client_id_naming_someone_else_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts)
    client = Client(sts)
    svid = sts.svid()
    since = audit_mark(sts)
    response = client.session(task["id"], svid=svid, client_id=SVC_B)
    record = refused(sts, response, since=since, status=401, error="invalid_client", secrets=[svid])
    assert record.principal == AGENT
    ok(client.session(task["id"], svid=svid, client_id=AGENT))


def test_AUX_02_resource_on_first_exchange_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts)
    client = Client(sts)
    svid = sts.svid()
    for param in ("resource", "audience"):
        since = audit_mark(sts)
        response = client.session(task["id"], svid=svid, **{param: SERVICE_B})
        refused(sts, response, since=since, status=400, error="invalid_target", secrets=[svid])
    ok(client.session(task["id"], svid=svid))


def test_T_01_session_scope_beyond_task_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts, scopes=["wiki:read"])
    client = Client(sts)
    svid = sts.svid()
    since = audit_mark(sts)
    response = client.session(task["id"], svid=svid, scope="wiki:read wiki:write")
    refused(sts, response, since=since, status=400, error="invalid_scope", description="wiki:write", secrets=[svid])
    assert ok(client.session(task["id"], svid=svid))["scope"] == "wiki:read"


def test_K_03_SVID_05_malleated_copy_of_redeemed_svid_refused(shared_sts: RunningSts) -> None:
    """A high-S or re-spelled copy of a redeemed SVID carries the same ``jti``: still redeemed once."""
    sts = shared_sts
    task = create_task(sts)
    client = Client(sts)
    svid = sts.svid()
    ok(client.session(task["id"], svid=svid))
    for variant, reason in ((high_s(svid), "already redeemed"), (respelled(svid), None)):
        assert variant != svid
        since = audit_mark(sts)
        response = client.session(task["id"], svid=variant)
        refused(sts, response, since=since, status=400, error="invalid_grant", reason=reason, secrets=[variant, svid])
    ok(client.session(task["id"]))
