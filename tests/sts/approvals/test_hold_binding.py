"""An approval covers one request (SECURITY APR-01), and only the master key can make it yield a token.

An approved ``approval_id`` presented with anything else — other arguments, audience, scope, task,
agent, key — is ``invalid_grant`` "the approval does not cover this request", and the same request
still redeems afterwards. A database writer without the master key (status flipped to approved,
uses raised, the view changed under a pending approval) never gets a token.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from hold_kit import (
    PAYMENTS,
    PLAIN,
    approval_row,
    assert_held,
    audit_of,
    decide,
    details,
    hold_sts,
    hop,
    new_task,
    refused,
    session_token,
)

from helpers import QUIET_MONITOR, Client, RunningSts
from services import store_sql

OTHER_AGENT = "spiffe://tether.local/agent/other"
TOML = QUIET_MONITOR + "\n[approvals]\nttl = 300\ninterval = 1\n"
NOT_COVERED = "the approval does not cover this request"


@pytest.fixture(scope="module")
def sts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSts]:
    with hold_sts(tmp_path_factory.mktemp("hold-binding"), extra_toml=TOML) as server:
        yield server


def wait(sts: RunningSts) -> None:
    sts.clock.advance(sts.config.approvals.interval)


@pytest.fixture
def approved(sts: RunningSts) -> tuple[Client, str, str, str]:
    """An approved two-use approval for ``transfer(to=acct-1, amount=10)`` to the payments audience:
    (client, session, approval id, details)."""
    client = Client(sts)
    session = session_token(sts, client, new_task(sts))
    call = details("transfer", to="acct-1", amount=10)
    approval_id = assert_held(hop(client, session, PAYMENTS, authorization_details=call))
    decide(sts, approval_id, uses=2)
    wait(sts)
    return client, session, approval_id, call


def not_covered(sts: RunningSts, response: httpx.Response) -> None:
    body = refused(response, status=400, error="invalid_grant")
    assert body["error_description"] == NOT_COVERED


def still_redeems(sts: RunningSts, approved: tuple[Client, str, str, str]) -> None:
    client, session, approval_id, call = approved
    wait(sts)
    response = hop(client, session, PAYMENTS, authorization_details=call, approval_id=approval_id)
    assert response.status_code == 200, response.text


def test_apr01_other_arguments_not_covered(sts: RunningSts, approved: tuple[Client, str, str, str]) -> None:
    client, session, approval_id, _ = approved
    other = details("transfer", to="acct-1", amount=10_000)
    not_covered(sts, hop(client, session, PAYMENTS, authorization_details=other, approval_id=approval_id))
    still_redeems(sts, approved)


def test_apr01_other_tool_not_covered(sts: RunningSts, approved: tuple[Client, str, str, str]) -> None:
    client, session, approval_id, _ = approved
    other = json.dumps([{"type": "tool_call", "tool": "refund", "arguments": {"to": "acct-1", "amount": 10}}])
    not_covered(sts, hop(client, session, PAYMENTS, authorization_details=other, approval_id=approval_id))


def test_apr01_no_tool_call_not_covered(sts: RunningSts, approved: tuple[Client, str, str, str]) -> None:
    client, session, approval_id, _ = approved
    not_covered(sts, hop(client, session, PAYMENTS, approval_id=approval_id))


def test_apr01_other_audience_not_covered(sts: RunningSts, approved: tuple[Client, str, str, str]) -> None:
    client, session, approval_id, call = approved
    not_covered(sts, hop(client, session, PLAIN, authorization_details=call, approval_id=approval_id))
    still_redeems(sts, approved)


def test_apr01_other_scope_not_covered(sts: RunningSts, approved: tuple[Client, str, str, str]) -> None:
    client, session, approval_id, call = approved
    not_covered(sts, hop(client, session, PAYMENTS, authorization_details=call, approval_id=approval_id, scope="pay"))
    still_redeems(sts, approved)


def test_apr01_other_task_not_covered(sts: RunningSts, approved: tuple[Client, str, str, str]) -> None:
    client, _, approval_id, call = approved
    other_session = session_token(sts, client, new_task(sts))  # same agent, same key, another task
    not_covered(sts, hop(client, other_session, PAYMENTS, authorization_details=call, approval_id=approval_id))
    still_redeems(sts, approved)


def test_apr01_other_agents_token_not_covered(sts: RunningSts, approved: tuple[Client, str, str, str]) -> None:
    _, _, approval_id, call = approved
    thief = Client(sts)
    task = new_task(sts, agent=OTHER_AGENT)
    response = thief.session(task, svid=sts.svid(OTHER_AGENT))
    assert response.status_code == 200, response.text
    other_session = response.json()["access_token"]
    not_covered(sts, hop(thief, other_session, PAYMENTS, authorization_details=call, approval_id=approval_id))
    still_redeems(sts, approved)


def test_apr01_same_session_other_key_is_refused(sts: RunningSts, approved: tuple[Client, str, str, str]) -> None:
    """A thief holding the session token and the approval id, but not the agent's key."""
    _, session, approval_id, call = approved
    thief = Client(sts)
    response = hop(thief, session, PAYMENTS, authorization_details=call, approval_id=approval_id)
    refused(response, status=400, error="invalid_dpop_proof")
    still_redeems(sts, approved)


