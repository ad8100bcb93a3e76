"""Delegation does not launder risk (issue 21 finding 1).

Cedar's ``context.risk`` for an exchange is the highest score of everyone in the chain:
the requester, the task's agent, the subject and every actor. Before the fix a service
acting for a high-risk agent was judged by its own (zero) score, so the agent refused for
its own hop still got onward tokens through any service it called.

The score is raised the way the monitor raises it: a ``risk.raised`` record in the shared
audit chain, which every replica's risk board reads.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tokenkit import ACCESS, JWT, RESOURCES_TOML, SERVICE_B, SERVICE_C, TOKEN_EXCHANGE, ok

from helpers import AGENT, SVC_B, Client, RunningSts, create_task, running_sts
from tether.audit.chain import AuditEvent
from tether.store.open import open_store

OTHER = "spiffe://tether.local/agent/other"


@pytest.fixture
def sts(tmp_path: Path) -> Iterator[RunningSts]:
    with running_sts(tmp_path, extra_toml=RESOURCES_TOML + "\n[monitor]\ninterval = 1\n") as server:
        yield server


def raise_risk(sts: RunningSts, principal: str, amount: int) -> None:
    import asyncio

    async def append() -> None:
        store = await open_store(sts.config)
        try:
            detail = {"detector": "refusal_burst", "severity": "critical", "reason": "test", "agent": principal,
                      "evidence": {}, "trigger": 0, "actions": ["risk"], "risk": amount}  # fmt: skip
            await store.append_audit(AuditEvent(kind="risk.raised", outcome="alert", principal="monitor", detail=detail),
                                     now=sts.clock.now())  # fmt: skip
        finally:
            await store.aclose()

    asyncio.run(append())


def hop_to_b(sts: RunningSts, agent: str) -> tuple[Client, str, str]:
    task = create_task(sts, agent=agent, audiences=[SERVICE_B, SERVICE_C], scopes=["wiki:read"])
    client = Client(sts)
    session = ok(client.session(task["id"], svid=sts.svid(agent)))["access_token"]
    return client, session, ok(client.hop(session, SERVICE_B))["access_token"]


def act_form(subject: str, actor_svid: str) -> dict[str, str]:
    return {"grant_type": TOKEN_EXCHANGE, "subject_token": subject, "subject_token_type": ACCESS,
            "actor_token": actor_svid, "actor_token_type": JWT, "resource": SERVICE_C}  # fmt: skip


def test_a_service_acting_for_a_high_risk_agent_is_refused(sts: RunningSts) -> None:
    agent, session, for_b = hop_to_b(sts, AGENT)
    _, _, other_for_b = hop_to_b(sts, OTHER)
    raise_risk(sts, AGENT, 80)
    deadline = time.monotonic() + 15
    while (own := agent.hop(session, SERVICE_C)).status_code == 200:  # the board has the score once this is refused
        assert time.monotonic() < deadline, "the risk never reached the STS"
        time.sleep(0.2)
    assert own.status_code == 403 and own.json()["error"] == "access_denied"
    service_b = Client(sts)
    laundered = service_b.post_token(act_form(for_b, sts.svid(SVC_B)))
    assert laundered.status_code == 403 and laundered.json()["error"] == "access_denied", laundered.text
    assert "deny-high-risk" in str(sts.last_audit("token.refused").detail["policy"])
    # positive control: the same service acting for a low-risk agent is served
    ok(service_b.post_token(act_form(other_for_b, sts.svid(SVC_B))))
