"""The demo's approval act: a payment held for a human's yes, bound to exactly that payment.

A procurement agent pays suppliers through an MCP payments service behind ``tether.mcp.protect``.
A Cedar permit marked ``@approval("finance")`` holds every ``pay`` call: the service answers
``approval_required``, the agent's MCP client asks the STS for a token for exactly that call
(RFC 9396 ``authorization_details``), which holds it (RFC 8628 ``authorization_pending``) until a
scripted approver — alice, in finance, proved by the dev approvers' provider — reads the request
in plain words and approves it through the approvers' API. The token then carries ``apr`` and
``tctx`` and the payment goes through. The attacks: someone outside finance approving, the agent
approving its own request with its workload identity, a forged one-time link, the approved token
reused for a different amount, and for the same payment twice — all refused.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from tether.agent.exchange import ApprovalPending
from tether.agent.identity import DevIdentity
from tether.agent.session import Agent, TaskSession
from tether.client import StsClient
from tether.config import Config
from tether.identity.checks import unverified
from tether.identity.dev_approvers import DevApprovers
from tether.identity.dev_issuer import DevTrustDomain
from tether.keys.sealed import load_master_key
from tether.rules.approval import tool_call_context

__all__ = ["APPROVAL_POLICY", "PAYMENTS_SERVICE", "ApprovalPlan", "approval_act"]

BUYER = "spiffe://tether.local/agent/procurement"
PAYMENTS_SERVICE = "spiffe://tether.local/svc/payments"
FINANCE = "alice@example.com"
OUTSIDER = "bob@example.com"
Step = Callable[..., None]

#: written into the demo's policy directory: every payment needs a yes from finance
APPROVAL_POLICY = """// The demo's payments rule: paying anyone needs a yes from finance, for exactly that payment.
@id("payments-need-finance")
@approval("finance")
permit (principal, action == Tether::Action::"call", resource)
when { context.tool == "pay" };
"""


@dataclass(frozen=True)
class ApprovalPlan:
    payments_url: str  # the protected MCP payments server, its tokens' audience

    def toml(self) -> str:
        return (
            f'\n[[resources]]\nuri = "{self.payments_url}"\nprincipals = ["{PAYMENTS_SERVICE}"]\ntags = ["payments"]\n'
            f'\n[[approver_groups]]\nname = "finance"\nmembers = ["user:{FINANCE}"]\n'
        )


class _Approvers:
    """Alice and Bob at the approvers' API, with ID tokens from the dev approvers' provider."""

    def __init__(self, config: Config, sts_url: str) -> None:
        master = load_master_key(config.master_key_file)
        self._provider = DevApprovers.load(config.data_dir, config.approvals.issuer, master)
        self._audience = config.approvals.audience
        self._url = sts_url

    def _headers(self, email: str) -> dict[str, str]:
        token = self._provider.issue(email, audience=self._audience, ttl=300, now=int(time.time()))
        return {"Authorization": f"Bearer {token}"}

    def pending(self, email: str, task: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self._url}/approvals", params={"status": "pending", "task": task},
                             headers=self._headers(email), trust_env=False, timeout=10)  # fmt: skip
        response.raise_for_status()
        return list(response.json()["approvals"])

    def decide(self, email: str, approval_id: str, decision: str = "approve") -> httpx.Response:
        return httpx.post(f"{self._url}/approvals/{approval_id}/{decision}", json={"reason": "invoice checked"},
                          headers=self._headers(email), trust_env=False, timeout=10)  # fmt: skip


def _approve_when_held(approvers: _Approvers, task: str, seen: list[dict[str, Any]]) -> threading.Thread:
    """Alice, scripted: wait for the task's held request, read it, approve it."""

    def run() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pending = approvers.pending(FINANCE, task)
            if pending:
                seen.append(pending[0])
                approvers.decide(FINANCE, pending[0]["id"]).raise_for_status()
                return
            time.sleep(0.1)

    thread = threading.Thread(target=run, name="demo-approver", daemon=True)
    thread.start()
    return thread


def _rpc(url: str, token: str, session: TaskSession, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """One raw MCP ``tools/call`` with ``token`` (what an agent holding it could send): the JSON-RPC reply."""
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments, "_meta": meta}}
    headers = {
        "Accept": "application/json, text/event-stream", "Content-Type": "application/json",
        "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": tool,
        "Authorization": f"DPoP {token}", "DPoP": session.key.proof("POST", url, access_token=token),
    }  # fmt: skip
    response = httpx.post(url, content=json.dumps(body), headers=headers, trust_env=False, timeout=10)
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:") and '"id"' in line:
                return dict(json.loads(line[5:]))
    return dict(response.json())


