"""The MCP gateway end to end: a real STS, the gateway on loopback, real MCP servers, real agents.

The upstream is the tiny files server of tests/mcp (``read_file``, ``list_directory``,
``write_file``), over stdio unless said otherwise; pins are written before the gateway starts.

``files``     read_file and list_directory allowlisted (write_file is offered but not allowed)
``tiny``      3 tool calls per task
``unpinned``  never pinned
``drifty``    pinned from the server as reviewed; it now runs rug-pulled (read_file changed)
``scoped``    the ``tool:<name>`` scope convention on (the others turn it off with ``scope_prefix = ""``)
``small``     64 bytes of arguments at most
``expired``   expired in 2001
``solo``      one upstream session at a time
``idle``      upstream sessions stopped after 1 s unused
``web``       the same server over streamable HTTP, demanding a vaulted API key

A Cedar policy limits ``read_file`` to paths under a ``shared`` directory on every route.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gw_mcpkit import MODERN, STDIO, McpEnv, RpcError, files_server, mcp_route_toml, pid_alive, pin_routes
from gwkit import gateway_toml, put_secret_sync, serve_gateway, task_state, variant_config, wait_until

from helpers import AGENT, QUIET_MONITOR, create_task, running_sts
from tether.web.server import ServerThread, free_port

ALLOWED = ["list_directory", "read_file"]
OFF = {"scope_prefix": ""}
API_KEY = "mcp-up/stream+key=0123456789"
RUG_PULL = {"FILES_SERVER_RUG_PULL": "1"}
#: the headers of every request the HTTP upstream received
SEEN: list[dict[str, str]] = []

CEDAR = """
@id("mcp-read-shared-only")
forbid (principal, action == Tether::Action::"call", resource)
when { context.tool == "read_file" && context.arguments_digest != "" &&
       !(context.arguments.hasTag("path") && context.arguments.getTag("path") like "*/shared/*") };
"""


def routes(web: str) -> str:
    return "".join([
        mcp_route_toml("files", command=STDIO, tools=ALLOWED, **OFF),
        mcp_route_toml("tiny", command=STDIO, tools=["*"], max_calls_per_task=3, **OFF),
        mcp_route_toml("unpinned", command=STDIO, tools=["*"], **OFF),
        mcp_route_toml("drifty", command=STDIO, tools=["*"], env=RUG_PULL, **OFF),
        mcp_route_toml("scoped", command=STDIO, tools=["*"]),
        mcp_route_toml("small", command=STDIO, tools=["*"], max_argument_bytes=64, **OFF),
        mcp_route_toml("expired", command=STDIO, tools=["*"], expires="2001-01-01", **OFF),
        mcp_route_toml("solo", command=STDIO, tools=["*"], max_sessions=1, **OFF),
        mcp_route_toml("idle", command=STDIO, tools=["*"], session_idle_seconds=1, **OFF),
        mcp_route_toml("repinned", command=STDIO, tools=["*"], **OFF),
        mcp_route_toml("web", url=web, tools=["*"], secret="web-key", header="X-Api-Key", template="{secret}",
                       max_result_bytes=2048, **OFF),
    ])  # fmt: skip


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory the policy allows reading, with a file holding the HTTP upstream's key."""
    directory = tmp_path_factory.mktemp("data") / "shared"
    directory.mkdir()
    (directory / "a.txt").write_text("hello from a", encoding="utf-8")
    (directory / "leak.txt").write_text(f"debug: key={API_KEY} done", encoding="utf-8")
    (directory / "big.txt").write_text("b" * 5000, encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpEnv]:
    port, web_port = free_port(), free_port()
    settings = gateway_toml(port, suspend_after_refusals=1000, suspend_on_cap=False)
    app = files_server().http_app(header="X-Api-Key", value=API_KEY)

    async def web_app(scope: Any, receive: Any, send: Any) -> None:  # records what reached the upstream
        if scope["type"] == "http":
            SEEN.append({k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]})
        await app(scope, receive, send)

    web = f"http://127.0.0.1:{web_port}/mcp"
    thread = ServerThread(web_app, web_port).start()
    try:
        extra = settings + routes(web) + "[monitor]\ninterval = 1\n" + QUIET_MONITOR
        with running_sts(tmp_path_factory.mktemp("mcp"), extra_toml=extra) as sts:
            config = sts.config
            (config.policy_dir / "90-mcp-test.cedar").write_text(CEDAR, encoding="utf-8")
            put_secret_sync(config, "web-key", API_KEY)
            # drifty was reviewed before its server changed (it now runs rug-pulled)
            pin_routes(config, "files", "tiny", "scoped", "small", "expired", "solo", "idle", "drifty", "repinned", env={})
            pin_routes(config, "web", secret=API_KEY)
            with serve_gateway(config, sts) as gateway:
                mcp = McpEnv(sts=sts, config=config, gateway=gateway)
                try:
                    yield mcp
                finally:
                    mcp.close()
    finally:
        thread.stop()


