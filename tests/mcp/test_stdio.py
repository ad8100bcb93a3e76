"""``tether.mcp.stdio``: the gateway's stdio transport on real subprocesses (no MCP server needed)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

from tether.mcp.stdio import StdioTransport

NOTE = '{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"hi"}}'


def drain(script: str, limit: int) -> tuple[list[Any], StdioTransport]:
    """Everything the transport hands the session from ``python -c script``, until the stream ends."""
    transport = StdioTransport([sys.executable, "-c", script], env={}, cwd=None, errlog=subprocess.DEVNULL,
                               limit=limit, label="t")  # fmt: skip

    async def run() -> list[Any]:
        async with transport as (read, _write):
            return [item async for item in read]

    return asyncio.run(asyncio.wait_for(run(), 30)), transport


def test_F1_a_line_without_end_is_refused_at_the_limit_and_the_upstream_killed() -> None:
    """An upstream writing one endless line (and then staying alive) is cut at the limit, killed, and the
    session's stream ends: nothing was buffered past the limit, nothing waits for the line's end."""
    items, transport = drain("import sys, time; sys.stdout.write('x' * 100_000); sys.stdout.flush(); time.sleep(60)",
                             limit=1024)  # fmt: skip
    assert items == [] and transport.failed and transport.overflows == 1
    assert transport.process is not None and transport.process.returncode == -9  # killed, not left to sleep


def test_messages_under_the_limit_are_delivered_even_the_last_without_newline() -> None:
    script = f"import sys; sys.stdout.write({NOTE!r} + '\\n\\nnot json\\n' + {NOTE!r})"  # no newline at the end
    items, transport = drain(script, limit=len(NOTE))  # exactly at the limit
    assert [item.message.method for item in items] == ["notifications/message"] * 2  # blank and bad lines dropped
    assert not transport.failed and transport.process is not None and transport.process.returncode == 0
