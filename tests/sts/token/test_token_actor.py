"""Step 5 of the flow: service B exchanges the agent's hop token, acting with its own SVID and key.

The resources registry (``conftest.RESOURCES_TOML``) says SVC_B owns SERVICE_B and
SERVICE_D, SVC_C owns SERVICE_C. RFC 8693 §4.1 ``act`` nests newest-first; DESIGN
"Rules that never bend": actor must be the audience (no splicing), no cycles, depth
within ``max_depth``, delegation sticky, token bound to the actor's key.
"""

from __future__ import annotations

from typing import Any

from tokenkit import (
    ACCESS,
    JWT,
    SERVICE_B,
    SERVICE_C,
    SERVICE_D,
    TOKEN_EXCHANGE,
    audit_mark,
    claims_of,
    ok,
    refused,
)

from helpers import AGENT, SVC_B, SVC_C, Client, RunningSts, create_task

AUDIENCES = [SERVICE_B, SERVICE_C, SERVICE_D]


def _act_form(subject: str, actor_svid: str, resource: str | None, **extra: str) -> dict[str, str]:
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject,
        "subject_token_type": ACCESS,
        "actor_token": actor_svid,
        "actor_token_type": JWT,
        **extra,
    }
    if resource is not None:
        form["resource"] = resource
    return form


def _hop_to_b(sts: RunningSts, **task_fields: Any) -> tuple[dict[str, Any], str, str]:
    task = create_task(sts, audiences=AUDIENCES, **task_fields)
    agent = Client(sts)
    session = ok(agent.session(task["id"]))["access_token"]
    hop = ok(agent.hop(session, SERVICE_B, scope="wiki:read"))["access_token"]
    return task, session, hop


def test_TX_05_actor_exchange_nests_actor_and_binds_its_key(actor_sts: RunningSts) -> None:
    sts = actor_sts
    task, _, hop = _hop_to_b(sts)
    service_b = Client(sts)
    body = ok(service_b.post_token(_act_form(hop, sts.svid(SVC_B), SERVICE_C, client_id=SVC_B)))
    claims = claims_of(body["access_token"])
    parent = claims_of(hop)
    assert claims["aud"] == SERVICE_C
    assert claims["sub"] == AGENT and claims["agt"] == AGENT
    assert claims["act"] == {"sub": SVC_B}
    assert claims["client_id"] == SVC_B
    assert claims["cnf"] == {"jkt": service_b.key.jkt}
    assert claims["txn"] == task["id"]
    assert claims["scope"] == "wiki:read"
    assert claims["exp"] <= parent["exp"]
    issued = sts.last_audit("token.issued")
    assert issued.principal == SVC_B and issued.detail["act"] == [SVC_B] and issued.detail["depth"] == 1
    assert issued.detail["parent"] == parent["jti"]


def test_TX_05_actor_exchange_on_behalf_of_nests_full_chain(actor_sts: RunningSts) -> None:
    sts = actor_sts
    _, _, hop = _hop_to_b(sts, on_behalf_of="user:carol")
    service_b = Client(sts)
    token_c = ok(service_b.post_token(_act_form(hop, sts.svid(SVC_B), SERVICE_C)))["access_token"]
    claims = claims_of(token_c)
    assert claims["sub"] == "user:carol"
    assert claims["act"] == {"sub": SVC_B, "act": {"sub": AGENT}}
    assert claims["client_id"] == SVC_B and claims["cnf"]["jkt"] == service_b.key.jkt
    # C goes one hop further: the newest actor is outermost (RFC 8693 §4.1).
    service_c = Client(sts)
    deeper = claims_of(ok(service_c.post_token(_act_form(token_c, sts.svid(SVC_C), SERVICE_D)))["access_token"])
    assert deeper["act"] == {"sub": SVC_C, "act": {"sub": SVC_B, "act": {"sub": AGENT}}}
    assert deeper["exp"] <= claims["exp"] and deeper["cnf"]["jkt"] == service_c.key.jkt


