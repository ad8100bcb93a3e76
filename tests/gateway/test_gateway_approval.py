"""Held calls at the gateway (issue 17; SECURITY APR-01): HTTP routes and MCP routes.

A real STS and the gateway share one policy set (``gw_approval_kit.held_policies``). An HTTP
route's held call is 403 ``access_denied`` naming the groups; a token carrying ``apr`` serves one
held call; a token issued for one tool call (``tctx``) serves no HTTP route. An MCP route's held
``tools/call`` is a JSON-RPC error whose ``data`` says ``approval_required``; the token the STS
issues for exactly that call after a human's yes serves it once, never with other arguments,
and the audit records name the approval and ``tctx``, never the arguments.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gw_approval_kit import FINANCE, approve_when_held, decide, held_policies
from gw_mcpkit import STDIO, McpEnv, RpcError, mcp_route_toml, pin_routes
from gwkit import SECRET_NAME, GatewayEnv, Upstream, gateway_toml, put_secret_sync, route_toml, serve_gateway, serve_upstream

from helpers import QUIET_MONITOR, running_sts
from tether.agent import ApprovalPending
from tether.rules.approval import tool_call_context
from tether.rules.jws import b64url_decode, strict_json_loads
from tether.web.server import free_port

APIKEY: dict[str, Any] = {"inject": "header", "header": "X-Api-Key", "template": "{secret}",
                          "max_requests_per_second": 1000, "max_requests_per_task": 1000}  # fmt: skip
APPROVALS = '\n[approvals]\nttl = 120\ninterval = 1\n\n[[approver_groups]]\nname = "finance"\nmembers = ["' + FINANCE + '"]\n'


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("data") / "shared"
    directory.mkdir()
    (directory / "invoice-4711.txt").write_text("due", encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayEnv, McpEnv]]:
    port = free_port()
    upstream = Upstream()
    with serve_upstream(upstream) as up:
        rows = route_toml("pay", f"{up.url}/apikey", **APIKEY) + route_toml("payx", f"{up.url}/apikey", **APIKEY)
        rows += mcp_route_toml("files", command=STDIO, tools=["read_file", "list_directory"], scope_prefix="")
        toml = gateway_toml(port, suspend_after_refusals=1000, suspend_on_cap=False) + rows + QUIET_MONITOR + APPROVALS
        with running_sts(tmp_path_factory.mktemp("gw-approval"), extra_toml=toml) as sts:
            config = sts.config
            (config.policy_dir / "60-approvals.cedar").write_text(held_policies(f"http://127.0.0.1:{port}"), encoding="utf-8")
            put_secret_sync(config, SECRET_NAME, upstream.key)
            pin_routes(config, "files", env={})
            with serve_gateway(config, sts) as gateway:
                http_env = GatewayEnv(sts=sts, config=config, gateway=gateway, upstream=upstream, elsewhere=upstream,
                                      down_port=0)  # fmt: skip
                mcp_env = McpEnv(sts=sts, config=config, gateway=gateway)
                try:
                    yield http_env, mcp_env
                finally:
                    http_env.close()
                    mcp_env.close()


def claims_of(token: str) -> dict[str, Any]:
    value: dict[str, Any] = strict_json_loads(b64url_decode(token.split(".")[1]))
    return value


# -- HTTP routes -------------------------------------------------------------------------------------
def test_apr01_held_http_call_is_refused_naming_the_groups_and_never_forwarded(env: tuple[GatewayEnv, McpEnv]) -> None:
    gw, _ = env
    caller = gw.caller("pay")
    held = caller.call("POST", "pay", "/v1/items", json={"amount": 1})
    assert held.status_code == 403, held.text
    assert held.json()["error"] == "access_denied" and held.json()["approval_required"] == ["finance"]
    assert not gw.audit("gateway.call", task=caller.task["id"]), "refused before any call record: never forwarded"
    record = gw.audit("gateway.refused", task=caller.task["id"])[-1]
    assert record.detail["approval_required"] == "finance"
    assert caller.get("pay", "/v1/items").status_code == 200, "an unheld call on the same route is served"


def test_apr01_approved_token_serves_one_held_http_call(env: tuple[GatewayEnv, McpEnv]) -> None:
    gw, _ = env
    caller = gw.caller("payx")
    caller.session.approval_timeout = 30  # the agent waits for its held exchange (polling every interval)
    approver = approve_when_held(gw.sts, caller.task["id"])
    first = caller.call("POST", "payx", "/v1/items", json={"amount": 1})
    approver.join(timeout=30)
    assert first.status_code == 200, first.text
    [approval] = approver.decided
    token = caller.session.hops.get(gw.aud("payx"))
    assert token is not None and claims_of(token)["apr"] == {"id": approval.id, "by": FINANCE, "at": approval.decided_at}
    assert "tctx" not in claims_of(token)
    again = caller.call("POST", "payx", "/v1/items", json={"amount": 1})
    assert again.status_code == 403 and "already been used" in again.json()["error_description"]
    assert caller.get("payx", "/v1/items").status_code == 200, "an unheld call does not spend it"
    posted = [r for r in gw.audit("gateway.call", task=caller.task["id"]) if r.detail["method"] == "POST"]
    assert [r.detail["approval"] for r in posted] == [approval.id]


def test_apr01_tool_call_token_serves_no_http_route(env: tuple[GatewayEnv, McpEnv]) -> None:
    gw, _ = env
    caller = gw.caller("pay")
    token = caller.session.token_for_call(gw.aud("pay"), "lookup", {"id": 4711}, client=caller.plain)
    assert claims_of(token)["tctx"] == tool_call_context("lookup", {"id": 4711}) and "apr" not in claims_of(token)
    refused = caller.manual("GET", gw.aud("pay") + "/v1/items", token)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"] == "access_denied" and "one tool call only" in refused.json()["error_description"]


# -- MCP routes --------------------------------------------------------------------------------------
def test_apr01_held_tools_call_at_the_gateway_then_approved_once_for_exactly_that_call(
    env: tuple[GatewayEnv, McpEnv], shared: Path
) -> None:
    _, mcp = env
    agent = mcp.agent("files")
    arguments = {"path": str(shared)}
    with pytest.raises(RpcError) as held:
        agent.call("files", "list_directory", arguments)
    assert held.value.code == -32003
    assert held.value.data == {"error": "approval_required", "tool": "list_directory", "groups": ["finance"],
                               "tctx": tool_call_context("list_directory", arguments)}  # fmt: skip
    refused = mcp.audit("mcp.refused", task=agent.task["id"])[-1]
    assert refused.detail["approval_required"] == "finance" and str(shared) not in str(refused.detail)

    audience = mcp.aud("files")
    with pytest.raises(ApprovalPending) as pending:
        agent.session.token_for_call(audience, "list_directory", arguments, client=agent.plain)
    decide(mcp.sts, pending.value.approval_id)
    token = agent.session.token_for_call(audience, "list_directory", arguments, approval_id=pending.value.approval_id,
                                         client=agent.plain)  # fmt: skip
    assert claims_of(token)["apr"]["id"] == pending.value.approval_id

    done = agent.with_token("files", token, "tools/call", {"name": "list_directory", "arguments": arguments})
    assert "invoice-4711.txt" in done.text and "error" not in done.json(), done.text
    other = {"path": str(shared.parent)}
    changed = agent.with_token("files", token, "tools/call", {"name": "list_directory", "arguments": other}).json()
    assert changed["error"]["data"] == {"error": "access_denied", "tool": "list_directory"}
    assert changed["error"]["message"] == "the call differs from the one approved"
    again = agent.with_token("files", token, "tools/call", {"name": "list_directory", "arguments": arguments}).json()
    assert again["error"]["data"]["error"] == "access_denied" and "already been used" in again["error"]["message"]

    [call] = mcp.audit("mcp.call", task=agent.task["id"])
    assert call.detail["approval"] == pending.value.approval_id
    assert call.detail["tctx"] == tool_call_context("list_directory", arguments)
    assert str(shared) not in str(call.detail), "never argument values"
    # the ordinary hop token still lists the held tool (it can be called once approved)
    assert agent.tools("files") == ["list_directory", "read_file"]