def text(result: dict[str, object]) -> str:
    content = result["content"]
    assert isinstance(content, list)
    return str(content[0]["text"])


def refusal(excinfo: pytest.ExceptionInfo[RpcError]) -> tuple[object, object, object]:
    data = excinfo.value.data
    return excinfo.value.code, data.get("error"), data.get("tool")


def test_a_stdio_route_lists_and_calls_its_tools(env: McpEnv, shared: Path) -> None:
    agent = env.agent("files")
    assert agent.tools("files") == ALLOWED  # write_file is upstream but not allowlisted
    assert text(agent.call("files", "read_file", {"path": str(shared / "a.txt")})) == "hello from a"
    calls = env.audit("mcp.call", task=agent.task["id"])
    assert calls[-1].detail["tool"] == "read_file" and calls[-1].detail["argument_shape"] == ["path:string"]
    assert calls[-1].detail["arguments_digest"] and str(shared) not in str(calls[-1].detail)  # never argument values
    results = env.audit("mcp.result", task=agent.task["id"])
    assert results[-1].detail["call"] == calls[-1].seq and results[-1].detail["result"] == "ok"


def test_mcp14_task_completion_ends_access_and_stops_the_upstream(env: McpEnv, shared: Path) -> None:
    agent = env.agent("files")
    agent.call("files", "list_directory", {"path": str(shared)})
    token = agent.token("files")
    [session] = env.sessions("files", agent.task["id"])
    pid = session.upstream.pid
    assert pid is not None and pid_alive(pid)
    agent.complete()
    wait_until(lambda: not pid_alive(pid), timeout=15, what="the upstream process to stop")
    assert env.sessions("files", agent.task["id"]) == []
    response = agent.with_token("files", token, "tools/call", {"name": "list_directory", "arguments": {"path": "/"}})
    assert response.status_code == 401 and response.json()["error"] == "invalid_token"
    assert 'resource_metadata="' in response.headers["www-authenticate"]


def test_a_tool_outside_the_allowlist_is_refused_and_never_called(env: McpEnv, shared: Path) -> None:
    agent = env.agent("files")
    target = shared / "written.txt"
    with pytest.raises(RpcError) as refused:
        agent.call("files", "write_file", {"path": str(target), "content": "x"})
    assert refusal(refused) == (-32003, "access_denied", "write_file")
    assert "allowlist" in refused.value.message and not target.exists()
    assert not [r for r in env.audit("mcp.call", task=agent.task["id"]) if r.detail["tool"] == "write_file"]
    record = env.audit("mcp.refused", task=agent.task["id"])[-1]
    assert record.error == "access_denied" and record.detail["tool"] == "write_file" and record.detail["not_allowlisted"]
    assert "a.txt" in text(agent.call("files", "list_directory", {"path": str(shared)}))  # positive control


def test_mcp13_an_unpinned_route_serves_nothing(env: McpEnv) -> None:
    agent = env.agent("unpinned", "files")
    for method, params in (("tools/list", {}), ("tools/call", {"name": "list_directory", "arguments": {"path": "/"}})):
        response = agent.request("unpinned", method, params)
        assert response.status_code == 503 and response.json()["error"] == "temporarily_unavailable"
        assert "no pinned tool catalogue" in response.json()["error_description"]
    assert env.sessions("unpinned", agent.task["id"]) == []  # no upstream was even started
    assert agent.tools("files") == ALLOWED  # positive control: a pinned route