def test_T_01_actor_exchange_cannot_widen_scope(actor_sts: RunningSts) -> None:
    sts = actor_sts
    _, _, hop = _hop_to_b(sts)
    service_b = Client(sts)
    svid = sts.svid(SVC_B)
    since = audit_mark(sts)
    response = service_b.post_token(_act_form(hop, svid, SERVICE_C, scope="wiki:read wiki:write"))
    refused(sts, response, since=since, status=400, error="invalid_scope", description="wiki:write", secrets=[hop, svid])
    ok(service_b.post_token(_act_form(hop, svid, SERVICE_C, scope="wiki:read")))


def test_T_02_actor_not_the_audience_refused_splicing(actor_sts: RunningSts) -> None:
    sts = actor_sts
    _, session, hop = _hop_to_b(sts)
    service_c = Client(sts)
    svid_c = sts.svid(SVC_C)
    since = audit_mark(sts)
    response = service_c.post_token(_act_form(hop, svid_c, SERVICE_D))
    record = refused(
        sts,
        response,
        since=since,
        status=400,
        error="invalid_grant",
        description="actor is not the audience",
        secrets=[hop, svid_c],
    )
    assert record.principal == SVC_C
    # B holding the agent's session token (audience: the issuer) cannot act with it either.
    service_b = Client(sts)
    svid_b = sts.svid(SVC_B)
    since = audit_mark(sts)
    response = service_b.post_token(_act_form(session, svid_b, SERVICE_D))
    refused(
        sts,
        response,
        since=since,
        status=400,
        error="invalid_grant",
        description="actor is not the audience",
        secrets=[session, svid_b],
    )
    ok(service_b.post_token(_act_form(hop, sts.svid(SVC_B), SERVICE_D)))


def test_TX_06_actor_already_in_chain_refused_cycle(actor_sts: RunningSts) -> None:
    sts = actor_sts
    _, _, hop = _hop_to_b(sts)
    service_b = Client(sts)
    token_d = ok(service_b.post_token(_act_form(hop, sts.svid(SVC_B), SERVICE_D)))["access_token"]
    assert claims_of(token_d)["act"] == {"sub": SVC_B}
    svid = sts.svid(SVC_B)
    since = audit_mark(sts)
    response = service_b.post_token(_act_form(token_d, svid, SERVICE_C))
    refused(
        sts,
        response,
        since=since,
        status=400,
        error="invalid_grant",
        description="already appears in the delegation chain",
        secrets=[token_d, svid],
    )
    ok(service_b.post_token(_act_form(hop, svid, SERVICE_C)))


def test_TX_07_delegation_depth_beyond_max_depth_refused(actor_sts: RunningSts) -> None:
    sts = actor_sts
    _, _, hop = _hop_to_b(sts, max_depth=1)
    service_b, service_c = Client(sts), Client(sts)
    token_c = ok(service_b.post_token(_act_form(hop, sts.svid(SVC_B), SERVICE_C)))["access_token"]
    svid_c = sts.svid(SVC_C)
    since = audit_mark(sts)
    response = service_c.post_token(_act_form(token_c, svid_c, SERVICE_D))
    refused(
        sts,
        response,
        since=since,
        status=400,
        error="invalid_grant",
        description="exceeds the task's max_depth 1",
        secrets=[token_c, svid_c],
    )
    # Same services, a task that allows two actors: the same chain is issued.
    _, _, hop2 = _hop_to_b(sts, max_depth=2)
    token_c2 = ok(service_b.post_token(_act_form(hop2, sts.svid(SVC_B), SERVICE_C)))["access_token"]
    deeper = claims_of(ok(service_c.post_token(_act_form(token_c2, svid_c, SERVICE_D)))["access_token"])
    assert deeper["act"] == {"sub": SVC_C, "act": {"sub": SVC_B}}


