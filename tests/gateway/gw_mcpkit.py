"""Pieces for the MCP gateway tests: MCP route config, pinning, and an agent speaking raw JSON-RPC.

The agent is the real agent SDK (hop exchange and DPoP through ``session.auth()``) over
httpx; it speaks MCP 2026-07-28 single-exchange POSTs (no initialize, no session: the
envelope rides in ``params._meta``) or, with ``initialize()``, the session-based 2025-06-18
protocol. The MCP SDK client through tether auth is tested elsewhere.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
from gwkit import _toml_value

from helpers import AGENT, RunningSts, create_task
from tether.agent import Agent, DevIdentity, TaskSession
from tether.config import Config
from tether.gateway.app import Gateway
from tether.gateway.mcp_routes import McpRoute
from tether.mcp.pins import pin_tools, save_pins
from tether.mcp.upstream import connect

__all__ = ["FILES_SERVER", "MODERN", "McpAgent", "McpEnv", "RpcError", "mcp_route_toml", "pid_alive", "pin_routes"]

MODERN = "2026-07-28"
LEGACY = "2025-06-18"
#: the tiny real MCP server of tests/mcp (read_file, list_directory, write_file; a rug-pull switch)
FILES_SERVER = Path(__file__).resolve().parent.parent / "mcp" / "servers" / "files_server.py"
STDIO = [sys.executable, str(FILES_SERVER)]


def files_server() -> ModuleType:
    """The server module, loaded from its file (it is a script, not on the import path)."""
    spec = importlib.util.spec_from_file_location("files_server", FILES_SERVER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mcp_route_toml(name: str, *, tools: Sequence[str], command: Sequence[str] = (), url: str = "",
                   expires: str = "2099-12-31", **extra: Any) -> str:  # fmt: skip
    row: dict[str, Any] = {"name": name, "tools": list(tools), "owner": "team-tools",
                           "justification": "the agents need these tools"}  # fmt: skip
    if command:
        row["command"] = list(command)
    if url:
        row["url"] = url
    env = extra.pop("env", None)
    row.update(extra)
    lines = ["[[gateway.mcp]]"] + [f"{k} = {_toml_value(v)}" for k, v in row.items()]
    lines.append(f"expires = {expires}")
    if env:
        lines.append("env = { " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in env.items()) + " }")
    return "\n".join(lines) + "\n"


def pin_routes(config: Config, *names: str, env: Mapping[str, str] | None = None, secret: str | None = None) -> dict[str, str]:
    """Pin what the first route's upstream offers now, as ``tether mcp pin`` does, for every route
    named (they must run the same server: it is listed once); ``env`` overrides the route's
    environment (the server as it was reviewed)."""
    route = next(r for r in config.mcp_routes if r.name == names[0])
    if env is not None:
        route = replace(route, env=tuple(sorted(env.items())))

    async def listed() -> list[dict[str, Any]]:
        upstream = await connect(route, secret=secret)
        try:
            return await upstream.list_tools()
        finally:
            await upstream.aclose()

    tools = asyncio.run(listed())
    for name in names:
        save_pins(config, pin_tools(name, tools, now=time.time(), by="test:operator"))
    return dict(pin_tools(names[0], tools, now=0, by="").tools)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) is gone for our purposes
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class McpEnv:
    sts: RunningSts
    config: Config
    gateway: Gateway
    closers: list[Any] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.config.values["gateway"]["url"])

    def aud(self, route: str) -> str:
        return f"{self.url}/mcp/{route}"

    def route(self, name: str) -> McpRoute:
        return next(r for r in self.config.mcp_routes if r.name == name)

    def agent(self, *routes: str, scopes: Sequence[str] = ("wiki:read",), **fields: Any) -> McpAgent:
        task = create_task(self.sts, audiences=[self.aud(r) for r in routes], scopes=list(scopes), **fields)
        agent = McpAgent(self, task, routes)
        self.closers.append(agent.close)
        return agent

    def audit(self, kind: str | None = None, task: str | None = None) -> list[Any]:
        return [r for r in self.sts.audit() if (kind is None or r.kind == kind) and (task is None or r.task == task)]

    def sessions(self, route: str, task: str) -> list[Any]:
        """The gateway's upstream sessions of ``task`` on ``route``."""
        assert self.gateway.mcp is not None
        return [s for k, s in list(self.gateway.mcp.sessions.sessions.items()) if k[0] == route and k[1] == task]

    def close(self) -> None:
        for close in self.closers:
            close()
        self.closers.clear()


class RpcError(Exception):
    def __init__(self, status: int, error: Mapping[str, Any]) -> None:
        super().__init__(f"{status} {error}")
        self.status = status
        self.code = error.get("code")
        self.message = str(error.get("message"))
        data = error.get("data")
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}


