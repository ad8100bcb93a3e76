"""``credential = "hop"``: the MCP gateway mints a tether token for a tether-protected upstream.

A real STS; a real ``MCPServer`` behind ``tether.mcp.protect`` on loopback (``notes``, registered
as a ``[[resources]]`` entry so it may follow the revocation feed) with its own Cedar policy
(``read_file`` only under ``/shared/``) and the ``tool:<name>`` scope convention; the gateway
with a hop route to it, its workload identity a JWT-SVID file (``[gateway] identity_file``),
registered for the route's URL; agents calling tools through the gateway over real HTTP.
The upstream records every ``Authorization`` it receives, so the tests can show it only ever
saw tokens the gateway minted: ``act`` names the gateway, ``aud`` is the upstream, ``cnf.jkt``
is the gateway's key, never the agent's (MCP authorization spec, "Token Passthrough").
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from gw_mcpkit import McpAgent, McpEnv, RpcError, mcp_route_toml
from gwkit import gateway_toml, serve_gateway, wait_until
from mcp.server.mcpserver import MCPServer

import tether.features  # noqa: F401 - registers the feature tables
from helpers import AGENT, QUIET_MONITOR, SVC_RS, create_task, running_sts
from tether.agent import Agent, DevIdentity
from tether.config import Config, parse_config
from tether.errors import ConfigError
from tether.gateway.app import build_gateway
from tether.gateway.mcp_hop import gateway_identity
from tether.mcp import protect
from tether.mcp.pins import pin_tools, save_pins
from tether.mcp.upstream import UpstreamError, connect
from tether.provision import install_starter_policies
from tether.resource import ResourceSettings, Verifier
from tether.rules.jws import b64url_decode, strict_json_loads
from tether.web.server import ServerThread, free_port

GATEWAY_ID = "spiffe://tether.local/tether-gateway"
SCOPES = ["tool:echo", "tool:read_file"]
OFF = {"scope_prefix": ""}  # the gateway leaves tools to the upstream's own scope convention and Cedar

UPSTREAM_POLICY = """
@id("notes-read-shared-only")
forbid (principal, action == Tether::Action::"call", resource)
when { context.tool == "read_file" && context.arguments.hasTag("path") &&
       !(context.arguments.getTag("path") like "/shared/*") };
"""


@dataclass
class HopEnv:
    mcp: McpEnv
    upstream: str
    #: (tool, argument) for every tool the upstream ran
    ran: list[tuple[str, Any]]
    #: the Authorization header of every request the upstream received
    seen: list[str]

    def agent(self, *, audiences: list[str] | None = None, scopes: list[str] = SCOPES) -> McpAgent:
        listed = audiences if audiences is not None else [self.mcp.aud("notes"), self.upstream]
        task = create_task(self.mcp.sts, audiences=listed, scopes=scopes)
        agent = McpAgent(self.mcp, task, ["notes"])
        self.mcp.closers.append(agent.close)
        return agent


def notes_server(ran: list[tuple[str, Any]]) -> MCPServer:
    server = MCPServer("notes")

    @server.tool()
    def echo(text: str) -> str:
        ran.append(("echo", text))
        return text

    @server.tool()
    def read_file(path: str) -> str:
        ran.append(("read_file", path))
        return f"contents of {path}"

    @server.tool()
    def store(data: str) -> str:
        ran.append(("store", data))
        return "stored"

    return server


def claims(token: str) -> dict[str, Any]:
    """A JWT's payload, unverified (the upstream verified it; the test only reads it)."""
    value: dict[str, Any] = strict_json_loads(b64url_decode(token.split(".")[1]))
    return value