def test_mcp13_a_tampered_pin_file_serves_nothing(env: McpEnv) -> None:
    from tether.mcp.pins import pins_path

    agent = env.agent("small")
    assert agent.request("small", "tools/list").status_code == 200
    path = pins_path(env.config, "small")
    original = path.read_bytes()
    try:
        path.write_bytes(original.replace(b'"list_directory"', b'"list_directorz"'))
        response = agent.request("small", "tools/list")
        assert response.status_code == 503 and "integrity" in response.json()["error_description"]
    finally:
        path.write_bytes(original)
    assert agent.request("small", "tools/list").status_code == 200


def test_mcp13_a_pin_file_written_back_from_before_a_re_pin_serves_nothing(env: McpEnv) -> None:
    """Review F7: a writer of the data directory puts back an older, validly MAC'd pin file; the audit
    log's newest approval of the route (``mcp.pinned``) is newer, so the route refuses until re-pinned."""
    import asyncio
    import time

    from tether.mcp.pins import PinnedCatalogue, load_pins, pins_path, record_pins
    from tether.store.open import open_store

    path = pins_path(env.config, "repinned")
    old = path.read_bytes()
    pinned = load_pins(env.config, "repinned")
    assert pinned is not None

    def approve() -> None:  # as `tether mcp pin` does: the file and its audited approval
        async def run() -> None:
            store = await open_store(env.config)
            try:
                catalogue = PinnedCatalogue("repinned", pinned.tools, pinned_at=time.time(), pinned_by="operator:test")
                await record_pins(env.config, store, catalogue)
            finally:
                await store.aclose()

        asyncio.run(run())

    approve()
    agent = env.agent("repinned")
    assert agent.request("repinned", "tools/list").status_code == 200
    path.write_bytes(old)  # the rollback: bytes that verify, from before the audited re-pin
    response = agent.request("repinned", "tools/list")
    assert response.status_code == 503 and "integrity" in response.json()["error_description"]
    approve()  # positive control: an operator re-pins
    assert agent.request("repinned", "tools/list").status_code == 200


def test_mcp13_a_drifted_tool_is_refused_and_alerted_while_the_others_work(env: McpEnv, shared: Path) -> None:
    agent = env.agent("drifty")
    assert agent.tools("drifty") == ["list_directory", "write_file"]  # read_file differs from its pin: not offered
    with pytest.raises(RpcError) as refused:
        agent.call("drifty", "read_file", {"path": str(shared / "a.txt")})
    assert refusal(refused) == (-32003, "access_denied", "read_file")
    assert "re-pinned" in refused.value.message
    assert "a.txt" in text(agent.call("drifty", "list_directory", {"path": str(shared)}))
    drift = [r for r in env.audit("mcp.drift") if r.detail["route"] == "drifty"]
    assert len(drift) == 1 and drift[0].outcome == "alert" and drift[0].detail["tool"] == "read_file"

    def alerts() -> list[Any]:  # raised by the monitor from the mcp.drift record (`tether alerts` shows them)
        return [r for r in env.audit("alert.raised") if r.detail["detector"] == "mcp_drift"]

    wait_until(lambda: bool(alerts()), timeout=15, what="the monitor's mcp_drift alert")
    assert alerts()[0].detail["evidence"]["tool"] == "read_file" and alerts()[0].detail["severity"] == "high"
    with pytest.raises(RpcError):  # still refused, not alerted twice
        agent.call("drifty", "read_file", {"path": str(shared / "a.txt")})
    assert len([r for r in env.audit("mcp.drift") if r.detail["route"] == "drifty"]) == 1
    assert env.audit("mcp.refused", task=agent.task["id"])[-1].detail["drift"] is True