class McpAgent:
    """An agent process: its own DPoP key and task session, speaking JSON-RPC to MCP routes."""

    def __init__(self, env: McpEnv, task: dict[str, Any], routes: Sequence[str]) -> None:
        self.env = env
        self.task = task
        self.agent = Agent(env.sts.url, DevIdentity(env.sts.dev(), AGENT))
        self.session: TaskSession = self.agent.session(task["id"])
        known = {env.aud(r): env.aud(r) for r in routes}
        self.http = httpx.Client(auth=self.session.auth(audiences=known, discover=False), trust_env=False, timeout=20.0)
        self.plain = httpx.Client(trust_env=False, timeout=20.0)
        self._ids = itertools.count(1)
        self.mcp_session: dict[str, str] = {}

    def post(self, route: str, body: Mapping[str, Any], headers: Mapping[str, str]) -> httpx.Response:
        base = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        return self.http.post(self.env.aud(route), content=json.dumps(body), headers={**base, **headers})

    def post_raw(self, route: str, body: bytes, headers: Mapping[str, str]) -> httpx.Response:
        """``body`` byte for byte (JSON a dict cannot express, such as a repeated member)."""
        base = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        return self.http.post(self.env.aud(route), content=body, headers={**base, **headers})

    def bearer(self, token_route: str, url_route: str) -> dict[str, str]:
        """Authorization and DPoP headers presenting the token for ``token_route`` at ``url_route``'s URL."""
        token = self.token(token_route)
        proof = self.agent.key.proof("POST", self.env.aud(url_route), access_token=token)
        return {"Authorization": f"DPoP {token}", "DPoP": proof}

    def request(self, route: str, method: str, params: Mapping[str, Any] | None = None, *,
                headers: Mapping[str, str] | None = None) -> httpx.Response:  # fmt: skip
        """One MCP request: single-exchange 2026-07-28, or in the route's session once ``initialize``d."""
        params = dict(params or {})
        sent: dict[str, str]
        if route in self.mcp_session:
            sent = {"MCP-Protocol-Version": LEGACY, "Mcp-Session-Id": self.mcp_session[route]}
        else:
            meta = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
            params["_meta"] = {**meta, **params.get("_meta", {})}
            sent = {"MCP-Protocol-Version": MODERN, "Mcp-Method": method}
            if method == "tools/call":
                sent["Mcp-Name"] = str(params["name"])
        sent.update(headers or {})
        return self.post(route, {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}, sent)

    def rpc(self, route: str, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """The JSON-RPC result, or ``RpcError``; an HTTP refusal (401/403/503) is raised as httpx's error."""
        response = self.request(route, method, params)
        if response.headers.get("content-type", "").startswith("application/json") and "jsonrpc" in response.text:
            body = response.json()
            if "error" in body:
                raise RpcError(response.status_code, body["error"])
            return body["result"]
        response.raise_for_status()
        raise AssertionError(f"unexpected answer {response.status_code}: {response.text[:300]}")

    def tools(self, route: str) -> list[str]:
        return sorted(t["name"] for t in self.rpc(route, "tools/list")["tools"])

    def call(self, route: str, tool: str, arguments: Mapping[str, Any] | None = None) -> Any:
        return self.rpc(route, "tools/call", {"name": tool, "arguments": dict(arguments or {})})

    def initialize(self, route: str) -> httpx.Response:
        """Open a session-based (2025-06-18) MCP session on ``route``."""
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": "initialize",
                "params": {"protocolVersion": LEGACY, "capabilities": {},
                           "clientInfo": {"name": "test-agent", "version": "1"}}}  # fmt: skip
        response = self.post(route, body, {})
        if response.status_code == 200:
            self.mcp_session[route] = response.headers["mcp-session-id"]
            note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            headers = {"MCP-Protocol-Version": LEGACY, "Mcp-Session-Id": self.mcp_session[route]}
            assert self.post(route, note, headers).status_code == 202
        return response

    def token(self, route: str) -> str:
        return self.session.token_for(self.env.aud(route), self.plain)

    def with_token(self, route: str, token: str, method: str = "tools/list", params: Mapping[str, Any] | None = None,
                   *, url: str | None = None) -> httpx.Response:  # fmt: skip
        """A modern MCP request sent by hand with ``token`` and a fresh proof for ``url`` (default: the route's)."""
        target = url or self.env.aud(route)
        meta = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
        sent: dict[str, Any] = {**(params or {}), "_meta": meta}
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": sent}
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
                   "MCP-Protocol-Version": MODERN, "Mcp-Method": method, "Authorization": f"DPoP {token}",
                   "DPoP": self.agent.key.proof("POST", target, access_token=token)}  # fmt: skip
        if method == "tools/call":
            headers["Mcp-Name"] = str(sent["name"])
        return self.plain.post(target, content=json.dumps(body), headers=headers)

    def complete(self) -> None:
        self.session.complete(self.plain)

    def close(self) -> None:
        self.http.close()
        self.plain.close()