def _error(reply: dict[str, Any]) -> str:
    error = reply.get("error") or {}
    return str((error.get("data") or {}).get("error") or error.get("message") or "called")


async def _pay_through_mcp(session: TaskSession, url: str, arguments: dict[str, Any]) -> str:
    """The agent on the official MCP client SDK: the held ``pay`` is waited for and retried once."""
    from tether.demo.mcp_act import _client  # the same SDK client the MCP act uses

    auth = session.mcp_auth(audiences={url: url}, discover=False, approval_timeout=30)
    async with _client(url, auth) as client:
        result = await client.call_tool("pay", arguments)
    return "tool error" if result.is_error else str(result.structured_content or result.content)[:80]


def approval_act(
    step: Step, check: Step, admin: StsClient, domain: DevTrustDomain, sts_url: str, plan: ApprovalPlan, config: Config,
    paid: list[dict[str, Any]],
) -> None:  # fmt: skip
    approvers = _Approvers(config, sts_url)
    task = admin.create_task(agent=BUYER, audiences=[plan.payments_url], scopes=["tool:pay", "tool:balance"],
                             purpose="pay the approved supplier invoices")  # fmt: skip
    session = Agent(sts_url, DevIdentity(domain, BUYER)).session(task["id"])
    invoice = {"to": "acme-ltd", "amount": 120, "memo": "invoice 7"}
    seen: list[dict[str, Any]] = []
    approver = _approve_when_held(approvers, task["id"], seen)
    outcome = asyncio.run(_pay_through_mcp(session, plan.payments_url, invoice))
    approver.join(timeout=30)
    view = seen[0]["request"] if seen else {}
    step("approval", "agent → payments: `pay` is held for finance (@approval); alice reads it in plain words and approves",
         ok=bool(seen) and view.get("tool") == "pay", agent=view.get("agent"), purpose=view.get("purpose"),
         tool=view.get("tool"), arguments=view.get("arguments"))  # fmt: skip
    check("approval:held-then-paid", paid == [invoice] and "paid 120" in outcome,
          "the MCP client waited for the approval and retried the call once", result=outcome)  # fmt: skip

    second = {"to": "acme-ltd", "amount": 50, "memo": "invoice 8"}
    try:
        session.token_for_call(plan.payments_url, "pay", second)
        approval_id = ""
    except ApprovalPending as held:
        approval_id = held.approval_id
    outsider = approvers.decide(OUTSIDER, approval_id)
    check("refused:approval-outside-group", outsider.status_code == 404,
          "bob (not in finance) cannot approve — nor even see — the request", status=outsider.status_code)  # fmt: skip
    svid = domain.issue(BUYER, audience=config.approvals.audience, ttl=60, now=int(time.time()))
    own = httpx.post(f"{sts_url}/approvals/{approval_id}/approve", json={}, headers={"Authorization": f"Bearer {svid}"},
                     trust_env=False, timeout=10)  # fmt: skip
    check("refused:approval-by-the-agent", own.status_code == 401,
          "the agent's own workload identity is not an approver", status=own.status_code)  # fmt: skip
    forged = httpx.post(f"{sts_url}/approvals/link/eyJhIjoiYXByIn0.forged-signature", trust_env=False, timeout=10)
    check("refused:approval-forged-link", forged.status_code == 403, "a forged one-time approve link",
          status=forged.status_code)  # fmt: skip
    approvers.decide(FINANCE, approval_id).raise_for_status()
    token = session.token_for_call(plan.payments_url, "pay", second, approval_id=approval_id)
    _, claims = unverified(token)  # for display: the payments server verifies it
    step("approval", "alice approves the second payment: the token carries apr (who, when) and tctx (which call)",
         ok=claims.get("apr", {}).get("by") == f"user:{FINANCE}" and claims.get("tctx") == tool_call_context("pay", second),
         apr=claims.get("apr"), tctx=claims.get("tctx"))  # fmt: skip
    changed = _rpc(plan.payments_url, token, session, "pay", {**second, "amount": 5000})
    check("refused:approval-changed-arguments", _error(changed) == "access_denied" and len(paid) == 1,
          "the approved token with 5000 instead of 50", outcome=_error(changed))  # fmt: skip
    done = _rpc(plan.payments_url, token, session, "pay", second)
    again = _rpc(plan.payments_url, token, session, "pay", second)
    check("refused:approval-used-twice", _error(done) == "called" and _error(again) == "access_denied" and len(paid) == 2,
          "the approved payment went through once; the same token again is refused", outcome=_error(again))  # fmt: skip
    session.complete()
    step("task", "procurement task completed: its tokens are revoked everywhere")
