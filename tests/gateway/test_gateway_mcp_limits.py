"""The MCP gateway bounds an upstream's answers while reading them (review finding F1), end to end.

A real STS, the gateway on loopback, the files server of tests/mcp as upstream:

``capped``     over stdio, results capped at 4096 bytes
``webcapped``  over streamable HTTP (a vaulted API key), results capped at 4096 bytes

The proof of F1 read a 20 MB file through a 4 KiB route: the gateway read, parsed and measured
all of it (quadratically) before refusing it. Here the same call is refused by the transport at
the message limit, the stdio upstream that sent it is stopped, and the next ordinary call works.
No wall-clock assertion: that the refusal came, and the gateway serves on, is what is checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gw_mcpkit import STDIO, McpEnv, RpcError, files_server, mcp_route_toml, pid_alive, pin_routes
from gwkit import gateway_toml, put_secret_sync, serve_gateway, wait_until

from helpers import QUIET_MONITOR, running_sts
from tether.mcp.lines import message_limit
from tether.web.server import ServerThread, free_port

API_KEY = "mcp-limits-key-0123456789"
OFF = {"scope_prefix": ""}
CAP = 4096
HUGE = 20_000_000  # the proof's size: five times the message limit of a 4 KiB route


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpEnv]:
    port, web_port = free_port(), free_port()
    settings = gateway_toml(port, suspend_after_refusals=1000, suspend_on_cap=False)
    thread = ServerThread(files_server().http_app(header="X-Api-Key", value=API_KEY), web_port).start()
    routes = mcp_route_toml("capped", command=STDIO, tools=["*"], max_result_bytes=CAP, **OFF) + mcp_route_toml(
        "webcapped", url=f"http://127.0.0.1:{web_port}/mcp", tools=["*"], secret="web-key", header="X-Api-Key",
        template="{secret}", max_result_bytes=CAP, **OFF)  # fmt: skip
    try:
        with running_sts(tmp_path_factory.mktemp("mcp"), extra_toml=settings + routes + QUIET_MONITOR) as sts:
            config = sts.config
            put_secret_sync(config, "web-key", API_KEY)
            pin_routes(config, "capped", env={})
            pin_routes(config, "webcapped", secret=API_KEY)
            with serve_gateway(config, sts) as gateway:
                mcp = McpEnv(sts=sts, config=config, gateway=gateway)
                try:
                    yield mcp
                finally:
                    mcp.close()
    finally:
        thread.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("files")
    (directory / "huge.log").write_bytes(b"y" * HUGE)
    (directory / "over.log").write_bytes(b"o" * (CAP * 2))  # over the cap, under the message limit
    (directory / "small.log").write_bytes(b"hello")
    return directory


def test_F1_huge_stdio_result_refused_while_read_upstream_stopped_gateway_serves_on(env: McpEnv, files: Path) -> None:
    assert message_limit(CAP) < HUGE
    agent = env.agent("capped")
    agent.call("capped", "list_directory", {"path": str(files)})  # the upstream is started
    [session] = env.sessions("capped", agent.task["id"])
    pid = session.upstream.pid
    assert pid is not None and pid_alive(pid)
    with pytest.raises(RpcError) as refused:
        agent.call("capped", "read_file", {"path": str(files / "huge.log")})
    assert f"exceeds the route's cap of {CAP} bytes" in refused.value.message
    assert refused.value.data == {"error": "result_too_large", "tool": "read_file"}
    wait_until(lambda: not pid_alive(pid), timeout=15, what="the upstream that sent it to be gone")
    assert [s.upstream.pid for s in env.sessions("capped", agent.task["id"])] in ([], [None])
    # positive controls on the same task: the next ordinary call gets a fresh upstream and its answer
    assert agent.call("capped", "read_file", {"path": str(files / "small.log")})["content"][0]["text"] == "hello"
    [fresh] = env.sessions("capped", agent.task["id"])
    assert fresh.upstream.pid not in (None, pid)
    results = [r.detail for r in env.audit("mcp.result", task=agent.task["id"])]
    assert [r["result"] for r in results] == ["ok", "error", "ok"]


def test_F1_result_over_the_cap_under_the_limit_is_still_refused_exactly(env: McpEnv, files: Path) -> None:
    """Below the message limit the transport reads the answer; the gateway's exact cap refuses it, and the
    upstream is not stopped for it (it did nothing wrong)."""
    agent = env.agent("capped")
    with pytest.raises(RpcError) as refused:
        agent.call("capped", "read_file", {"path": str(files / "over.log")})
    assert f"exceeds the route's cap of {CAP} bytes" in refused.value.message
    assert refused.value.data.get("error") == "result_too_large"
    [session] = env.sessions("capped", agent.task["id"])
    assert session.upstream.alive
    assert agent.call("capped", "read_file", {"path": str(files / "small.log")})["content"][0]["text"] == "hello"
    [same] = env.sessions("capped", agent.task["id"])
    assert same.upstream.pid == session.upstream.pid


def test_F1_huge_http_result_refused_while_read(env: McpEnv, files: Path) -> None:
    agent = env.agent("webcapped")
    with pytest.raises(RpcError) as refused:
        agent.call("webcapped", "read_file", {"path": str(files / "huge.log")})
    assert f"exceeds the route's cap of {CAP} bytes" in refused.value.message
    assert refused.value.data.get("error") == "result_too_large"
    assert agent.call("webcapped", "read_file", {"path": str(files / "small.log")})["content"][0]["text"] == "hello"
