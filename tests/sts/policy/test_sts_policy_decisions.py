"""Cedar at the STS over real HTTP: every issuance audited with its decision, and every action gated.

``exchange`` (session, hop, delegation), ``create_task`` and the admin API
(``admin``, operation per endpoint) are each refused by a policy with 403
``access_denied`` and an audit record carrying the policy version and the determining
ids; every refusal is followed by a positive control on the same server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from stspolicykit import act, add_policy, denied, engine_version, issued, policy_of, records_after, remove_policy, seq

from helpers import ADMIN, AGENT, JWT, SVC_B, SVC_C, TOKEN_EXCHANGE, Client, RunningSts, admin_token, create_task, running_sts

AUD = "http://127.0.0.1:9001"
OTHER = "http://127.0.0.1:9002"


# -- every issuance carries its decision -------------------------------------------------------
def test_every_issuance_audit_record_carries_the_policy_decision(sts: RunningSts) -> None:
    mark = seq(sts)
    task = create_task(sts, audiences=[AUD])
    agent = Client(sts)
    session = issued(agent.session(task["id"]))
    issued(agent.hop(session, AUD))
    version = engine_version(sts)
    records = records_after(sts, mark)
    by_kind: dict[str, list[dict[str, object]]] = {}
    for record in records:
        if record.kind in ("token.issued", "task.created"):
            kind = f"{record.kind}:{record.detail.get('token_kind', '')}"
            by_kind.setdefault(kind, []).append(policy_of(record))
    assert set(by_kind) == {"token.issued:admin", "task.created:", "token.issued:session", "token.issued:hop"}
    expected = {
        "token.issued:admin": ["admins-administer"],
        "task.created:": ["admins-create-tasks"],
        "token.issued:session": ["exchange-key-bound"],
        "token.issued:hop": ["exchange-key-bound"],
    }
    for kind, policies in by_kind.items():
        for policy in policies:
            assert policy["version"] == version, kind
            assert policy["decision"] == "allow", kind
            assert policy["determining"] == expected[kind], kind
            assert policy["mode"] == "enforce"
            assert policy["shadow"]["decision"] == "allow"  # type: ignore[index]  # the starter set has a shadow policy


def test_shadow_policy_that_would_deny_is_in_the_allowed_issuance_record(sts: RunningSts) -> None:
    task = create_task(sts, audiences=[AUD, OTHER])
    agent = Client(sts)
    session = issued(agent.session(task["id"]))
    add_policy(
        sts,
        "70-shadow.cedar",
        f'@id("try-blocking-9001")\n@shadow\nforbid (principal, action == Tether::Action::"exchange", resource)\n'
        f'when {{ resource.uri == "{AUD}" }};\n',
    )
    mark = seq(sts)
    issued(agent.hop(session, AUD))  # enforced: allowed
    [record] = records_after(sts, mark, "token.issued")
    policy = policy_of(record)
    assert policy["decision"] == "allow" and policy["determining"] == ["exchange-key-bound"]
    assert policy["shadow"]["decision"] == "deny"
    assert "try-blocking-9001" in policy["shadow"]["determining"]
    assert policy["version"] == engine_version(sts)
    # positive control: another audience has a shadow allow
    mark = seq(sts)
    issued(agent.hop(session, OTHER))
    [other] = records_after(sts, mark, "token.issued")
    assert policy_of(other)["shadow"]["decision"] == "allow"


# -- create_task and the admin API -------------------------------------------------------------
def test_create_task_denied_by_policy(sts: RunningSts) -> None:
    add_policy(
        sts,
        "50-purpose.cedar",
        '@id("no-exfiltration-tasks")\nforbid (principal, action == Tether::Action::"create_task", resource)\n'
        'when { resource.purpose like "*exfiltrate*" };\n',
    )
    client, token = admin_token(sts)
    mark = seq(sts)
    body = {"agent": AGENT, "audiences": [AUD], "scopes": ["wiki:read"], "purpose": "exfiltrate the wiki"}
    response = client.api("POST", "/tasks", token, json=body)
    denied(response)
    assert 'error="access_denied"' in response.headers["www-authenticate"]
    [record] = records_after(sts, mark, "task.refused")
    assert record.error == "access_denied" and record.outcome == "refused"
    assert policy_of(record)["determining"] == ["no-exfiltration-tasks"]
    assert policy_of(record)["version"] == engine_version(sts)
    assert records_after(sts, mark, "task.created") == []
    # positive control: the same admin, another purpose
    ok = client.api("POST", "/tasks", token, json={**body, "purpose": "summarise the wiki"})
    assert ok.status_code == 201, ok.text
    [created] = records_after(sts, mark, "task.created")
    assert policy_of(created)["decision"] == "allow"


def test_admin_api_denied_by_policy_on_the_operation(sts: RunningSts) -> None:
    task = create_task(sts, audiences=[AUD])
    client, token = admin_token(sts)
    assert client.api("GET", "/tasks", token).status_code == 200
    add_policy(
        sts,
        "50-no-reads.cedar",
        '@id("no-task-reads")\nforbid (principal, action == Tether::Action::"admin", resource)\n'
        'when { context.operation == "tasks.read" };\n',
    )
    mark = seq(sts)
    response = client.api("GET", "/tasks", token)
    denied(response)
    assert response.headers["www-authenticate"].startswith("DPoP ")
    assert 'error="access_denied"' in response.headers["www-authenticate"]
    [record] = records_after(sts, mark, "task.refused")
    assert record.error == "access_denied"
    assert policy_of(record)["determining"] == ["no-task-reads"]
    denied(client.api("GET", f"/tasks/{task['id']}", token))  # one task: the same operation
    # other operations are not affected
    body = {"agent": AGENT, "audiences": [AUD], "scopes": ["wiki:read"]}
    assert client.api("POST", "/tasks", token, json=body).status_code == 201
    # the agent reading its own task with its session token is not an admin operation
    agent = Client(sts)
    session = issued(agent.session(task["id"]))
    assert agent.api("GET", f"/tasks/{task['id']}", session).status_code == 200
    # positive control: removing the policy restores the admin read
    remove_policy(sts, "50-no-reads.cedar")
    assert client.api("GET", "/tasks", token).status_code == 200


def test_admin_token_issuance_denied_by_policy(sts: RunningSts) -> None:
    add_policy(
        sts,
        "50-no-admin-tokens.cedar",
        '@id("no-admin-tokens")\nforbid (principal, action == Tether::Action::"admin", resource)\n'
        'when { context.operation == "token" };\n',
    )
    client = Client(sts)
    mark = seq(sts)
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": sts.svid(ADMIN), "subject_token_type": JWT}
    denied(client.post_token(form))
    [record] = records_after(sts, mark, "token.refused")
    assert policy_of(record)["determining"] == ["no-admin-tokens"]
    remove_policy(sts, "50-no-admin-tokens.cedar")
    form["subject_token"] = sts.svid(ADMIN)
    issued(client.post_token(form))


# -- risk --------------------------------------------------------------------------------------
def test_high_risk_refused_by_the_starter_rule_then_allowed_again(sts: RunningSts) -> None:
    task = create_task(sts, audiences=[AUD])
    agent = Client(sts)
    session = issued(agent.session(task["id"]))
    ctx = sts.sts.ctx
    original = ctx.risk
    seen: list[str] = []

    def high(principal: str) -> int:
        seen.append(principal)
        return 90

    try:
        ctx.risk = high
        mark = seq(sts)
        denied(agent.hop(session, AUD))
        [record] = records_after(sts, mark, "token.refused")
        assert policy_of(record)["determining"] == ["deny-high-risk"]
        assert seen == [AGENT]  # the score is asked for the requesting principal
        ctx.risk = lambda principal: 0
        issued(agent.hop(session, AUD))
    finally:
        ctx.risk = original
    issued(agent.hop(session, AUD))


# -- the payments example and TX-05 ------------------------------------------------------------
X = "http://svc-x.test"  # owned by service B
Y = "http://svc-y.test"  # owned by service C
Z = "http://svc-z.test"  # owned by service D
PAY = "http://pay.test"  # tagged payments
PLAIN = "http://plain.test"  # no tags
SVC_D = "spiffe://tether.local/svc/d"

CHAIN_TOML = f"""
[[resources]]
uri = "{X}"
principals = ["{SVC_B}"]

