"""MCP gateway session lifecycle and quotas (review findings F3, F4, F5), end to end.

A real STS, the gateway on loopback, the tiny files server of tests/mcp over stdio.

``streams``  session GET streams; SDK sessions would idle out only after 300 s
``one``      one upstream slot (its SDK session cap is the floor, 64)
``solo2``    two upstream slots
``scopedx``  the ``tool:<name>`` scope convention on
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
from gw_mcpkit import LEGACY, STDIO, McpAgent, McpEnv, RpcError, mcp_route_toml, pin_routes
from gwkit import gateway_toml, serve_gateway, wait_until

from helpers import QUIET_MONITOR, running_sts
from tether.gateway.mcp_owners import SDK_SESSIONS_PER_TASK
from tether.gateway.mcp_sessions import per_task
from tether.web.server import free_port

OFF = {"scope_prefix": ""}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpEnv]:
    settings = gateway_toml(free_port(), suspend_after_refusals=1000, suspend_on_cap=False)
    routes = "".join([
        mcp_route_toml("streams", command=STDIO, tools=["*"], **OFF),
        mcp_route_toml("one", command=STDIO, tools=["*"], max_sessions=1, **OFF),
        mcp_route_toml("solo2", command=STDIO, tools=["*"], max_sessions=2, **OFF),
        mcp_route_toml("scopedx", command=STDIO, tools=["*"]),
    ])  # fmt: skip
    with running_sts(tmp_path_factory.mktemp("mcp"), extra_toml=settings + routes + QUIET_MONITOR) as sts:
        pin_routes(sts.config, "streams", "one", "solo2", "scopedx", env={})
        with serve_gateway(sts.config, sts) as gateway:
            mcp = McpEnv(sts=sts, config=sts.config, gateway=gateway)
            try:
                yield mcp
            finally:
                mcp.close()


class GetStream:
    """The session's GET SSE stream (MCP 2025-06-18 "Listening for Messages from the Server"), held open."""

    def __init__(self, env: McpEnv, agent: McpAgent, route: str) -> None:
        url = env.aud(route)
        token = agent.token(route)
        self.headers = {"Accept": "text/event-stream", "Mcp-Session-Id": agent.mcp_session[route],
                        "MCP-Protocol-Version": LEGACY, "Authorization": f"DPoP {token}",
                        "DPoP": agent.agent.key.proof("GET", url, access_token=token)}  # fmt: skip
        self.url = url
        self.status: list[int] = []
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._hold, daemon=True)
        self.thread.start()
        wait_until(lambda: bool(self.status), timeout=15, what="the GET stream to open")

    def _hold(self) -> None:
        try:
            with (
                httpx.Client(trust_env=False, timeout=httpx.Timeout(20.0, read=None)) as client,
                client.stream("GET", self.url, headers=self.headers) as r,
            ):
                self.status.append(r.status_code)
                for _ in r.iter_bytes():
                    pass
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()


def sdk_sessions(env: McpEnv, route: str) -> set[str]:
    assert env.gateway.mcp is not None
    return set(env.gateway.mcp.endpoints[route].manager._server_instances)


def test_mcp14_a_get_stream_ends_with_its_task_and_its_sdk_session_is_terminated(env: McpEnv) -> None:
    """F3: the stream is cut mid-way when the task ends, and the sweeper terminates the task's SDK
    sessions (they would otherwise hold a slot for the whole idle timeout)."""
    ending, staying = env.agent("streams"), env.agent("streams")
    for agent in (ending, staying):
        assert agent.initialize("streams").status_code == 200
    streams = [GetStream(env, ending, "streams"), GetStream(env, staying, "streams")]
    assert [s.status for s in streams] == [[200], [200]]
    gone, token = ending.mcp_session["streams"], ending.token("streams")
    ending.complete()
    wait_until(streams[0].ended.is_set, timeout=15, what="the ended task's GET stream to be cut")
    wait_until(lambda: gone not in sdk_sessions(env, "streams"), timeout=15, what="its SDK session to be terminated")
    # positive control: the other task's stream and session are untouched
    assert not streams[1].ended.is_set()
    assert staying.mcp_session["streams"] in sdk_sessions(env, "streams")
    assert staying.tools("streams")
    assert ending.with_token("streams", token).status_code == 401  # and its token is refused
    staying.complete()
    wait_until(streams[1].ended.is_set, timeout=15, what="the second stream to be cut")
    wait_until(lambda: not env.sessions("streams", staying.task["id"]), timeout=15, what="its upstream to stop")


