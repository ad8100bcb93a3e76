"""Held exchanges for the agent-SDK approval tests: a scripted token endpoint, a pause driver, the real world.

The client side of RFC 8628 §3.5 polling (``interval``, ``slow_down`` +5 s, the caller's
deadline, the error each answer becomes) is tested against ``ScriptedSts``: a token endpoint
on loopback that answers each POST with the next scripted reply and records the form and the
DPoP proof it got. The real STS holding and issuing is tested in
``test_agent_approval.py``'s end-to-end tests. ``drive`` runs a flow over real HTTP but answers
its pauses at once, advancing a ``ManualClock`` instead of sleeping, so no test waits out an
interval and none asserts a wall-clock time.

``pay_world`` is the real thing: the STS and a ``protect``ed payment MCP server sharing one
policy set that holds ``pay`` for finance, approvers proved by a loopback OIDC provider
(``tests/identity``'s ``Provider``) and deciding through the approvers' API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "identity"))

from identity_support import Provider, Tenant, ec_key, sign_jwt

from helpers import AGENT, FEED_SUBSCRIBER, QUIET_MONITOR, SVC_RS, RunningSts, create_task, make_deployment, serving
from tether.agent import Agent, DevIdentity, TaskSession
from tether.agent.exchange import RESUMED, Flow, Pause, Steps
from tether.agent.proof import DPoPKey
from tether.clock import ManualClock
from tether.mcp import protect
from tether.model import Approval, ApprovalStatus
from tether.resource import ResourceSettings, Verifier
from tether.rules.jws import b64url_decode, strict_json_loads
from tether.store.open import open_store
from tether.web.server import ServerThread, free_port

__all__ = [
    "APPROVAL_ID",
    "Driven",
    "ScriptedSts",
    "denied",
    "drive",
    "expired",
    "issued",
    "pending",
    "scripted_sts",
    "slow_down",
]

APPROVAL_ID = "apr_" + "Q" * 22


def pending(interval: int = 2, expires_in: int = 300, *, error: str = "authorization_pending") -> tuple[int, dict[str, Any]]:
    return 400, {"error": error, "error_description": "held for approval", "approval_id": APPROVAL_ID,
                 "interval": interval, "expires_in": expires_in}  # fmt: skip


def slow_down(interval: int) -> tuple[int, dict[str, Any]]:
    return pending(interval, error="slow_down")


def denied() -> tuple[int, dict[str, Any]]:
    return 403, {"error": "access_denied", "error_description": "the request was denied by its approver"}


def expired() -> tuple[int, dict[str, Any]]:
    return 400, {"error": "expired_token", "error_description": "the approval expired before anyone decided"}


def issued(value: str = "issued-value") -> tuple[int, dict[str, Any]]:
    return 200, {"access_token": value, "token_type": "DPoP", "expires_in": 60, "scope": "wiki:read"}


@dataclass
class ScriptedSts:
    url: str
    script: list[tuple[int, dict[str, Any]]]
    #: every POST: its form and the ``jti`` of its DPoP proof
    seen: list[tuple[dict[str, str], str]] = field(default_factory=list)

    @property
    def token_url(self) -> str:
        return self.url + "/token"


@contextlib.contextmanager
def scripted_sts(*script: tuple[int, dict[str, Any]]) -> Iterator[ScriptedSts]:
    port = free_port()
    sts = ScriptedSts(f"http://127.0.0.1:{port}", list(script))

    async def token(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        proof = request.headers.get("dpop", "")
        jti = str(strict_json_loads(b64url_decode(proof.split(".")[1])).get("jti")) if proof.count(".") == 2 else ""
        sts.seen.append((form, jti))
        status, body = sts.script.pop(0) if sts.script else (500, {"error": "server_error"})
        return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})

    thread = ServerThread(Starlette(routes=[Route("/token", token, methods=["POST"])]), port).start()
    try:
        yield sts
    finally:
        thread.stop()


@dataclass
class Driven:
    result: Any = None
    error: BaseException | None = None
    pauses: list[float] = field(default_factory=list)


def drive(flow: Flow, http: httpx.Client, clock: ManualClock) -> Driven:
    """Run ``flow`` over ``http``; each ``Pause`` is recorded and passed by moving ``clock`` (no sleep)."""
    driven = Driven()
    try:
        steps = Steps(flow)
        while steps.request is not None:
            if isinstance(steps.request, Pause):
                driven.pauses.append(steps.request.seconds)
                clock.advance(steps.request.seconds)
                steps.answer(RESUMED)
                continue
            steps.answer(http.send(steps.request))
        driven.result = steps.result
    except Exception as exc:  # noqa: BLE001 -- the test asserts which one
        driven.error = exc
    return driven


# -- the real thing: an STS that holds a payment tool, and an MCP server that holds it too ----------

#: the policy both the STS and the MCP server load: ``pay`` is held for finance, ``echo`` is not
PAY_POLICY = """
@id("pay-needs-finance")
@approval("finance")
permit (principal, action == Tether::Action::"call", resource)
when { context.tool == "pay" };
"""
FINANCE = "user:fiona@example.com"
OUTSIDER = "user:eve@example.com"
APPROVERS_AUDIENCE = "tether-approvals"


def approvals_toml(issuer: str) -> str:
    """Held requests polled every second; approvers proved by ``issuer`` (the test's OIDC provider)."""
    return (
        f'\n[approvals]\nttl = 120\ninterval = 1\nissuer = "{issuer}"\naudience = "{APPROVERS_AUDIENCE}"\n'
        f'\n[[approver_groups]]\nname = "finance"\nmembers = ["{FINANCE}"]\n'
    )


@dataclass
class PayWorld:
    sts: RunningSts
    url: str
    verifier: Verifier
    ran: list[dict[str, Any]]
    tenant: Tenant
    approver_key: Any

    def approve(self, approval_id: str, *, approver: str = FINANCE, deny: bool = False) -> httpx.Response:
        """A human's decision through the approvers' API, with an ID token from the organisation's provider."""
        now = int(self.sts.clock.now())
        claims = {"iss": self.tenant.issuer, "sub": "sub-" + approver, "aud": APPROVERS_AUDIENCE, "iat": now,
                  "exp": now + 300, "email": approver.removeprefix("user:")}  # fmt: skip
        id_token = sign_jwt({"alg": "ES256", "kid": self.approver_key.kid, "typ": "JWT"}, claims, self.approver_key)
        action = "deny" if deny else "approve"
        with httpx.Client(timeout=10.0, trust_env=False) as http:
            return http.post(f"{self.sts.url}/approvals/{approval_id}/{action}", json={},
                             headers={"Authorization": f"Bearer {id_token}"})  # fmt: skip

    def session(self, *, approval_timeout: float = 0) -> TaskSession:
        task = create_task(self.sts, audiences=[self.url], scopes=["tool:pay", "tool:echo"])
        agent = Agent(self.sts.url, DevIdentity(self.sts.dev(), AGENT))
        return agent.session(str(task["id"]), approval_timeout=approval_timeout)

    def pending(self, task: str) -> list[Approval]:
        """The task's pending approvals, read from the STS's store as another process would."""

        async def read() -> list[Approval]:
            store = await open_store(self.sts.config)
            try:
                found = await store.list_approvals(status=ApprovalStatus.PENDING, task=task, now=self.sts.clock.now(), limit=10)
                return list(found)
            finally:
                await store.aclose()

        return asyncio.run(read())


def _pay_server(ran: list[dict[str, Any]]) -> MCPServer:
    server = MCPServer("payments")

    @server.tool()
    def pay(amount: int, to: str) -> str:
        ran.append({"amount": amount, "to": to})
        return f"paid {amount} to {to}"

    @server.tool()
    def echo(text: str) -> str:
        return text

    return server


@contextlib.contextmanager
def pay_world(directory: Path) -> Iterator[PayWorld]:
    """The STS (held tool calls, 1 s polling interval, approvers from a loopback OIDC provider) and
    ``protect``'s payment server, sharing one policy set."""
    provider = Provider().start()
    try:
        tenant = Tenant(provider)
        approver_key = ec_key("approvers-1")
        tenant.publish(approver_key)
        with _pay_world(directory, tenant, approver_key) as world:
            yield world
    finally:
        provider.stop()


@contextlib.contextmanager
def _pay_world(directory: Path, tenant: Tenant, approver_key: Any) -> Iterator[PayWorld]:
    toml = FEED_SUBSCRIBER + QUIET_MONITOR + approvals_toml(tenant.issuer)
    config = make_deployment(directory / "sts", extra_toml=toml)
    (config.policy_dir / "50-pay.cedar").write_text(PAY_POLICY, encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    with serving(config, ManualClock()) as sts:
        settings = ResourceSettings(issuer=sts.url, resource=url, policy_dir=str(config.policy_dir))
        verifier = Verifier(settings, identity=sts.identity(SVC_RS))
        ran: list[dict[str, Any]] = []
        thread = ServerThread(protect(_pay_server(ran), verifier, scope_prefix=None), port).start()
        try:
            deadline = time.monotonic() + 10
            while not (verifier.feed is not None and verifier.feed.fresh(time.time())):
                assert time.monotonic() < deadline, "the MCP server's revocation feed did not sync"
                time.sleep(0.02)
            yield PayWorld(sts, url, verifier, ran, tenant, approver_key)
        finally:
            thread.stop()


def rpc_call(http: httpx.Client, url: str, token: str, key: DPoPKey, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """One MCP 2026-07-28 ``tools/call`` with ``token`` and a fresh proof; the JSON-RPC reply."""
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments, "_meta": meta}}
    headers = {
        "Accept": "application/json, text/event-stream", "Content-Type": "application/json",
        "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": tool,
        "Authorization": f"DPoP {token}", "DPoP": key.proof("POST", url, access_token=token),
    }  # fmt: skip
    response = http.post(url, content=json.dumps(body), headers=headers)
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:") and '"id"' in line:
                reply: dict[str, Any] = json.loads(line[5:])
                return reply
    reply = response.json()
    return reply
