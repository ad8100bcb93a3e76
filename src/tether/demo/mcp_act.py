"""The demo's MCP act: an agent on the official MCP client SDK, with tether tokens on every request.

It lists and calls tools on a tether-protected MCP server (the notes service, behind
``tether.mcp.protect``) and, through ``tether gateway``, on a stdio MCP server the gateway
starts for its session (the shared drive, pinned). The attacks: a tool outside the route's
allowlist, a token for another server, a token after the task completed, and a tool whose
definition changed after it was pinned (a rug pull) — all refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tether.agent.identity import DevIdentity
from tether.agent.session import Agent, TaskSession
from tether.client import StsClient
from tether.config import Config
from tether.identity.dev_issuer import DevTrustDomain

__all__ = ["NOTES_SERVICE", "McpPlan", "mcp_act", "pin_drive"]

AGENT = "spiffe://tether.local/agent/research"
NOTES_SERVICE = "spiffe://tether.local/service/notes"
ROUTE = "drive"
Step = Callable[..., None]


@dataclass(frozen=True)
class McpPlan:
    gateway_url: str
    notes_url: str  # the protected MCP server's endpoint, its tokens' audience
    poison_marker: Path  # while this file exists, a new drive session's read_file is poisoned

    @property
    def drive_url(self) -> str:
        return f"{self.gateway_url}/mcp/{ROUTE}"

    def toml(self) -> str:
        command = [sys.executable, "-m", "tether.demo.mcp_servers", "drive", "--poison-marker", str(self.poison_marker)]
        quoted = ", ".join(f'"{part}"' for part in command)
        return (
            f'\n[[resources]]\nuri = "{self.notes_url}"\nprincipals = ["{NOTES_SERVICE}"]\n'
            f'\n[[gateway.mcp]]\nname = "{ROUTE}"\ncommand = [{quoted}]\ntools = ["read_file", "list_directory"]\n'
            'owner = "team-docs"\njustification = "agents read the shared drive"\nexpires = 2099-12-31\n'
        )


def pin_drive(config: Config) -> list[str]:
    """``tether mcp pin drive``, as an operator approves the route (audited): the tool names pinned."""
    from tether.mcp.pins import pin_tools, record_pins
    from tether.mcp.upstream import connect
    from tether.store.open import open_store

    route = next(r for r in config.mcp_routes if r.name == ROUTE)

    async def approve() -> list[str]:
        upstream = await connect(route)
        try:
            tools = await upstream.list_tools()
        finally:
            await upstream.aclose()
        store = await open_store(config)
        try:
            await record_pins(config, store, pin_tools(ROUTE, tools, now=time.time(), by="demo:operator"))
        finally:
            await store.aclose()
        return sorted(str(t["name"]) for t in tools)

    return asyncio.run(approve())


@asynccontextmanager
async def _client(url: str, auth: Any) -> AsyncIterator[Any]:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async with (
        httpx2.AsyncClient(auth=auth, trust_env=False, timeout=20.0) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


async def _refusal(url: str, auth: Any, tool: str, arguments: dict[str, Any]) -> str:
    """What the MCP client sees when it calls ``tool``: "called", a JSON-RPC error code, or the HTTP refusal."""
    from mcp import MCPError

    try:
        async with _client(url, auth) as client:
            result = await client.call_tool(tool, arguments)
            return "tool error" if result.is_error else "called"
    except BaseException as exc:  # noqa: BLE001 - the SDK's task group wraps what the call raised
        leaf = _leaf(exc)
        if isinstance(leaf, MCPError):
            return f"json-rpc {leaf.code}: {leaf.message[:80]}"
        return f"refused: {leaf}"[:120]


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _raw_status(url: str, token: str, session: TaskSession) -> int:
    """A tools/list POST with ``token`` and a fresh proof for ``url``: the HTTP status the server answers."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Authorization": f"DPoP {token}", "DPoP": session.key.proof("POST", url, access_token=token),
               "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2026-07-28"}  # fmt: skip
    return httpx.post(url, json=body, headers=headers, trust_env=False, timeout=10).status_code


