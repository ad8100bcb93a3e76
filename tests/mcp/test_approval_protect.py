"""``tether.mcp.protect`` and held tool calls (issue 17; SECURITY APR-01).

Every ``tools/call`` is checked with ``rules.approval.check_call``: a call a ``@approval``
permit holds is refused with a JSON-RPC error whose ``data`` says ``approval_required`` and
names the groups and the call's ``tctx``; a token issued for one tool call (``tctx``) serves
that call only (changed arguments → ``access_denied``, "the call differs from the one
approved"); a token issued under approval (``apr``) serves one ``tools/call``. Other MCP
methods are not tool calls: ``tools/list`` still lists a held tool.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp_approval_kit import APPROVAL, HeldMcp, TokenAuth, pay, serve_held_mcp
from mcpkit import error_of, modern_headers, modern_request, result_of

from tether.agent.proof import DPoPKey
from tether.mcp.messages import ACCESS_DENIED
from tether.rules.approval import tool_call_context

ARGS = {"amount": 120, "to": "acme-ltd"}


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeldMcp]:
    with serve_held_mcp(tmp_path_factory.mktemp("pay-policies"), stateless_http=True, json_response=True) as server:
        yield server


def _client(token: str, key: DPoPKey) -> httpx.Client:
    return httpx.Client(auth=TokenAuth(token, key), trust_env=False, timeout=10.0)


def _calls(held: HeldMcp, tool: str) -> list[Any]:
    return [value for name, value in held.ran.calls if name == tool]


def test_apr01_held_tool_call_is_refused_with_approval_required_and_never_runs(held: HeldMcp) -> None:
    key = DPoPKey()
    before = len(_calls(held, "pay"))
    with _client(held.token(key), key) as http:
        response = pay(http, held.url, ARGS)
    assert response.status_code == 200, response.text  # a JSON-RPC error, as for any policy refusal
    error = error_of(response)
    assert error["code"] == ACCESS_DENIED
    assert error["data"] == {
        "error": "approval_required",
        "tool": "pay",
        "groups": ["finance"],
        "tctx": tool_call_context("pay", ARGS),
    }
    assert "approval" in error["message"]
    assert len(_calls(held, "pay")) == before


def test_apr01_approved_token_serves_its_call_once(held: HeldMcp) -> None:
    key = DPoPKey()
    token = held.token(key, tool="pay", arguments=ARGS, approval=APPROVAL)
    with _client(token, key) as http:
        # key order and number spelling do not matter: tctx is over the RFC 8785 form
        done = pay(http, held.url, {"to": "acme-ltd", "amount": 120.0})
        assert result_of(done)["content"][0]["text"] == "paid 120 to acme-ltd"
        again = pay(http, held.url, ARGS)
    error = error_of(again)
    assert error["code"] == ACCESS_DENIED and error["data"] == {"error": "access_denied", "tool": "pay"}
    assert "already been used" in error["message"]
    assert _calls(held, "pay").count({"amount": 120, "to": "acme-ltd"}) == 1


def test_apr01_changed_arguments_are_refused_as_not_the_call_approved(held: HeldMcp) -> None:
    key = DPoPKey()
    token = held.token(key, tool="pay", arguments=ARGS, approval=APPROVAL)
    before = len(_calls(held, "pay"))
    with _client(token, key) as http:
        for changed, tool in (({"amount": 12000, "to": "acme-ltd"}, "pay"), ({"amount": 120, "to": "mallory"}, "pay"),
                              ({"text": "hi"}, "echo")):  # fmt: skip
            error = error_of(pay(http, held.url, changed, tool=tool))
            assert error["code"] == ACCESS_DENIED
            assert error["data"] == {"error": "access_denied", "tool": tool}
            assert error["message"] == "the call differs from the one approved"
        # the refusals spent nothing: the approved call itself still goes through, once
        assert "result" in pay(http, held.url, ARGS).json()
    assert len(_calls(held, "pay")) == before + 1


def test_apr01_tool_call_token_without_approval_does_not_satisfy_a_held_call(held: HeldMcp) -> None:
    key = DPoPKey()
    token = held.token(key, tool="pay", arguments=ARGS)  # issued for the call, but no human said yes
    with _client(token, key) as http:
        error = error_of(pay(http, held.url, ARGS))
    assert error["data"]["error"] == "approval_required"
    # an unheld tool with a tctx token for exactly that call is served (tctx is set whether or not approval was needed)
    echo_token = held.token(key, tool="echo", arguments={"text": "hi"})
    with _client(echo_token, key) as http:
        assert result_of(pay(http, held.url, {"text": "hi"}, tool="echo"))["content"][0]["text"] == "hi"
        assert "result" in pay(http, held.url, {"text": "hi"}, tool="echo").json(), "no apr: not spent"


def test_apr01_held_tool_is_still_listed_and_other_methods_are_not_tool_calls(held: HeldMcp) -> None:
    key = DPoPKey()
    for token in (held.token(key), held.token(key, tool="pay", arguments=ARGS, approval=APPROVAL)):
        with _client(token, key) as http:
            listed = http.post(held.url, json=modern_request("tools/list"), headers=modern_headers("tools/list"))
            names = sorted(tool["name"] for tool in result_of(listed)["tools"])
            assert names == ["echo", "pay"]
    # listing did not spend the approved token's one call
    token = held.token(key, tool="pay", arguments=ARGS, approval=APPROVAL)
    with _client(token, key) as http:
        http.post(held.url, json=modern_request("tools/list"), headers=modern_headers("tools/list"))
        assert "result" in pay(http, held.url, ARGS).json()


def test_apr01_refusals_are_logged_with_approval_and_tctx_never_argument_values(
    held: HeldMcp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tether")
    key = DPoPKey()
    secret_payee = "payee-zq81-unique"
    arguments = {"amount": 5, "to": secret_payee}
    with _client(held.token(key), key) as http:
        error_of(pay(http, held.url, arguments))
    token = held.token(key, tool="pay", arguments=arguments, approval=APPROVAL)
    with _client(token, key) as http:
        pay(http, held.url, arguments)
        pay(http, held.url, arguments)
    events = [r for r in caplog.records if getattr(r, "mcp_event", None)]
    held_line = [r for r in events if r.mcp_event == "tool call held for approval"]  # type: ignore[attr-defined]
    assert held_line and held_line[0].error == "approval_required"  # type: ignore[attr-defined]
    reused = [r for r in events if r.mcp_event == "approved token reused"]  # type: ignore[attr-defined]
    assert reused and reused[0].approval == APPROVAL  # type: ignore[attr-defined]
    assert reused[0].tctx == tool_call_context("pay", arguments)  # type: ignore[attr-defined]
    for record in caplog.records:
        assert secret_payee not in record.getMessage()
        assert all(secret_payee not in str(value) for value in record.__dict__.values())


def test_apr01_session_transport_checks_each_tools_call_too(tmp_path: Path) -> None:
    """The session-based protocol (SSE answers, GET stream): the same rules per tools/call."""
    key = DPoPKey()
    with serve_held_mcp(tmp_path / "policies") as server:
        token = server.token(key, tool="pay", arguments=ARGS, approval=APPROVAL)
        with _client(token, key) as http:
            init = {
                "jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
            }  # fmt: skip
            headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
            opened = http.post(server.url, json=init, headers=headers)
            assert opened.status_code == 200, opened.text
            session = {**headers, "Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
            assert (
                http.post(
                    server.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session
                ).status_code
                == 202
            )
            call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "pay", "arguments": ARGS}}
            assert result_of(http.post(server.url, json=call, headers=session))["content"][0]["text"] == "paid 120 to acme-ltd"
            again = http.post(server.url, json={**call, "id": 2}, headers=session)
            assert error_of(again)["data"] == {"error": "access_denied", "tool": "pay"}
