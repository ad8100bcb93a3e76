"""Shared pieces for the ``tether.mcp.protect`` tests: a real ``MCPServer``, served, and raw JSON-RPC.

Everything is real: the STS from ``helpers`` (uvicorn on loopback, SQLite), the ``mcp`` SDK's
``MCPServer`` wrapped by ``protect`` under ``ServerThread``, the agent SDK's ``TaskSession.auth()``
(hop exchange + DPoP) on an ``httpx`` client. The tests speak JSON-RPC themselves (the MCP
2026-07-28 single-exchange POST, or the 2025-11-25 session with its GET stream) so each can
send exactly the message it needs, malformed ones included.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from mcp.server.mcpserver import Context, MCPServer

from helpers import AGENT, RunningSts, create_task
from tether.agent import Agent, DevIdentity, TaskSession
from tether.mcp import ProtectedMCP, protect
from tether.resource import Verifier
from tether.web.server import ServerThread

__all__ = [
    "LEGACY",
    "MODERN",
    "POLICY",
    "TOOL_SCOPES",
    "McpEnv",
    "Served",
    "Tools",
    "build_server",
    "call_tool",
    "error_of",
    "legacy_headers",
    "legacy_session",
    "modern_headers",
    "modern_request",
    "reply_of",
    "result_of",
    "serve",
    "sse_messages",
]

MODERN = "2026-07-28"
LEGACY = "2025-11-25"
ACCEPT = "application/json, text/event-stream"
_ids = itertools.count(1)

#: Cedar policies for the tests' servers (on top of the starter set): read_file only under /shared/,
#: secret_admin never (so tools/list must not show it either)
POLICY = """
@id("read-file-shared-only")
forbid (principal, action == Tether::Action::"call", resource)
when {
  context.tool == "read_file" &&
  context.arguments.hasTag("path") &&
  !(context.arguments.getTag("path") like "/shared/*")
};

@id("no-secret-admin")
forbid (principal, action == Tether::Action::"call", resource)
when { context.tool == "secret_admin" };
"""


@dataclass
class Tools:
    """What the server's tools did: a refused call must leave no trace here."""

    ran: list[tuple[str, Any]] = field(default_factory=list)

    def calls(self, tool: str) -> list[Any]:
        return [value for name, value in self.ran if name == tool]


def build_server(tools: Tools) -> MCPServer:
    server = MCPServer("protected-notes")

    @server.tool()
    def read_file(path: str) -> str:
        tools.ran.append(("read_file", path))
        return f"contents of {path}"

    @server.tool()
    def store(data: Any) -> str:
        tools.ran.append(("store", data))
        return "stored"

    @server.tool()
    def echo(text: str) -> str:
        tools.ran.append(("echo", text))
        return text

    @server.tool()
    def secret_admin() -> str:
        tools.ran.append(("secret_admin", None))
        return "secret"

    @server.tool()
    async def wait(seconds: float, ctx: Context) -> str:
        """Reports progress (which commits an SSE response), then runs until cancelled or done."""
        tools.ran.append(("wait", "started"))
        try:
            await ctx.report_progress(0, 1, "started")
            await anyio.sleep(seconds)
        except BaseException:
            tools.ran.append(("wait", "cancelled"))
            raise
        tools.ran.append(("wait", "finished"))
        return "waited"

    return server


@dataclass
class Served:
    url: str
    verifier: Verifier
    app: ProtectedMCP
    tools: Tools
    thread: ServerThread

    @property
    def origin(self) -> str:
        return self.url.rsplit("/", 1)[0]


TOOL_SCOPES = ["tool:read_file", "tool:store", "tool:echo", "tool:secret_admin", "tool:wait"]