async def _happy(step: Step, check: Step, session: TaskSession, plan: McpPlan) -> None:
    async with _client(plan.notes_url, session.mcp_auth()) as notes:
        listed = sorted(t.name for t in (await notes.list_tools()).tools)
        found = await notes.call_tool("search_notes", {"query": "demo"})
    step("mcp", "agent → protected MCP server (notes): tools/list shows only what its scopes allow",
         ok=listed == ["add_note", "search_notes"], tools=listed)  # fmt: skip
    check("mcp:protected-call", not found.is_error, "tools/call search_notes with a DPoP-bound hop token",
          result=str(found.structured_content or found.content)[:80])  # fmt: skip
    async with _client(plan.drive_url, session.mcp_auth()) as drive:
        listed = sorted(t.name for t in (await drive.list_tools()).tools)
        read = await drive.call_tool("read_file", {"path": "/shared/q3-plan.md"})
    step("mcp", "agent → gateway → stdio MCP server (shared drive): allowlisted, pinned tools only",
         ok=listed == ["list_directory", "read_file"], tools=listed)  # fmt: skip
    check("mcp:gateway-call", not read.is_error, "tools/call read_file through the gateway (no credential upstream)",
          result=str(read.structured_content or read.content)[:80])  # fmt: skip


async def _attacks(check: Step, session: TaskSession, plan: McpPlan) -> None:
    outcome = await _refusal(plan.drive_url, session.mcp_auth(), "delete_file", {"path": "/shared/q3-plan.md"})
    check("refused:mcp-outside-allowlist", outcome.startswith("json-rpc"), "delete_file is not on the route's allowlist",
          outcome=outcome)  # fmt: skip
    outcome = await _refusal(plan.notes_url, session.mcp_auth(), "delete_all_notes", {})
    check("refused:mcp-tool-scope", not outcome.startswith("called"), "delete_all_notes: the token has no tool: scope for it",
          outcome=outcome)  # fmt: skip


def mcp_act(step: Step, check: Step, admin: StsClient, domain: DevTrustDomain, sts_url: str, plan: McpPlan) -> None:
    scopes = ["tool:search_notes", "tool:add_note", "tool:read_file", "tool:list_directory"]
    task = admin.create_task(agent=AGENT, audiences=[plan.notes_url, plan.drive_url], scopes=scopes,
                             purpose="summarise the Q3 plan for the team")  # fmt: skip
    session = Agent(sts_url, DevIdentity(domain, AGENT)).session(task["id"])
    asyncio.run(_happy(step, check, session, plan))
    asyncio.run(_attacks(check, session, plan))
    with httpx.Client(trust_env=False, timeout=10.0) as raw:
        notes_token = session.token_for(plan.notes_url, raw)
    status = _raw_status(plan.drive_url, notes_token, session)
    check("refused:mcp-token-for-another-server", status == 401, "the notes server's token presented to the gateway route",
          status=status)  # fmt: skip
    session.complete()
    step("task", "MCP task completed: its tokens are revoked everywhere, its stdio server stopped")
    deadline = time.monotonic() + 5
    while (status := _raw_status(plan.notes_url, notes_token, session)) != 401 and time.monotonic() < deadline:
        time.sleep(0.05)
    check("refused:mcp-after-completion", status == 401, "the notes token after the task completed", status=status)
    _rug_pull(step, check, admin, domain, sts_url, plan, scopes)


def _rug_pull(step: Step, check: Step, admin: StsClient, domain: DevTrustDomain, sts_url: str, plan: McpPlan,
              scopes: list[str]) -> None:  # fmt: skip
    plan.poison_marker.write_text("the vendor shipped a new read_file description\n", encoding="utf-8")
    step("mcp", "the drive server's vendor changes read_file's description (tool poisoning, after it was pinned)")
    task = admin.create_task(agent=AGENT, audiences=[plan.drive_url], scopes=scopes, purpose="read the Q3 plan again")
    session = Agent(sts_url, DevIdentity(domain, AGENT)).session(task["id"])
    outcome = asyncio.run(_refusal(plan.drive_url, session.mcp_auth(), "read_file", {"path": "/shared/q3-plan.md"}))
    check("refused:mcp-rug-pull", outcome.startswith("json-rpc"), "read_file refused: its definition drifted from the pin",
          outcome=outcome)  # fmt: skip
    with contextlib.suppress(httpx.HTTPStatusError):  # the monitor may have suspended the task already: it is over
        session.complete()
