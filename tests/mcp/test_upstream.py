"""``tether.mcp.upstream``: a real MCP server over stdio (subprocess) and over streamable HTTP (loopback)."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Any

import pytest
from catalogue_kit import SECRET, http_row, http_upstream, route, stdio_row

from tether.gateway.mcp_results import ResultTooLarge
from tether.mcp.catalogue import drift
from tether.mcp.pins import pin_tools
from tether.mcp.upstream import UpstreamError, connect

NAMES = ["list_directory", "read_file", "write_file"]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _environ(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split("\0") if "=" in item)


def test_MCP_14_stdio_upstream_minimal_environment_and_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stdio server sees only a minimal environment plus the route's env, never the
    gateway's (TETHER_SECRET_TEST), and its process is gone after aclose."""
    monkeypatch.setenv("TETHER_SECRET_TEST", "x")
    note = tmp_path / "note.txt"
    note.write_text("hello")

    async def run() -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], int]:
        upstream = await connect(route(stdio_row(env={"FILES_ROOT": str(tmp_path)})))
        try:
            assert upstream.alive and upstream.pid is not None
            tools = await upstream.list_tools()
            read = await upstream.call_tool("read_file", {"path": str(note)}, timeout=30)
            env = await upstream.call_tool("read_file", {"path": "/proc/self/environ"}, timeout=30)
            return tools, read, env, upstream.pid
        finally:
            await upstream.aclose()

    tools, read, env, pid = asyncio.run(run())
    assert sorted(t["name"] for t in tools) == NAMES
    assert read["content"][0]["text"] == "hello" and read["isError"] is False
    seen = _environ(env["content"][0]["text"])
    assert "TETHER_SECRET_TEST" not in seen  # the negative: the gateway's environment stays behind
    assert seen["FILES_ROOT"] == str(tmp_path) and "PATH" in seen  # positive control: the route's env arrives
    assert set(seen) <= {"FILES_ROOT", "PATH", "HOME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
                         "USER", "LOGNAME", "SHELL", "TERM", "SYSTEMROOT"}  # fmt: skip
    assert _gone(pid)


def test_MCP_13_stdio_rug_pull_shows_as_changed() -> None:
    async def listing(**env: str) -> list[dict[str, Any]]:
        upstream = await connect(route(stdio_row(env=env)))
        try:
            return await upstream.list_tools()
        finally:
            await upstream.aclose()

    pinned = pin_tools("files", asyncio.run(listing()), now=0, by="test").tools
    assert drift(pinned, asyncio.run(listing())).empty
    pulled = drift(pinned, asyncio.run(listing(FILES_SERVER_RUG_PULL="1")))
    assert pulled.changed == ("read_file",) and not pulled.added and not pulled.removed


def test_stdio_upstream_that_does_not_speak_mcp_is_an_upstream_error() -> None:
    import sys

    async def run(command: list[str]) -> None:
        await connect(route(stdio_row(command=command, timeout=20)))

    with pytest.raises(UpstreamError, match="route `files`"):
        asyncio.run(run([sys.executable, "-c", "pass"]))
    with pytest.raises(UpstreamError, match="route `files`"):
        asyncio.run(run(["/nonexistent/mcp-server"]))


def test_MCP_12_http_upstream_gets_the_vaulted_secret_injected() -> None:
    """The vaulted secret is injected as configured; without it the upstream refuses."""

    async def run(url: str, secret: str | None) -> list[dict[str, Any]]:
        upstream = await connect(route(http_row(url)), secret=secret)
        try:
            assert upstream.pid is None and upstream.alive
            tools = await upstream.list_tools()
            result = await upstream.call_tool("list_directory", {"path": "/"}, timeout=30)
            assert result["isError"] is False
            return tools
        finally:
            await upstream.aclose()

    with http_upstream() as url:
        assert sorted(t["name"] for t in asyncio.run(run(url, SECRET))) == NAMES  # positive control
        with pytest.raises(UpstreamError) as info:
            asyncio.run(run(url, "not-the-secret"))
        assert "not-the-secret" not in str(info.value)
        with pytest.raises(UpstreamError, match="needs its vault secret"):
            asyncio.run(run(url, None))


def test_MCP_13_http_rug_pull_shows_as_changed() -> None:
    async def listing(url: str) -> list[dict[str, Any]]:
        upstream = await connect(route(http_row(url)), secret=SECRET)
        try:
            return await upstream.list_tools()
        finally:
            await upstream.aclose()

    with http_upstream() as url:
        pinned = pin_tools("files", asyncio.run(listing(url)), now=0, by="test").tools
    with http_upstream(rug_pull=True) as url:
        assert drift(pinned, asyncio.run(listing(url))).changed == ("read_file",)


def test_http_upstream_nobody_listens_on() -> None:
    from tether.web.server import free_port

    async def run() -> None:
        await connect(route(http_row(f"http://127.0.0.1:{free_port()}/mcp", timeout=10)), secret=SECRET)

    with pytest.raises(UpstreamError, match="route `files`"):
        asyncio.run(run())