def test_apr01_unknown_approval_id_not_covered(sts: RunningSts, approved: tuple[Client, str, str, str]) -> None:
    client, session, _, call = approved
    unknown = "apr_" + "A" * 22
    not_covered(sts, hop(client, session, PAYMENTS, authorization_details=call, approval_id=unknown))


def test_apr03_tampered_status_never_yields_a_token(sts: RunningSts) -> None:
    """A database writer flips a pending approval to approved (no decision MAC)."""
    client = Client(sts)
    session = session_token(sts, client, new_task(sts))
    approval_id = assert_held(hop(client, session, PAYMENTS))
    now = int(sts.clock.now())
    store_sql(sts.config, "UPDATE approvals SET status = 'approved', decided_by = ?, decided_at = ?, uses = 5, "
              "until = ? WHERE id = ?", ("user:mallory@example.com", now, now + 300, approval_id))  # fmt: skip
    wait(sts)
    mark = sts.audit()[-1].seq
    not_covered(sts, hop(client, session, PAYMENTS, approval_id=approval_id))
    [record] = audit_of(sts, "token.refused", since=mark)
    assert "decision MAC" in record.detail["reason"]
    assert audit_of(sts, "token.issued", since=mark) == []


def test_apr03_tampered_uses_never_yield_more_tokens(sts: RunningSts) -> None:
    client = Client(sts)
    session = session_token(sts, client, new_task(sts))
    approval_id = assert_held(hop(client, session, PAYMENTS))
    decide(sts, approval_id, uses=1)
    store_sql(sts.config, "UPDATE approvals SET uses = 50 WHERE id = ?", (approval_id,))
    wait(sts)
    not_covered(sts, hop(client, session, PAYMENTS, approval_id=approval_id))


def test_apr05_view_changed_under_a_pending_approval_never_yields_a_token(sts: RunningSts) -> None:
    """The approver saw a changed view (the writer hid the amount) and approved: still no token."""
    client = Client(sts)
    session = session_token(sts, client, new_task(sts))
    call = details("transfer", to="acct-9", amount=90_000)
    approval_id = assert_held(hop(client, session, PAYMENTS, authorization_details=call))
    view = dict(approval_row(sts, approval_id).view, arguments={"to": "acct-9", "amount": 9})
    store_sql(sts.config, "UPDATE approvals SET view = ? WHERE id = ?", (json.dumps(view), approval_id))
    decide(sts, approval_id)  # the decision itself is correctly sealed
    wait(sts)
    mark = sts.audit()[-1].seq
    not_covered(sts, hop(client, session, PAYMENTS, authorization_details=call, approval_id=approval_id))
    [record] = audit_of(sts, "token.refused", since=mark)
    assert "request MAC" in record.detail["reason"]


def test_apr01_policy_tightened_after_approval_is_not_bypassed(sts: RunningSts) -> None:
    """An approval given for "finance" does not cover a request the policies now hold for "ops" too."""
    client = Client(sts)
    session = session_token(sts, client, new_task(sts))
    approval_id = assert_held(hop(client, session, PAYMENTS))
    decide(sts, approval_id)
    extra = sts.config.policy_dir / "60-tighter.cedar"
    extra.write_text('@id("payments-need-ops")\n@approval("ops")\npermit (principal, action == Tether::Action::"exchange", '
                     'resource)\nwhen { resource.tags.contains("payments") };\n', encoding="utf-8")  # fmt: skip
    try:
        sts.sts.ctx.policy.refresh()
        wait(sts)
        not_covered(sts, hop(client, session, PAYMENTS, approval_id=approval_id))
    finally:
        extra.unlink()
        sts.sts.ctx.policy.refresh()


def test_apr03_uses_are_durable_when_the_cache_loses_its_keys(sts: RunningSts) -> None:
    """A 1-use approval's use is a mark in the database, not a Redis counter: with every Redis key
    of the deployment gone (a restart without persistence), the approval still yields no second token."""
    client = Client(sts)
    session = session_token(sts, client, new_task(sts))
    approval_id = assert_held(hop(client, session, PAYMENTS))
    decide(sts, approval_id, uses=1)
    wait(sts)
    assert hop(client, session, PAYMENTS, approval_id=approval_id).status_code == 200
    if sts.config.store == "postgres":  # the SQLite store has no cache to lose
        import redis

        cache = redis.Redis.from_url(sts.config.redis.url)
        try:
            keys = list(cache.scan_iter(match=f"{sts.config.redis.prefix}*"))
            assert keys, "the deployment keeps its caches in Redis"
            cache.delete(*keys)
        finally:
            cache.close()
    wait(sts)
    refused(hop(client, session, PAYMENTS, approval_id=approval_id), status=400, error="invalid_grant")