def test_TX_05_delegation_is_sticky(actor_sts: RunningSts) -> None:
    sts = actor_sts
    _, _, hop = _hop_to_b(sts)
    service_b = Client(sts)
    token_c = ok(service_b.post_token(_act_form(hop, sts.svid(SVC_B), SERVICE_C)))["access_token"]
    # The holder (B, its key proven) cannot shed ``act`` by exchanging without an actor.
    for resource in (SERVICE_C, SERVICE_D, SERVICE_B):
        since = audit_mark(sts)
        response = service_b.post_token(
            {"grant_type": TOKEN_EXCHANGE, "subject_token": token_c, "subject_token_type": ACCESS, "resource": resource}
        )
        refused(sts, response, since=since, status=400, error="invalid_grant", secrets=[token_c])
    # Any further derivation carries the whole chain.
    service_c = Client(sts)
    deeper = claims_of(ok(service_c.post_token(_act_form(token_c, sts.svid(SVC_C), SERVICE_D)))["access_token"])
    assert deeper["act"] == {"sub": SVC_C, "act": {"sub": SVC_B}}


def test_TX_01_actor_token_with_jwt_subject_refused(actor_sts: RunningSts) -> None:
    sts = actor_sts
    task = create_task(sts, audiences=AUDIENCES)
    agent = Client(sts)
    svid, actor = sts.svid(), sts.svid(SVC_B)
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": svid,
        "subject_token_type": JWT,
        "actor_token": actor,
        "actor_token_type": JWT,
        "task": task["id"],
    }
    since = audit_mark(sts)
    refused(sts, agent.post_token(form), since=since, status=400, error="invalid_request", secrets=[svid, actor])
    ok(agent.session(task["id"], svid=svid))


def test_TX_01_actor_token_shape_refused(actor_sts: RunningSts) -> None:
    sts = actor_sts
    _, _, hop = _hop_to_b(sts)
    service_b = Client(sts)
    svid = sts.svid(SVC_B)
    bad_forms = [
        {**_act_form(hop, svid, SERVICE_C), "actor_token_type": ACCESS},
        {k: v for k, v in _act_form(hop, svid, SERVICE_C).items() if k != "actor_token_type"},
        {k: v for k, v in _act_form(hop, svid, SERVICE_C).items() if k != "actor_token"} | {"actor_token_type": JWT},
    ]
    for form in bad_forms:
        since = audit_mark(sts)
        refused(sts, service_b.post_token(form), since=since, status=400, error="invalid_request", secrets=[hop, svid])
    ok(service_b.post_token(_act_form(hop, svid, SERVICE_C)))


def test_TX_02_actor_client_id_must_name_the_actor(actor_sts: RunningSts) -> None:
    sts = actor_sts
    _, _, hop = _hop_to_b(sts)
    service_b = Client(sts)
    svid = sts.svid(SVC_B)
    since = audit_mark(sts)
    response = service_b.post_token(_act_form(hop, svid, SERVICE_C, client_id=AGENT))
    refused(sts, response, since=since, status=401, error="invalid_client", secrets=[hop, svid])
    ok(service_b.post_token(_act_form(hop, svid, SERVICE_C, client_id=SVC_B)))


def test_SVID_05_actor_svid_redeemed_once(actor_sts: RunningSts) -> None:
    sts = actor_sts
    _, _, hop = _hop_to_b(sts)
    service_b = Client(sts)
    svid = sts.svid(SVC_B)
    ok(service_b.post_token(_act_form(hop, svid, SERVICE_C)))
    since = audit_mark(sts)
    response = service_b.post_token(_act_form(hop, svid, SERVICE_D))
    refused(sts, response, since=since, status=400, error="invalid_grant", reason="already redeemed", secrets=[hop, svid])
    ok(service_b.post_token(_act_form(hop, sts.svid(SVC_B), SERVICE_D)))


def test_T_02_actor_exchange_target_outside_task_refused(actor_sts: RunningSts) -> None:
    sts = actor_sts
    task = create_task(sts, audiences=[SERVICE_B, SERVICE_C])
    agent = Client(sts)
    session = ok(agent.session(task["id"]))["access_token"]
    hop = ok(agent.hop(session, SERVICE_B))["access_token"]
    service_b = Client(sts)
    svid = sts.svid(SVC_B)
    since = audit_mark(sts)
    response = service_b.post_token(_act_form(hop, svid, SERVICE_D))
    refused(sts, response, since=since, status=400, error="invalid_target", secrets=[hop, svid])
    ok(service_b.post_token(_act_form(hop, svid, SERVICE_C)))