def test_mcp02_a_token_for_another_route_is_refused(env: McpEnv) -> None:
    agent = env.agent("files", "tiny")
    response = agent.with_token("files", agent.token("tiny"))  # a token for /mcp/tiny, presented at /mcp/files
    assert response.status_code == 401 and response.json()["error"] == "invalid_token"
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("DPoP ")
    assert f'resource_metadata="{env.url}/.well-known/oauth-protected-resource/mcp/files"' in challenge
    assert agent.with_token("files", agent.token("files")).status_code == 200  # positive control


def test_mcp09_the_route_metadata_names_the_route_url(env: McpEnv) -> None:
    body = httpx.get(f"{env.url}/.well-known/oauth-protected-resource/mcp/files").json()
    assert body["resource"] == env.aud("files") and body["authorization_servers"] == [env.sts.url]
    assert httpx.get(f"{env.url}/.well-known/oauth-protected-resource/mcp/nope").status_code == 404


def test_mcp09_no_token_is_a_bare_challenge_naming_the_metadata(env: McpEnv) -> None:
    response = httpx.post(env.aud("files"), json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert response.status_code == 401 and "resource_metadata=" in response.headers["www-authenticate"]


def test_the_per_task_cap(env: McpEnv, shared: Path) -> None:
    agent = env.agent("tiny")
    for _ in range(3):
        agent.call("tiny", "list_directory", {"path": str(shared)})
    with pytest.raises(RpcError) as refused:
        agent.call("tiny", "list_directory", {"path": str(shared)})
    assert refusal(refused) == (-32003, "too_many_requests", "list_directory")
    assert env.audit("mcp.refused", task=agent.task["id"])[-1].detail["cap_hit"] is True
    other = env.agent("tiny")  # the cap is per task: another task still calls
    assert "a.txt" in text(other.call("tiny", "list_directory", {"path": str(shared)}))


def test_mcp15_oversize_arguments_are_refused_before_the_upstream(env: McpEnv, shared: Path) -> None:
    agent = env.agent("small")
    with pytest.raises(RpcError) as refused:
        agent.call("small", "list_directory", {"path": "/" + "x" * 100})
    assert refused.value.code == -32602 and refused.value.data["error"] == "invalid_request"
    assert "64 bytes" in refused.value.message
    assert not env.audit("mcp.call", task=agent.task["id"])  # never reached the upstream
    assert text(agent.call("small", "list_directory", {"path": "/"}))  # positive control


def test_cedar_sees_the_arguments(env: McpEnv, shared: Path) -> None:
    agent = env.agent("files")
    outside = shared.parent / "secret.txt"
    outside.write_text("not for agents", encoding="utf-8")
    with pytest.raises(RpcError) as refused:
        agent.call("files", "read_file", {"path": str(outside)})
    assert refusal(refused) == (-32003, "access_denied", "read_file")
    record = env.audit("mcp.refused", task=agent.task["id"])[-1]
    assert "mcp-read-shared-only" in record.detail["reason"] and record.detail["arguments_digest"]
    assert "secret.txt" not in str(record.detail)
    assert text(agent.call("files", "read_file", {"path": str(shared / "a.txt")})) == "hello from a"


def test_the_scope_convention(env: McpEnv, shared: Path) -> None:
    agent = env.agent("scoped", scopes=["tool:list_directory"])
    assert agent.tools("scoped") == ["list_directory"]
    with pytest.raises(RpcError) as refused:
        agent.call("scoped", "read_file", {"path": str(shared / "a.txt")})
    assert refusal(refused) == (-32003, "insufficient_scope", "read_file")
    assert refused.value.data["scope"] == "tool:read_file"
    assert "a.txt" in text(agent.call("scoped", "list_directory", {"path": str(shared)}))


def test_an_expired_route_refuses_everything(env: McpEnv) -> None:
    agent = env.agent("expired", "files")
    response = agent.request("expired", "tools/list")
    assert response.status_code == 403 and response.json()["error"] == "access_denied"
    assert "expired" in response.json()["error_description"]
    assert agent.request("files", "tools/list").status_code == 200


def test_upstream_sessions_are_capped_per_route(env: McpEnv) -> None:
    first, second = env.agent("solo"), env.agent("solo")
    assert first.tools("solo")
    with pytest.raises(RpcError) as refused:
        second.tools("solo")
    assert refused.value.data["error"] == "too_many_requests" and "maximum of 1" in refused.value.message
    assert first.tools("solo")  # the running session is not disturbed
    first.complete()
    wait_until(lambda: not env.sessions("solo", first.task["id"]), timeout=15, what="the first session to end")
    assert second.tools("solo")  # room again


def test_the_session_protocol_is_bound_to_its_agent_session(env: McpEnv, shared: Path) -> None:
    agent = env.agent("files")
    assert agent.initialize("files").status_code == 200
    assert agent.tools("files") == ALLOWED
    assert text(agent.call("files", "read_file", {"path": str(shared / "a.txt")})) == "hello from a"
    other = env.agent("files")  # another task (and key) presenting the first one's session id
    other.mcp_session["files"] = agent.mcp_session["files"]
    assert other.request("files", "tools/list").status_code == 404
    del other.mcp_session["files"]
    assert other.tools("files") == ALLOWED  # positive control


def test_mcp03_mcp12_an_http_upstream_gets_the_vaulted_key_not_the_token_and_its_echo_is_scrubbed(
    env: McpEnv, shared: Path
) -> None:
    agent = env.agent("web")
    assert sorted(agent.tools("web")) == ["list_directory", "read_file", "write_file"]
    result = agent.call("web", "read_file", {"path": str(shared / "leak.txt")})
    assert text(result) == "debug: key=[REDACTED] done"
    assert API_KEY not in str(result)
    assert env.audit("mcp.result", task=agent.task["id"])[-1].detail["scrubbed"] >= 1
    # the agent's token never went upstream (MCP authorization, "token passthrough"): only the vaulted key did
    assert SEEN and all(h.get("x-api-key") == API_KEY for h in SEEN)
    assert not [h for h in SEEN if "dpop" in h or "authorization" in h]
    assert text(agent.call("web", "read_file", {"path": str(shared / "a.txt")})) == "hello from a"  # control


def test_an_oversize_result_is_refused_whole(env: McpEnv, shared: Path) -> None:
    agent = env.agent("web")
    with pytest.raises(RpcError) as refused:
        agent.call("web", "read_file", {"path": str(shared / "big.txt")})
    assert refusal(refused) == (-32003, "result_too_large", "read_file")
    assert "2048" in refused.value.message
    assert env.audit("mcp.result", task=agent.task["id"])[-1].detail["result"] == "error"
    assert text(agent.call("web", "read_file", {"path": str(shared / "a.txt")})) == "hello from a"  # control


def test_metrics_count_tool_calls_without_principals(env: McpEnv, shared: Path) -> None:
    agent = env.agent("files")
    agent.call("files", "list_directory", {"path": str(shared)})
    body = httpx.get(env.url + "/metrics").text
    assert 'tether_mcp_calls_total{outcome="ok",route="files",tool="list_directory"}' in body
    assert agent.task["id"] not in body and "spiffe://" not in body


def test_mcp14_an_idle_upstream_is_stopped_and_restarted_on_next_use(env: McpEnv, shared: Path) -> None:
    agent = env.agent("idle")
    assert "a.txt" in text(agent.call("idle", "list_directory", {"path": str(shared)}))
    [session] = env.sessions("idle", agent.task["id"])
    pid = session.upstream.pid
    wait_until(lambda: not pid_alive(pid), timeout=15, what="the idle upstream to stop")
    assert env.sessions("idle", agent.task["id"]) == []
    assert "a.txt" in text(agent.call("idle", "list_directory", {"path": str(shared)}))  # a fresh one
    [again] = env.sessions("idle", agent.task["id"])
    assert again.upstream.pid != pid


def test_suspensions_and_shutdown(env: McpEnv, shared: Path) -> None:
    """A gateway with ``suspend_on_cap`` on and bursts of 3 refusals suspending, on the same STS and store (the
    main one has both off): a cap hit suspends its task and stops its upstream; refusals that are not the
    agent's doing (a drifted tool) never add up to a burst, its own refusals do; shutdown stops every upstream."""
    port = free_port()
    config = variant_config(env.config, url=f"http://127.0.0.1:{port}", port=str(port), suspend_on_cap="true",
                            suspend_after_refusals="3", refusal_window="60")  # fmt: skip
    with serve_gateway(config, env.sts) as gateway:
        strict = McpEnv(sts=env.sts, config=config, gateway=gateway)
        try:
            agent, bystander = strict.agent("tiny"), strict.agent("files")
            for _ in range(3):
                agent.call("tiny", "list_directory", {"path": str(shared)})
            [capped] = strict.sessions("tiny", agent.task["id"])
            with pytest.raises(RpcError) as refused:
                agent.call("tiny", "list_directory", {"path": str(shared)})
            assert refusal(refused) == (-32003, "too_many_requests", "list_directory")
            wait_until(lambda: task_state(env.sts, agent.task["id"]) == "suspended", what="the task to be suspended")
            [suspended] = strict.audit("task.suspended", agent.task["id"])
            assert suspended.principal == "gateway:mcp:tiny" and suspended.detail["reason"] == "cap hit"
            wait_until(lambda: not pid_alive(capped.upstream.pid), timeout=15, what="the suspended task's upstream")
            assert "a.txt" in text(bystander.call("files", "list_directory", {"path": str(shared)}))  # control
            [running] = strict.sessions("files", bystander.task["id"])
            assert pid_alive(running.upstream.pid)
            drifter = strict.agent("drifty", "files")
            for _ in range(4):  # the upstream's doing: refused, never a burst of the task's
                with pytest.raises(RpcError):
                    drifter.call("drifty", "read_file", {"path": str(shared / "a.txt")})
            assert task_state(env.sts, drifter.task["id"]) == "active"
            for _ in range(3):  # its own: a tool outside the allowlist, three times
                with pytest.raises(RpcError):
                    drifter.call("files", "write_file", {"path": str(shared / "nope.txt"), "content": "x"})
            wait_until(lambda: task_state(env.sts, drifter.task["id"]) == "suspended", what="the burst suspension")
        finally:
            strict.close()
    assert not pid_alive(running.upstream.pid)  # stopped with the gateway


def test_mcp15_duplicate_json_members_are_refused_before_anything_runs(env: McpEnv, shared: Path) -> None:
    """The policy and the tool must see the same arguments: a repeated member name is ambiguous."""
    agent = env.agent("files")
    allowed, denied = json.dumps(str(shared / "a.txt")), json.dumps(str(shared.parent / "secret.txt"))
    meta = json.dumps({"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}})

    def call(arguments: str) -> bytes:  # the JSON text as sent: a dict could not repeat a member
        params = f'{{"name": "read_file", "arguments": {arguments}, "_meta": {meta}}}'
        return f'{{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {params}}}'.encode()

    headers = {"MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "read_file"}
    response = agent.post_raw("files", call(f'{{"path": {allowed}, "path": {denied}}}'), headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == -32602 and "duplicate member `path`" in error["message"]
    assert not env.audit("mcp.call", task=agent.task["id"])  # nothing was judged, nothing ran
    assert env.audit("mcp.refused", task=agent.task["id"])[-1].detail["tool"] == "read_file"
    control = agent.post_raw("files", call(f'{{"path": {allowed}}}'), headers)
    assert control.json()["result"]["content"][0]["text"] == "hello from a"


def test_mcp11_routing_headers_must_match_the_body(env: McpEnv, shared: Path) -> None:
    agent = env.agent("files")
    response = agent.request("files", "tools/call", {"name": "read_file", "arguments": {"path": str(shared / "a.txt")}},
                             headers={"Mcp-Name": "list_directory"})  # fmt: skip
    assert response.status_code == 400 and "error" in response.json()
    assert not env.audit("mcp.call", task=agent.task["id"])
    assert agent.call("files", "read_file", {"path": str(shared / "a.txt")})  # positive control


def test_mcp10_a_session_id_is_never_authentication(env: McpEnv) -> None:
    agent = env.agent("files", "tiny")
    assert agent.initialize("files").status_code == 200
    session = agent.mcp_session["files"]
    body = {"jsonrpc": "2.0", "id": 9, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18",
               "Mcp-Session-Id": session}  # fmt: skip
    bare = agent.plain.post(env.aud("files"), json=body, headers=headers)
    assert bare.status_code == 401 and "resource_metadata=" in bare.headers["www-authenticate"]
    other_route = agent.plain.post(env.aud("files"), json=body, headers={**headers, **agent.bearer("tiny", "files")})
    assert other_route.status_code == 401  # a token for another route, on this session: refused all the same
    assert agent.tools("files") == ALLOWED  # positive control: the session with the agent's own token


# -- independent clients: the official Python SDK with tether's auth, and the TypeScript SDK -----
def test_mcp_sdk_client_through_the_gateway(env: McpEnv, shared: Path) -> None:
    """The Python MCP SDK's client with ``session.mcp_auth()``: the audience is discovered from the
    route's 401 (RFC 9728 ``resource_metadata``), the route's tools are listed and called, and a
    tool outside the allowlist is the SDK's ``MCPError`` with tether's code."""
    import anyio
    import httpx2
    from mcp import Client, MCPError
    from mcp.client.streamable_http import streamable_http_client

    from tether.agent import Agent

    task = create_task(env.sts, audiences=[env.aud("files")], scopes=["wiki:read"])
    session = Agent(env.sts.url, env.sts.identity(AGENT)).session(task["id"])

    async def run() -> tuple[list[str], str, BaseException]:
        async with (
            httpx2.AsyncClient(auth=session.mcp_auth(), trust_env=False, timeout=20.0) as http,
            Client(streamable_http_client(env.aud("files"), http_client=http)) as client,
        ):
            listed = sorted(t.name for t in (await client.list_tools()).tools)
            read = await client.call_tool("read_file", {"path": str(shared / "a.txt")})
            try:
                await client.call_tool("write_file", {"path": str(shared / "x"), "content": "x"})
            except MCPError as exc:
                return listed, str(read.content[0].text), exc  # type: ignore[union-attr]
        raise AssertionError("write_file was answered")

    listed, read, refused = anyio.run(run)
    assert listed == ALLOWED and read == "hello from a"
    assert isinstance(refused, MCPError) and refused.code == -32003
    assert refused.data == {"error": "access_denied", "tool": "write_file"}
    assert not (shared / "x").exists()
    session.complete()


def test_mcp_typescript_sdk_client_with_webcrypto_dpop_through_the_gateway(env: McpEnv, shared: Path) -> None:
    """Interop: the TypeScript MCP SDK (npm ``@modelcontextprotocol/sdk``), its ``fetch`` adding the
    hop token and a DPoP proof signed with WebCrypto; the session and hop exchanges are its own
    too. No tether code runs on the client side."""
    from npmkit import run_node

    task = create_task(env.sts, audiences=[env.aud("files")], scopes=["wiki:read"])
    calls = [
        {"name": "read_file", "arguments": {"path": str(shared / "a.txt")}},
        {"name": "write_file", "arguments": {"path": str(shared / "ts"), "content": "x"}},
        {"name": "read_file", "arguments": {"path": "/etc/hostname"}},  # the Cedar policy: under */shared/ only
    ]
    payload = {"sts": env.sts.url, "task": task["id"], "svid": env.sts.svid(AGENT, audience=env.sts.url),
               "url": env.aud("files"), "calls": calls}  # fmt: skip
    out = run_node("mcp_client.mjs", payload)
    assert out["audience"] == env.aud("files")
    assert out["tools"] == ALLOWED
    ok, outside, denied = out["results"]
    assert ok["ok"] and ok["content"][0]["text"] == "hello from a"
    assert outside["error"]["code"] == -32003 and outside["error"]["data"] == {"error": "access_denied", "tool": "write_file"}
    assert denied["error"]["code"] == -32003 and denied["error"]["data"]["tool"] == "read_file"
    assert not (shared / "ts").exists()
    calls_seen = [r.detail["tool"] for r in env.audit("mcp.call", task=task["id"])]
    assert calls_seen == ["read_file"]  # the refused calls never reached the upstream
