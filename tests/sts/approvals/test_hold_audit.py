"""Held requests in the audit chain (SECURITY APR-03): requested, expired, redeemed — never argument values.

``approval.requested`` is written with the hold, ``approval.expired`` by the upkeep sweep
(``holds.sweep_approvals``, run here on a second store handle as another replica's upkeep
would), a redemption's ``token.issued`` names the approval, and the chain still verifies.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

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
    session_token,
    store_run,
)

from helpers import AGENT, QUIET_MONITOR, Client, RunningSts
from tether.audit.chain import first_broken
from tether.model import ApprovalStatus
from tether.sts.holds import sweep_approvals

TOML = QUIET_MONITOR + "\n[approvals]\nttl = 60\ninterval = 1\n"


@pytest.fixture(scope="module")
def sts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSts]:
    with hold_sts(tmp_path_factory.mktemp("hold-audit"), extra_toml=TOML) as server:
        yield server


def sweep(sts: RunningSts) -> list[str]:
    async def run(store: Any) -> list[str]:
        return [a.id for a in await sweep_approvals(store, now=sts.clock.now())]

    result: list[str] = store_run(sts, run)
    return result


def test_apr03_requested_and_expired_are_audited(sts: RunningSts) -> None:
    mark = sts.audit()[-1].seq
    client = Client(sts)
    task = new_task(sts)
    session = session_token(sts, client, task)
    secret_amount = "987654321"
    call = details("transfer", to="acct-7", amount=secret_amount)
    approval_id = assert_held(hop(client, session, PLAIN, authorization_details=call))
    [requested] = audit_of(sts, "approval.requested", since=mark)
    assert requested.principal == AGENT and requested.task == task and requested.outcome == "ok"
    assert requested.detail["approval"] == approval_id and requested.detail["groups"] == ["finance"]
    assert requested.detail["policies"] == ["transfer-needs-finance"]
    assert requested.detail["aud"] == PLAIN and requested.detail["tool"] == "transfer"
    assert requested.detail["tctx"] == approval_row(sts, approval_id).view["tctx"]

    assert approval_id not in sweep(sts)  # not due yet
    sts.clock.advance(sts.config.approvals.ttl)
    sweep(sts)  # (or the STS's own upkeep, which may run first: either way, once)
    assert approval_row(sts, approval_id).status is ApprovalStatus.EXPIRED
    [expired] = [r for r in audit_of(sts, "approval.expired", since=mark) if r.detail["approval"] == approval_id]
    assert expired.principal == AGENT and expired.task == task and expired.detail["tool"] == "transfer"
    assert approval_id not in sweep(sts)  # once

    records = sts.audit()
    assert first_broken([r.as_json() for r in records]) is None
    assert secret_amount not in json.dumps([r.as_json() for r in records if r.seq > mark])


def test_apr03_swept_approval_still_answers_expired_token(sts: RunningSts) -> None:
    client = Client(sts)
    session = session_token(sts, client, new_task(sts))
    approval_id = assert_held(hop(client, session, PAYMENTS))
    sts.clock.advance(sts.config.approvals.ttl)
    sweep(sts)
    response = hop(client, session, PAYMENTS, approval_id=approval_id)
    assert response.status_code == 400 and response.json()["error"] == "expired_token", response.text


def test_redemption_is_audited_once_with_the_approval(sts: RunningSts) -> None:
    client = Client(sts)
    session = session_token(sts, client, new_task(sts))
    mark = sts.audit()[-1].seq
    approval_id = assert_held(hop(client, session, PAYMENTS))
    decide(sts, approval_id)
    sts.clock.advance(1)
    response = hop(client, session, PAYMENTS, approval_id=approval_id)
    assert response.status_code == 200, response.text
    kinds = [r.kind for r in sts.audit() if r.seq > mark and r.kind.startswith(("approval.", "token."))]
    assert kinds == ["approval.requested", "approval.approved", "token.issued"]
    assert sts.last_audit("token.issued").detail["approval"] == approval_id