def test_handle_is_shared_across_tasks_and_a_hung_call_times_out(tmp_path: Path) -> None:
    """Connected in one task, called from several at once, closed from another; a call the server
    never answers (it blocks opening a FIFO) ends at its timeout and the hung process is still stopped."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    note = tmp_path / "note.txt"
    note.write_text("shared")

    async def run() -> tuple[list[str], int]:
        upstream = await asyncio.create_task(connect(route(stdio_row())))
        assert upstream.pid is not None
        await upstream.list_tools()
        results = await asyncio.gather(
            *(asyncio.create_task(upstream.call_tool("read_file", {"path": str(note)}, timeout=30)) for _ in range(5))
        )
        texts = [r["content"][0]["text"] for r in results]
        with pytest.raises(UpstreamError, match="did not answer tools/call in time"):
            await upstream.call_tool("read_file", {"path": str(fifo)}, timeout=0.5)
        await asyncio.create_task(upstream.aclose())
        assert not upstream.alive
        with pytest.raises(UpstreamError, match="not connected"):
            await upstream.list_tools()
        return texts, upstream.pid

    texts, pid = asyncio.run(run())
    assert texts == ["shared"] * 5
    assert _gone(pid)


def test_MCP_14_stdio_stderr_logged_redacted_never_passed_through(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """MCP-14: the server's stderr lines are logged under the route's name, a token in them redacted and
    a terminal escape shown escaped; nothing reaches this process's own stderr."""
    token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl"
    line = f"starting with {token} \x1b[2J done"

    async def run() -> None:
        upstream = await connect(route(stdio_row(env={"FILES_SERVER_STDERR": line})))
        await upstream.aclose()

    with caplog.at_level("INFO", logger="tether.mcp"):
        asyncio.run(run())
    logged = [r.getMessage() for r in caplog.records if "stderr:" in r.getMessage()]
    assert any(m == "MCP upstream files stderr: starting with [REDACTED] \\x1b[2J done" for m in logged), logged
    assert token not in "".join(logged)
    assert "starting with" not in capfd.readouterr().err


@pytest.mark.parametrize(
    ("injection", "guard"),
    [
        ({"inject": "query", "query_param": "key"}, {"query": "key"}),
        ({"inject": "basic", "username": "svc"},
         {"header": "Authorization", "value": "Basic " + base64.b64encode(f"svc:{SECRET}".encode()).decode()}),
        ({"header": "Authorization", "template": "Bearer {secret}"}, {"header": "Authorization",
                                                                      "value": f"Bearer {SECRET}"}),
    ],
)  # fmt: skip
def test_MCP_12_every_injection_mode_reaches_the_upstream(injection: dict[str, str], guard: dict[str, str]) -> None:
    """Query parameter, basic auth and a header template each reach a real upstream that demands them."""

    async def run(url: str, secret: str) -> int:
        row = {k: v for k, v in http_row(url).items() if k not in ("header", "template")} | injection
        upstream = await connect(route(row), secret=secret)
        try:
            return len(await upstream.list_tools())
        finally:
            await upstream.aclose()

    demand = {"value": SECRET} | guard
    with http_upstream(header=demand.get("header", ""), value=demand["value"], query=demand.get("query", "")) as url:
        assert asyncio.run(run(url, SECRET)) == 3
        with pytest.raises(UpstreamError):
            asyncio.run(run(url, "wrong-" + SECRET))


BIG = 5 * 1024 * 1024  # over message_limit(1024), the 4 MiB floor


def test_F1_stdio_oversized_result_refused_while_read_and_the_upstream_stopped(tmp_path: Path) -> None:
    """Review F1: an answer over the message limit is refused as it is read (never parsed whole), the
    upstream that sent it is killed, and the call fails with ResultTooLarge; below the limit an answer
    is read whole, even over the cap (the gateway measures that exactly), and a fresh upstream works."""
    big, medium, small = tmp_path / "big.log", tmp_path / "medium.log", tmp_path / "small.log"
    big.write_bytes(b"y" * BIG)
    medium.write_bytes(b"m" * 100_000)
    small.write_bytes(b"s")

    async def run() -> tuple[int, int]:
        upstream = await connect(route(stdio_row(max_result_bytes=1024)))
        try:
            pid = upstream.pid
            assert pid is not None
            read = await upstream.call_tool("read_file", {"path": str(medium)}, timeout=30)  # positive control
            assert read["content"][0]["text"] == "m" * 100_000
            with pytest.raises(ResultTooLarge, match="exceeds the route's cap of 1024 bytes") as refused:
                await upstream.call_tool("read_file", {"path": str(big)}, timeout=30)
            assert "the upstream was stopped" in refused.value.description
            assert not upstream.alive and _gone(pid)
            with pytest.raises(UpstreamError, match="not connected"):
                await upstream.call_tool("read_file", {"path": str(small)}, timeout=30)
        finally:
            await upstream.aclose()
        fresh = await connect(route(stdio_row(max_result_bytes=1024)))
        try:
            again = await fresh.call_tool("read_file", {"path": str(small)}, timeout=30)
            assert again["content"][0]["text"] == "s"
            assert fresh.pid is not None
            return pid, fresh.pid
        finally:
            await fresh.aclose()

    pid, second = asyncio.run(run())
    assert pid != second and _gone(second)


def test_F1_http_oversized_result_refused_while_read(tmp_path: Path) -> None:
    """Review F1 over streamable HTTP: the response is cut at the message limit and the call fails with
    ResultTooLarge; the connection is fine (nothing was mis-framed) and the next call succeeds."""
    big, small = tmp_path / "big.log", tmp_path / "small.log"
    big.write_bytes(b"y" * BIG)
    small.write_bytes(b"s")

    async def run(url: str) -> None:
        upstream = await connect(route(http_row(url, max_result_bytes=1024)), secret=SECRET)
        try:
            with pytest.raises(ResultTooLarge, match="exceeds the route's cap of 1024 bytes"):
                await upstream.call_tool("read_file", {"path": str(big)}, timeout=30)
            assert upstream.alive
            again = await upstream.call_tool("read_file", {"path": str(small)}, timeout=30)  # positive control
            assert again["content"][0]["text"] == "s"
        finally:
            await upstream.aclose()

    with http_upstream() as url:
        asyncio.run(run(url))