def test_one_task_is_held_to_its_sdk_session_quota_and_others_still_get_in(env: McpEnv) -> None:
    """F4: one task opening SDK sessions stops at its quota (429 ``too_many_requests``, a JSON-RPC
    error) instead of taking the route's whole SDK cap; another task still opens one."""
    attacker = env.agent("one")
    for _ in range(SDK_SESSIONS_PER_TASK):
        assert attacker.initialize("one").status_code == 200
        attacker.mcp_session.pop("one")
    refused = attacker.initialize("one")
    assert refused.status_code == 429 and refused.headers["retry-after"] == "5"
    assert refused.json()["error"]["data"] == {"error": "too_many_requests"}
    victim = env.agent("one")
    assert victim.initialize("one").status_code == 200  # positive control: other tasks are unaffected
    # single-exchange (2026-07-28) requests open no session: the quota does not apply to them
    assert attacker.tools("one")
    attacker.complete()  # its sessions are terminated with the task
    owners = env.gateway.mcp.endpoints["one"].owners  # type: ignore[union-attr]
    wait_until(lambda: not owners.live(attacker.task["id"]), timeout=15, what="the attacker's sessions to end")
    wait_until(lambda: not env.sessions("one", attacker.task["id"]), timeout=15, what="its upstream to stop")
    victim.complete()


def test_one_task_many_keys_gets_at_most_its_share_of_stdio_slots(env: McpEnv) -> None:
    """F5: DPoP keys are free, so upstream processes are capped per task too: a second key of the
    same task is refused on a two-slot route, and another task gets the slot left."""
    first = env.agent("solo2")
    second = McpAgent(env, first.task, ["solo2"])  # same task, a new key
    env.closers.append(second.close)
    assert first.tools("solo2")
    with pytest.raises(RpcError) as excinfo:
        second.tools("solo2")
    assert excinfo.value.data.get("error") == "too_many_requests" and "this task" in excinfo.value.message
    assert len(env.sessions("solo2", first.task["id"])) == 1
    victim = env.agent("solo2")
    assert victim.tools("solo2")  # positive control: the other task gets the remaining slot
    first.complete()
    victim.complete()
    tasks = {first.task["id"], victim.task["id"]}
    wait_until(lambda: not any(env.sessions("solo2", t) for t in tasks), timeout=15, what="the upstreams to stop")


def test_stdio_sessions_per_task_never_exceed_half_a_route(env: McpEnv) -> None:
    route = env.route("solo2")
    assert [per_task(replace(route, max_sessions=n)) for n in (1, 2, 3, 4, 32)] == [1, 1, 1, 2, 2]


def test_tools_list_starts_no_upstream_for_a_caller_granted_no_tool(env: McpEnv) -> None:
    """F5: visibility is decided from the allowlist, the pins and the scope convention before an
    upstream is started: a caller who may call nothing costs no process."""
    nothing = env.agent("scopedx")  # scopes: wiki:read only
    assert nothing.tools("scopedx") == []
    assert env.sessions("scopedx", nothing.task["id"]) == []
    reader = env.agent("scopedx", scopes=("tool:read_file",))
    assert reader.tools("scopedx") == ["read_file"]  # positive control: a granted caller gets its upstream
    assert len(env.sessions("scopedx", reader.task["id"])) == 1
    reader.complete()
    wait_until(lambda: not env.sessions("scopedx", reader.task["id"]), timeout=15, what="its upstream to stop")