def pin_upstream(config: Config, env_sts: Any, upstream: str) -> None:
    """Pin the upstream as an operator reviewing it would: listed with a token of its own (a task
    granting every tool), through ``connect(..., auth=session.mcp_auth())``."""
    route = next(r for r in config.mcp_routes if r.name == "notes")
    task = create_task(env_sts, audiences=[upstream], scopes=[*SCOPES, "tool:store"])
    session = Agent(env_sts.url, DevIdentity(env_sts.dev(), AGENT)).session(task["id"])

    async def listed() -> list[dict[str, Any]]:
        made = await connect(route, auth=session.mcp_auth(audiences={upstream: upstream}, discover=False))
        try:
            return await made.list_tools()
        finally:
            await made.aclose()

    tools = asyncio.run(listed())
    assert sorted(t["name"] for t in tools) == ["echo", "read_file", "store"]
    save_pins(config, pin_tools("notes", tools, now=time.time(), by="test:operator"))


@pytest.fixture(scope="module")
def hop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HopEnv]:
    gw_port, up_port = free_port(), free_port()
    gateway_url, upstream = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{up_port}/mcp"
    base = tmp_path_factory.mktemp("hop")
    policies = base / "upstream-policies"
    install_starter_policies(policies)
    (policies / "50-notes.cedar").write_text(UPSTREAM_POLICY, encoding="utf-8")
    registered = (
        f'[[resources]]\nuri = "{gateway_url}/mcp/notes"\nprincipals = ["{GATEWAY_ID}"]\n'
        f'[[resources]]\nuri = "{upstream}"\nprincipals = ["{SVC_RS}"]\n'
    )
    settings = gateway_toml(gw_port, suspend_after_refusals=1000, suspend_on_cap=False, identity_file="gateway.jwt")
    route = mcp_route_toml("notes", url=upstream, tools=["*"], credential="hop", **OFF)
    extra = settings + route + registered + QUIET_MONITOR
    with running_sts(base / "sts", extra_toml=extra) as sts:
        config = sts.config
        # the gateway's JWT-SVID as spiffe-helper would write it (no jti: it is presented many times)
        svid = sts.dev().issue(GATEWAY_ID, audience=sts.url, ttl=1800, now=int(sts.clock.now()), with_jti=False)
        config.resolve("gateway.jwt").write_text(svid, encoding="ascii")
        ran: list[tuple[str, Any]] = []
        seen: list[str] = []
        verifier = Verifier(ResourceSettings(issuer=sts.url, resource=upstream, policy_dir=str(policies)),
                            identity=sts.identity(SVC_RS))  # fmt: skip
        app = protect(notes_server(ran), verifier)

        async def recording(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                headers = dict(scope["headers"])
                seen.append(headers.get(b"authorization", b"").decode("latin-1"))
            await app(scope, receive, send)

        thread = ServerThread(recording, up_port).start()
        try:
            wait_until(lambda: verifier.feed is not None and verifier.feed.fresh(time.time()), timeout=10,
                       what="the upstream's revocation feed")  # fmt: skip
            pin_upstream(config, sts, upstream)
            seen.clear()
            ran.clear()
            with serve_gateway(config, sts) as gateway:
                env = McpEnv(sts=sts, config=config, gateway=gateway)
                try:
                    yield HopEnv(env, upstream, ran, seen)
                finally:
                    env.close()
        finally:
            thread.stop()


def text(result: dict[str, Any]) -> str:
    return str(result["content"][0]["text"])


# -- end to end --------------------------------------------------------------------------------
def test_mcp03_mcp12_hop_upstream_sees_only_a_token_minted_for_it(hop: HopEnv) -> None:
    agent = hop.agent()
    before = len(hop.seen)
    assert agent.tools("notes") == ["echo", "read_file"]  # store: the minted token lacks tool:store
    assert text(agent.call("notes", "echo", {"text": "hi"})) == "hi"
    assert ("echo", "hi") in hop.ran
    presented = hop.seen[before:]
    assert presented and all(value.startswith("DPoP ") for value in presented)
    agents_token = agent.token("notes")
    gateway = hop.mcp.gateway.mcp
    assert gateway is not None and gateway.sessions.hop is not None
    for value in presented:
        token = value.removeprefix("DPoP ")
        assert token != agents_token  # never passed through
        minted = claims(token)
        assert minted["aud"] == hop.upstream
        assert minted["act"]["sub"] == GATEWAY_ID
        assert minted["txn"] == agent.task["id"] and minted["sub"] == claims(agents_token)["sub"]
        assert minted["cnf"]["jkt"] == gateway.sessions.hop.jkt != agent.agent.key.jkt
    [session] = hop.mcp.sessions("notes", agent.task["id"])
    assert session.hop is not None


def test_mcp_hop_each_agent_session_has_its_own_upstream_connection(hop: HopEnv) -> None:
    first, second = hop.agent(), hop.agent()
    first.call("notes", "echo", {"text": "one"})
    second.call("notes", "echo", {"text": "two"})
    [a] = hop.mcp.sessions("notes", first.task["id"])
    [b] = hop.mcp.sessions("notes", second.task["id"])
    assert a.upstream is not b.upstream and a.hop is not b.hop


def test_mcp_hop_upstream_cedar_refusal_reaches_the_agent(hop: HopEnv) -> None:
    agent = hop.agent()
    with pytest.raises(RpcError) as refused:
        agent.call("notes", "read_file", {"path": "/etc/passwd"})
    assert refused.value.code == -32003 and refused.value.data.get("error") == "access_denied"
    assert ("read_file", "/etc/passwd") not in hop.ran
    # positive control, same agent and session
    assert text(agent.call("notes", "read_file", {"path": "/shared/a.txt"})) == "contents of /shared/a.txt"


def test_mcp_hop_tool_outside_the_minted_scopes_is_refused_not_drift(hop: HopEnv) -> None:
    agent = hop.agent()
    with pytest.raises(RpcError) as refused:
        agent.call("notes", "store", {"data": "x"})  # pinned, but the task grants no tool:store
    assert refused.value.code == -32003 and refused.value.data.get("error") == "access_denied"
    assert not any(name == "store" for name, _ in hop.ran)
    assert not [r for r in hop.mcp.audit("mcp.drift") if r.detail.get("tool") == "store"]
    granted = hop.agent(scopes=[*SCOPES, "tool:store"])  # positive control
    assert text(granted.call("notes", "store", {"data": "x"})) == "stored"


def test_mcp_hop_task_not_listing_the_upstream_is_refused_by_the_sts(hop: HopEnv) -> None:
    agent = hop.agent(audiences=[hop.mcp.aud("notes")])  # the gateway route only
    before = len(hop.seen)
    with pytest.raises(RpcError) as refused:
        agent.call("notes", "echo", {"text": "nope"})
    assert refused.value.code == -32003 and refused.value.data.get("error") == "invalid_target"
    assert "refused a token for the MCP upstream" in refused.value.message
    assert hop.seen[before:] == []  # nothing reached the upstream
    assert hop.mcp.sessions("notes", agent.task["id"]) == []


def test_mcp_hop_task_completion_ends_the_session_and_the_minted_token(hop: HopEnv) -> None:
    agent = hop.agent()
    agent.call("notes", "echo", {"text": "before"})
    minted = hop.seen[-1].removeprefix("DPoP ")
    [session] = hop.mcp.sessions("notes", agent.task["id"])
    agent.complete()
    wait_until(lambda: hop.mcp.sessions("notes", agent.task["id"]) == [], timeout=15, what="the hop session to end")
    assert session.closed and session.hop is not None
    # the upstream refuses the minted token itself once the task is over (its own feed)
    gateway = hop.mcp.gateway.mcp
    assert gateway is not None and gateway.sessions.hop is not None
    key = gateway.sessions.hop.key

    async def replayed() -> int:
        async with httpx2.AsyncClient() as http:
            proof = key.proof("POST", hop.upstream, access_token=minted)
            body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
            response = await http.post(hop.upstream, json=body, headers={
                "Authorization": f"DPoP {minted}", "DPoP": proof, "Accept": "application/json, text/event-stream"})  # fmt: skip
            return response.status_code

    wait_until(lambda: asyncio.run(replayed()) == 401, timeout=10, what="the upstream to refuse the minted token")


# -- configuration -----------------------------------------------------------------------------
HTTP: dict[str, Any] = {
    "name": "notes",
    "url": "https://notes.example/mcp",
    "tools": ["*"],
    "owner": "team-notes",
    "justification": "agents keep notes",
    "expires": dt.date(2027, 3, 31),
}


def parsed(row: dict[str, Any], gateway: dict[str, Any] | None = None) -> Config:
    return parse_config({"gateway": {**(gateway or {}), "mcp": [row]}}, path=None, env={})


def refused_key(row: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parsed(row)
    return info.value.key


def test_hop_route_defaults_its_audience_to_the_url() -> None:
    (route,) = parsed(HTTP | {"credential": "hop"}).mcp_routes
    assert route.hop and route.per_agent and route.upstream_audience == "https://notes.example/mcp"
    (other,) = parsed(HTTP | {"credential": "hop", "audience": "https://notes.example"}).mcp_routes
    assert other.upstream_audience == "https://notes.example"
    (plain,) = parsed(HTTP).mcp_routes  # positive control: no credential is "none"
    assert plain.credential == "none" and not plain.per_agent and plain.upstream_audience == ""
    (vaulted,) = parsed(HTTP | {"secret": "k"}).mcp_routes
    assert vaulted.credential == "secret"


@pytest.mark.parametrize(
    ("row", "key"),
    [
        (HTTP | {"credential": "hop", "secret": "k"}, "gateway.mcp[0].credential"),
        ({k: v for k, v in HTTP.items() if k != "url"} | {"command": ["srv"], "credential": "hop"},
         "gateway.mcp[0].credential"),
        (HTTP | {"credential": "passthrough"}, "gateway.mcp[0].credential"),
        (HTTP | {"credential": "secret"}, "gateway.mcp[0].credential"),
        (HTTP | {"credential": "none", "secret": "k"}, "gateway.mcp[0].credential"),
        (HTTP | {"audience": "https://notes.example"}, "gateway.mcp[0].audience"),
        (HTTP | {"credential": "hop", "audience": "notes.example"}, "gateway.mcp[0].audience"),
        (HTTP | {"credential": "hop", "audience": "https://notes.example/?x=1"}, "gateway.mcp[0].audience"),
    ],
)  # fmt: skip
def test_hop_route_config_refusals_name_the_key(row: dict[str, Any], key: str) -> None:
    assert refused_key(row) == key


def test_hop_route_without_a_gateway_identity_is_refused_at_start(tmp_path: Path) -> None:
    config = parsed(HTTP | {"credential": "hop"})
    with pytest.raises(ConfigError) as info:
        gateway_identity(config, env={})
    assert info.value.key == "gateway.identity_file" and "notes" in info.value.problem
    with pytest.raises(ConfigError):
        build_gateway(config)  # the gateway itself refuses to be built
    # positive controls: a file (resolved against the config's directory), or no hop route at all
    with_file = parse_config({"gateway": {"identity_file": "gw.jwt", "mcp": [HTTP | {"credential": "hop"}]}},
                             path=tmp_path / "tether.toml", env={})  # fmt: skip
    identity = gateway_identity(with_file, env={})
    assert identity is not None and getattr(identity, "path", None) == tmp_path / "gw.jwt"
    assert gateway_identity(parsed(HTTP), env={}) is None


def test_connect_refuses_a_hop_route_without_an_auth() -> None:
    (route,) = parsed(HTTP | {"credential": "hop"}).mcp_routes
    with pytest.raises(UpstreamError, match="needs a hop token"):
        asyncio.run(connect(route))
