"""A gateway whose routes hold calls for approval (issue 17, APR-01), on a real STS that holds them too.

One deployment: the STS and the gateway share the policy directory, so a tool call the gateway
holds is held at the STS when the agent asks for a token for it. ``decide`` writes a human's
decision as the approvers' API does (the decision fields, a correct ``decision_mac`` derived from
the STS's master key, its audit record) through the store.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace

from helpers import RunningSts
from tether.audit.chain import AuditEvent
from tether.keys.sealed import derive_key, load_master_key
from tether.model import Approval, ApprovalStatus
from tether.rules.approval_seal import decision_mac
from tether.store.open import open_store

__all__ = ["FINANCE", "Approver", "approve_when_held", "decide", "held_policies", "pending"]

FINANCE = "user:fiona@example.com"


def held_policies(gateway_url: str) -> str:
    """POST /v1/items is held on every HTTP route; ``payx``'s exchanges are held as well (so its
    tokens carry ``apr``); ``list_directory`` is held on every MCP route."""
    return f"""
@id("post-items-needs-finance")
@approval("finance")
permit (principal, action == Tether::Action::"call", resource)
when {{ context.method == "POST" && context.path == "/v1/items" }};

@id("payx-exchange-needs-finance")
@approval("finance")
permit (principal, action == Tether::Action::"exchange", resource)
when {{ resource.uri == "{gateway_url}/routes/payx" && context.key_bound }};

@id("listing-needs-finance")
@approval("finance")
permit (principal, action == Tether::Action::"call", resource)
when {{ context.tool == "list_directory" }};
"""


def decide(sts: RunningSts, approval_id: str, *, approve: bool = True, approver: str = FINANCE) -> Approval:
    now = int(sts.clock.now())

    async def write() -> Approval:
        store = await open_store(sts.config)
        try:
            stored = await store.get_approval(approval_id)
            assert stored is not None
            decided = replace(
                stored,
                status=ApprovalStatus.APPROVED if approve else ApprovalStatus.DENIED,
                decided_by=approver,
                decided_at=now,
                uses=1 if approve else 0,
                until=now + sts.config.approvals.ttl if approve else None,
            )
            key = derive_key(load_master_key(sts.config.master_key_file), "approvals")
            decided = replace(decided, decision_mac=decision_mac(key, decided))
            kind = "approval.approved" if approve else "approval.denied"
            event = AuditEvent(kind=kind, outcome="ok", principal=approver, task=stored.task, detail={"approval": approval_id})
            return await store.decide_approval(decided, now=now, audit=event)
        finally:
            await store.aclose()

    return asyncio.run(write())


def pending(sts: RunningSts, task: str) -> list[Approval]:
    """The task's pending approvals, read from the STS's store as another process would."""

    async def read() -> list[Approval]:
        store = await open_store(sts.config)
        try:
            return list(await store.list_approvals(status=ApprovalStatus.PENDING, task=task, now=sts.clock.now(), limit=10))
        finally:
            await store.aclose()

    return asyncio.run(read())


class Approver(threading.Thread):
    """A member of finance deciding the task's request as soon as it shows up (as the webhook's link lets them)."""

    def __init__(self, sts: RunningSts, task: str, *, approve: bool) -> None:
        super().__init__(daemon=True)
        self.sts, self.task, self.approve = sts, task, approve
        self.decided: list[Approval] = []

    def run(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self.decided:
            found = pending(self.sts, self.task)
            if found:
                self.decided.append(decide(self.sts, found[0].id, approve=self.approve))
                return
            time.sleep(0.05)


def approve_when_held(sts: RunningSts, task: str, *, approve: bool = True) -> Approver:
    approver = Approver(sts, task, approve=approve)
    approver.start()
    return approver