[[resources]]
uri = "{Y}"
principals = ["{SVC_C}"]

[[resources]]
uri = "{Z}"
principals = ["{SVC_D}"]

[[resources]]
uri = "{PAY}"
principals = ["spiffe://tether.local/svc/pay"]
tags = ["payments"]

[[resources]]
uri = "{PLAIN}"
principals = ["spiffe://tether.local/svc/plain"]
"""


@pytest.fixture
def chain_sts(tmp_path: Path) -> Iterator[RunningSts]:
    with running_sts(tmp_path, extra_toml=CHAIN_TOML) as server:
        yield server


def _chain(sts: RunningSts) -> tuple[str, str, str]:
    """Tokens for X (agent hop, depth 0), Y (B acting, depth 1) and Z (C acting, depth 2)."""
    task = create_task(sts, audiences=[X, Y, Z, PAY, PLAIN], scopes=["pay:read"], max_depth=4)
    agent = Client(sts)
    session = issued(agent.session(task["id"]))
    to_x = issued(agent.hop(session, X))
    to_y = issued(act(sts, to_x, SVC_B, Y))
    to_z = issued(act(sts, to_y, SVC_C, Z))
    return to_x, to_y, to_z


def test_payments_example_refuses_depth_3_and_allows_depth_2(chain_sts: RunningSts) -> None:
    sts = chain_sts
    _, to_y, to_z = _chain(sts)
    mark = seq(sts)
    issued(act(sts, to_y, SVC_C, PAY))  # act chain C, B: depth 2
    [ok] = records_after(sts, mark, "token.issued")
    assert ok.detail["depth"] == 2 and policy_of(ok)["decision"] == "allow"
    mark = seq(sts)
    denied(act(sts, to_z, SVC_D, PAY))  # act chain D, C, B: depth 3
    [record] = records_after(sts, mark, "token.refused")
    assert policy_of(record)["determining"] == ["payments-max-depth-2"]
    assert record.principal == SVC_D
    # positive control: depth 3 for an untagged service is allowed
    issued(act(sts, to_z, SVC_D, PLAIN))


def test_TX_05_forbid_on_the_current_actor_ignores_a_nested_actor(chain_sts: RunningSts) -> None:
    sts = chain_sts
    to_x, to_y, _ = _chain(sts)  # B already acted once (before the policy)
    add_policy(
        sts,
        "50-no-b.cedar",
        f'@id("no-b-as-actor")\nforbid (principal, action == Tether::Action::"exchange", resource)\n'
        f'when {{ context.actor == "{SVC_B}" }};\n',
    )
    mark = seq(sts)
    issued(act(sts, to_y, SVC_C, Z))  # chain C, B: B is only nested
    [ok] = records_after(sts, mark, "token.issued")
    assert ok.detail["act"] == [SVC_C, SVC_B] and policy_of(ok)["decision"] == "allow"
    # positive control: B as the current actor is refused
    denied(act(sts, to_x, SVC_B, Y))
