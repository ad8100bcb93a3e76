"""Helpers for the held-request tests: an STS with approval policies, tool calls, polls, decisions.

Everything is real: the STS is uvicorn on loopback (``helpers.serving``) with its own store
(SQLite, or PostgreSQL + Redis under ``TETHER_TEST_STORE=postgres``), a ``ManualClock`` the
tests move instead of sleeping, real DPoP keys. Until the approvers' API exists, ``decide``
writes a decision through the store with a correct ``decision_mac`` (the key derived from the
test STS's master key), exactly as the API will: swap its body for an API call later.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import jwt

from helpers import ACCESS, AGENT, JWT, TOKEN_EXCHANGE, Client, RunningSts, create_task, make_deployment, serving
from tether.audit.chain import AuditEvent, AuditRecord
from tether.clock import ManualClock
from tether.keys.sealed import derive_key, load_master_key
from tether.model import Approval, ApprovalStatus
from tether.rules.approval_seal import decision_mac
from tether.store.open import open_store

__all__ = [
    "APPROVER",
    "PAYMENTS",
    "PLAIN",
    "POLICIES",
    "approval_key",
    "approval_row",
    "assert_held",
    "audit_of",
    "claims_of",
    "decide",
    "details",
    "hold_sts",
    "hop",
    "refused",
    "session_token",
    "store_run",
    "tctx_of",
]

#: a payments-tagged audience (its exchanges are held for "finance") and a plain one
PAYMENTS = "http://127.0.0.1:9101"
PLAIN = "http://127.0.0.1:9102"
APPROVER = "user:fiona@example.com"

RESOURCES = f"""
[[resources]]
uri = "{PAYMENTS}"
principals = ["spiffe://tether.local/svc/pay"]
tags = ["payments"]

[[resources]]
uri = "{PLAIN}"
principals = ["spiffe://tether.local/svc/plain"]
"""

#: the approval policies of these tests (beside ``tether init``'s starter set)
POLICIES = """
@id("payments-need-finance")
@approval("finance")
permit (principal, action == Tether::Action::"exchange", resource)
when { resource.tags.contains("payments") && context.key_bound };

@id("transfer-needs-finance")
@approval("finance")
permit (principal, action == Tether::Action::"call", resource)
when { context.tool == "transfer" };

@id("no-wipe")
forbid (principal, action == Tether::Action::"call", resource)
when { context.tool == "wipe" };

@id("sessions-need-ops")
@approval("ops")
permit (principal, action == Tether::Action::"exchange", resource)
when { context.kind == "session" && context.purpose == "needs ops" };
"""


@contextlib.contextmanager
def hold_sts(directory: Path, *, extra_toml: str = "") -> Iterator[RunningSts]:
    """An STS whose policy directory holds ``POLICIES`` before it starts, with two audiences."""
    config = make_deployment(directory, extra_toml=RESOURCES + "\n" + extra_toml)
    (config.policy_dir / "50-approvals.cedar").write_text(POLICIES, encoding="utf-8")
    with serving(config, ManualClock()) as running:
        yield running


def new_task(sts: RunningSts, **fields: Any) -> str:
    body: dict[str, Any] = {"audiences": [PAYMENTS, PLAIN], "scopes": ["pay", "read"]}
    body.update(fields)
    return str(create_task(sts, **body)["id"])


def session_token(sts: RunningSts, client: Client, task_id: str, **extra: str) -> str:
    response = client.session(task_id, **extra)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def details(tool: str, **arguments: Any) -> str:
    """RFC 9396 ``authorization_details`` for one tool call."""
    return json.dumps([{"type": "tool_call", "tool": tool, "arguments": arguments}])


def hop(client: Client, subject: str, resource: str, **extra: str) -> httpx.Response:
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": subject, "subject_token_type": ACCESS, "resource": resource}
    form.update(extra)
    return client.post_token(form)


def session_form(sts: RunningSts, task_id: str, **extra: str) -> dict[str, str]:
    return {"grant_type": TOKEN_EXCHANGE, "subject_token": sts.svid(AGENT), "subject_token_type": JWT, "task": task_id,
            **extra}  # fmt: skip


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def tctx_of(tool: str, arguments: dict[str, Any]) -> str:
    """``tctx`` computed independently of tether: SHA-256 over RFC 8785 JSON (these tests' arguments
    are ASCII strings and small integers, for which sorted compact ``json.dumps`` is RFC 8785)."""
    text = json.dumps({"arguments": arguments, "tool": tool}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()


def assert_held(response: httpx.Response, *, error: str = "authorization_pending") -> str:
    """RFC 8628 §3.5 held answer: 400, the code, ``approval_id``, ``interval``, ``expires_in``, no-store."""
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == error, body
    assert set(body) == {"error", "error_description", "approval_id", "interval", "expires_in"}, body
    assert isinstance(body["interval"], int) and isinstance(body["expires_in"], int) and body["expires_in"] > 0
    assert response.headers.get("cache-control") == "no-store"
    return str(body["approval_id"])


def refused(response: httpx.Response, *, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == error, body
    assert response.headers.get("cache-control") == "no-store"
    assert "access_token" not in body
    return body


def store_run(sts: RunningSts, work: Any) -> Any:
    """Run ``await work(store)`` on a second handle to the STS's store (as another process would)."""

    async def main() -> Any:
        store = await open_store(sts.config)
        try:
            return await work(store)
        finally:
            await store.aclose()

    return asyncio.run(main())


def approval_key(sts: RunningSts) -> bytes:
    return derive_key(load_master_key(sts.config.master_key_file), "approvals")


def approval_row(sts: RunningSts, approval_id: str) -> Approval:
    async def get(store: Any) -> Approval:
        approval = await store.get_approval(approval_id)
        assert approval is not None
        return approval  # type: ignore[no-any-return]

    return store_run(sts, get)  # type: ignore[no-any-return]


def decide(
    sts: RunningSts,
    approval_id: str,
    *,
    approve: bool = True,
    approver: str = APPROVER,
    uses: int = 1,
    window: int = 0,
    reason: str = "",
) -> Approval:
    """A human's decision, written as the approvers' API writes it: the decision fields, a correct
    ``decision_mac`` and its audit record, through ``Store.decide_approval``."""
    now = int(sts.clock.now())
    ttl = sts.config.approvals.ttl

    async def write(store: Any) -> Approval:
        stored = await store.get_approval(approval_id)
        assert stored is not None
        decided = replace(
            stored,
            status=ApprovalStatus.APPROVED if approve else ApprovalStatus.DENIED,
            decided_by=approver,
            decided_at=now,
            reason=reason,
            uses=uses if approve else 0,
            until=now + (window or ttl) if approve else None,
        )
        decided = replace(decided, decision_mac=decision_mac(approval_key(sts), decided))
        kind = "approval.approved" if approve else "approval.denied"
        event = AuditEvent(kind=kind, outcome="ok", principal=approver, task=stored.task, detail={"approval": approval_id})
        return await store.decide_approval(decided, now=now, audit=event)  # type: ignore[no-any-return]

    return store_run(sts, write)  # type: ignore[no-any-return]


def audit_of(sts: RunningSts, kind: str, *, since: int = 0) -> list[AuditRecord]:
    return [r for r in sts.audit() if r.seq > since and r.kind == kind]