@dataclass
class McpEnv:
    sts: RunningSts
    sse: Served
    json: Served

    def task(self, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"audiences": [self.sse.url, self.json.url], "scopes": TOOL_SCOPES}
        body.update(fields)
        return create_task(self.sts, **body)

    def session(self, task_id: str | None = None, *, scopes: dict[str, str] | None = None) -> TaskSession:
        """A session of the research agent for ``task_id`` (a new task when None)."""
        task = task_id if task_id is not None else self.task()["id"]
        return Agent(self.sts.url, DevIdentity(self.sts.dev(), AGENT)).session(task, scopes=scopes)

    @contextlib.contextmanager
    def client(self, session: TaskSession, **kw: Any) -> Iterator[httpx.Client]:
        """An ``httpx`` client whose auth is the agent SDK's (one hop token per server, DPoP per request)."""
        audiences = {self.sse.url: self.sse.url, self.json.url: self.json.url}
        auth = session.auth(audiences=audiences, discover=False)
        with httpx.Client(auth=auth, trust_env=False, timeout=10.0, **kw) as http:
            yield http


@contextlib.contextmanager
def serve(verifier: Verifier, port: int, **options: Any) -> Iterator[Served]:
    tools = Tools()
    app = protect(build_server(tools), verifier, **options)
    thread = ServerThread(app, port).start()
    try:
        yield Served(verifier.settings.resource, verifier, app, tools, thread)
    finally:
        thread.stop()


def modern_request(method: str, params: dict[str, Any] | None = None, *, request_id: int | None = None) -> dict[str, Any]:
    """A 2026-07-28 request: its ``_meta`` carries the protocol version and client capabilities."""
    meta = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
    body_params = dict(params or {})
    body_params["_meta"] = {**meta, **body_params.get("_meta", {})}
    rid = request_id if request_id is not None else next(_ids)
    return {"jsonrpc": "2.0", "id": rid, "method": method, "params": body_params}


def modern_headers(method: str, name: str | None = None) -> dict[str, str]:
    headers = {"Accept": ACCEPT, "Content-Type": "application/json", "MCP-Protocol-Version": MODERN, "Mcp-Method": method}
    if name is not None:
        headers["Mcp-Name"] = name
    return headers


def legacy_headers(session_id: str | None = None) -> dict[str, str]:
    headers = {"Accept": ACCEPT, "Content-Type": "application/json"}
    if session_id is not None:
        headers["Mcp-Session-Id"] = session_id
        headers["MCP-Protocol-Version"] = LEGACY
    return headers


def legacy_session(http: httpx.Client, url: str) -> str:
    """``initialize`` + ``notifications/initialized`` (MCP 2025-11-25 lifecycle); the session id."""
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
    }
    response = http.post(url, json=init, headers=legacy_headers())
    assert response.status_code == 200, response.text
    session_id = str(response.headers["mcp-session-id"])
    done = http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=legacy_headers(session_id))
    assert done.status_code == 202, done.text
    return session_id


def call_tool(http: httpx.Client, url: str, tool: str, arguments: Any = None, **extra: Any) -> httpx.Response:
    params: dict[str, Any] = {"name": tool}
    if arguments is not None:
        params["arguments"] = arguments
    body = modern_request("tools/call", params)
    return http.post(url, json=body, headers=modern_headers("tools/call", tool), **extra)


def sse_messages(text: str) -> list[dict[str, Any]]:
    """The JSON-RPC messages in an SSE body (``data`` lines of each event)."""
    found = []
    for event in text.replace("\r\n", "\n").split("\n\n"):
        data = [line[5:].lstrip(" ") for line in event.split("\n") if line.startswith("data:")]
        if data and "".join(data).strip():
            found.append(json.loads("\n".join(data)))
    return found


def reply_of(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC response in an answer, JSON or SSE (the one with an ``id`` and no ``method``)."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        replies = [m for m in sse_messages(response.text) if "id" in m and "method" not in m]
        assert len(replies) == 1, response.text
        return replies[0]
    value: dict[str, Any] = response.json()
    return value


def result_of(response: httpx.Response) -> dict[str, Any]:
    reply = reply_of(response)
    assert "result" in reply, reply
    result: dict[str, Any] = reply["result"]
    return result


def error_of(response: httpx.Response) -> dict[str, Any]:
    reply = reply_of(response)
    assert "error" in reply, reply
    error: dict[str, Any] = reply["error"]
    return error
