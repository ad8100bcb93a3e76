"""The official MCP client SDK, through ``session.mcp_auth()``, against servers behind ``tether.mcp.protect``.

Both sides are the real SDK: its ``Client`` over streamable HTTP (httpx2) with tether's auth,
and ``MCPServer`` apps wrapped by ``protect`` on loopback. The audience is discovered from the
401's ``resource_metadata`` (RFC 9728), every request carries a fresh DPoP proof, and refusals
reach the client as the SDK's own errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcpkit import McpEnv

from tether.agent import SessionEnded


@asynccontextmanager
async def connect(url: str, auth: httpx2.Auth, mode: str = "auto") -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(auth=auth, trust_env=False, timeout=10.0) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


def leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


@pytest.mark.parametrize(("server", "mode"), [("sse", "legacy"), ("sse", "auto"), ("json", "auto")])
def test_mcp_02_sdk_client_lists_and_calls_through_tether(menv: McpEnv, server: str, mode: str) -> None:
    served = getattr(menv, server)
    session = menv.session()

    async def run() -> tuple[list[str], Any, Any]:
        async with connect(served.url, session.mcp_auth(), mode) as client:
            listed = sorted(t.name for t in (await client.list_tools()).tools)
            allowed = await client.call_tool("read_file", {"path": "/shared/plan.md"})
            echoed = await client.call_tool("echo", {"text": "hi"})
            return listed, allowed, echoed

    listed, allowed, echoed = anyio.run(run)
    assert "secret_admin" not in listed and {"read_file", "echo", "store"} <= set(listed)  # Cedar forbids secret_admin
    assert not allowed.is_error and "contents of /shared/plan.md" in str(allowed.content)
    assert not echoed.is_error
    assert served.tools.calls("read_file")[-1] == "/shared/plan.md"
    assert session.exchanges == 2  # one session token, one hop token for this server, reused for every request


@pytest.mark.parametrize("server", ["sse", "json"])
def test_mcp_03_cedar_denial_on_arguments_is_an_mcp_error_and_the_tool_never_runs(menv: McpEnv, server: str) -> None:
    served = getattr(menv, server)
    session = menv.session()
    before = list(served.tools.calls("read_file"))

    async def run() -> BaseException:
        try:
            async with connect(served.url, session.mcp_auth()) as client:
                await client.call_tool("read_file", {"path": "/etc/passwd"})
        except BaseException as exc:  # noqa: BLE001 - the SDK's task group wraps the error
            return leaf(exc)
        raise AssertionError("the denied call was answered")

    error = anyio.run(run)
    assert isinstance(error, MCPError) and error.code == -32003
    assert error.data == {"error": "access_denied", "tool": "read_file"}
    assert served.tools.calls("read_file") == before


def test_mcp_03_missing_tool_scope_is_refused_before_the_tool(menv: McpEnv) -> None:
    session = menv.session(menv.task(scopes=["tool:echo"])["id"])
    before = list(menv.sse.tools.calls("read_file"))

    async def run() -> tuple[list[str], BaseException | None]:
        async with connect(menv.sse.url, session.mcp_auth()) as client:
            listed = sorted(t.name for t in (await client.list_tools()).tools)
        try:
            async with connect(menv.sse.url, session.mcp_auth()) as client:
                await client.call_tool("read_file", {"path": "/shared/a"})
        except BaseException as exc:  # noqa: BLE001
            return listed, leaf(exc)
        return listed, None

    listed, error = anyio.run(run)
    assert listed == ["echo"]  # the scope convention filters the listing too
    assert error is not None  # a 403 insufficient_scope: the SDK surfaces it as an error, never a result
    assert menv.sse.tools.calls("read_file") == before


def test_mcp_05_completing_the_task_ends_the_mcp_session(menv: McpEnv) -> None:
    session = menv.session()

    async def run() -> BaseException | None:
        auth = session.mcp_auth()
        async with connect(menv.json.url, auth) as client:
            assert not (await client.call_tool("echo", {"text": "before"})).is_error
            await session.acomplete()
            try:
                await client.call_tool("echo", {"text": "after"})
            except BaseException as exc:  # noqa: BLE001
                return leaf(exc)
        return None

    try:
        error = anyio.run(run)
    except BaseException as exc:  # noqa: BLE001 - leaving the client re-raises the transport's error
        error = leaf(exc)
    assert isinstance(error, SessionEnded)
    assert "after" not in menv.json.tools.calls("echo")
