"""The agent SDK and held requests (issue 17; SECURITY APR-01, APR-03): polling, typed errors, tool-call tokens.

The client protocol (RFC 8628 §3.5 as the STS speaks it) against a scripted token endpoint
(``agent_approval_kit``); the whole flow — a payment tool held at an MCP server, approved by
a member of the group, the token carrying ``apr`` and ``tctx`` — against the real STS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import httpx2
import pytest
from agent_approval_kit import (
    APPROVAL_ID,
    FINANCE,
    OUTSIDER,
    PayWorld,
    denied,
    drive,
    expired,
    issued,
    pay_world,
    pending,
    rpc_call,
    scripted_sts,
    slow_down,
)
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tether.agent import ApprovalDenied, ApprovalExpired, ApprovalPending, ExchangeError
from tether.agent.exchange import Nonces, exchange_flow
from tether.agent.mcp_auth import ToolCallRequest, held_for_approval, tool_call_of
from tether.agent.proof import DPoPKey
from tether.agent.session import tool_call_details
from tether.clock import ManualClock
from tether.rules.approval import parse_authorization_details, tool_call_context
from tether.rules.jws import b64url_decode, strict_json_loads

FORM = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": "workload-jwt-1",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "task": "tsk_1"}  # fmt: skip


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        yield client


# -- polling (RFC 8628 §3.5) ------------------------------------------------------------------------
def test_a_held_exchange_is_polled_with_approval_id_the_same_form_and_a_fresh_proof(http: httpx.Client) -> None:
    clock = ManualClock()
    with scripted_sts(pending(2), pending(2), issued("tok-after-approval")) as sts:
        key = DPoPKey()
        flow = exchange_flow(sts.token_url, FORM, key, Nonces(), clock=clock, approval_timeout=60)
        driven = drive(flow, http, clock)
    assert driven.error is None, driven.error
    assert driven.result.value == "tok-after-approval"
    assert driven.pauses == [2, 2]
    forms = [form for form, _ in sts.seen]
    assert "approval_id" not in forms[0]
    assert [f["approval_id"] for f in forms[1:]] == [APPROVAL_ID, APPROVAL_ID]
    assert all(f["subject_token"] == "workload-jwt-1" for f in forms), "a session exchange polls with the same workload JWT"
    assert all({k: v for k, v in f.items() if k != "approval_id"} == FORM for f in forms)
    jtis = [jti for _, jti in sts.seen]
    assert len(set(jtis)) == 3 and all(jtis), "every poll carries a fresh DPoP proof"


def test_slow_down_adds_five_seconds_to_the_interval(http: httpx.Client) -> None:
    clock = ManualClock()
    with scripted_sts(pending(2), slow_down(2), slow_down(3), pending(2), issued()) as sts:
        driven = drive(exchange_flow(sts.token_url, FORM, DPoPKey(), Nonces(), clock=clock, approval_timeout=600), http, clock)
    assert driven.error is None, driven.error
    # 2; slow_down: at least 2 + 5; again: 7 + 5; then the server's 2 (RFC 8628 §3.5: the new interval holds)
    assert driven.pauses == [2, 7, 12, 2]


def test_no_approval_timeout_raises_approval_pending_at_once(http: httpx.Client) -> None:
    clock = ManualClock()
    with scripted_sts(pending(2, expires_in=290)) as sts:
        driven = drive(exchange_flow(sts.token_url, FORM, DPoPKey(), Nonces(), clock=clock), http, clock)
    assert isinstance(driven.error, ApprovalPending)
    assert driven.error.approval_id == APPROVAL_ID and driven.error.expires_in == 290
    assert driven.error.error == "authorization_pending" and isinstance(driven.error, ExchangeError)
    assert driven.pauses == [] and len(sts.seen) == 1


def test_the_callers_deadline_ends_the_wait_with_approval_pending(http: httpx.Client) -> None:
    clock = ManualClock()
    with scripted_sts(pending(2), pending(2), pending(2), pending(2)) as sts:
        driven = drive(exchange_flow(sts.token_url, FORM, DPoPKey(), Nonces(), clock=clock, approval_timeout=5), http, clock)
    assert isinstance(driven.error, ApprovalPending)
    assert driven.pauses == [2, 2], "a poll after the deadline is not made"
    assert len(sts.seen) == 3


def test_resuming_with_an_approval_id_polls_that_approval(http: httpx.Client) -> None:
    clock = ManualClock()
    with scripted_sts(issued()) as sts:
        flow = exchange_flow(sts.token_url, FORM, DPoPKey(), Nonces(), clock=clock, approval_id=APPROVAL_ID)
        driven = drive(flow, http, clock)
    assert driven.error is None and sts.seen[0][0]["approval_id"] == APPROVAL_ID


def test_apr03_a_denial_is_approval_denied_and_an_expiry_approval_expired(http: httpx.Client) -> None:
    clock = ManualClock()
    with scripted_sts(pending(1), denied()) as sts:
        no = drive(exchange_flow(sts.token_url, FORM, DPoPKey(), Nonces(), clock=clock, approval_timeout=60), http, clock)
    assert isinstance(no.error, ApprovalDenied) and no.error.status == 403 and no.error.error == "access_denied"
    with scripted_sts(pending(1), expired()) as sts:
        late = drive(exchange_flow(sts.token_url, FORM, DPoPKey(), Nonces(), clock=clock, approval_timeout=60), http, clock)
    assert isinstance(late.error, ApprovalExpired) and late.error.error == "expired_token"
    # a policy's access_denied on a request never held is the ordinary refusal, not an approver's no
    with scripted_sts(denied()) as sts:
        refused = drive(exchange_flow(sts.token_url, FORM, DPoPKey(), Nonces(), clock=clock, approval_timeout=60), http, clock)
    assert type(refused.error) is ExchangeError and refused.error.error == "access_denied"


def test_a_held_answer_without_an_approval_id_is_not_polled(http: httpx.Client) -> None:
    clock = ManualClock()
    with scripted_sts((400, {"error": "authorization_pending", "interval": 1})) as sts:
        driven = drive(exchange_flow(sts.token_url, FORM, DPoPKey(), Nonces(), clock=clock, approval_timeout=60), http, clock)
    assert type(driven.error) is ExchangeError and driven.error.error == "authorization_pending"
    assert driven.pauses == []


@pytest.mark.parametrize("interval", [0, -3, "2", True, 10**9, None])
def test_a_nonsense_interval_falls_back_to_five_seconds(http: httpx.Client, interval: object) -> None:
    clock = ManualClock()
    body = {**pending()[1], "interval": interval}
    with scripted_sts((400, body), issued()) as sts:
        driven = drive(exchange_flow(sts.token_url, FORM, DPoPKey(), Nonces(), clock=clock, approval_timeout=60), http, clock)
    assert driven.error is None and driven.pauses == [5]


# -- tool-call tokens and the MCP retry (pure pieces) ------------------------------------------------
def test_tool_call_details_are_what_the_sts_parses_and_hash_as_the_resource_does() -> None:
    arguments = {"to": "acme", "amount": 120, "memo": {"b": 1, "a": [1, 2]}}
    call = parse_authorization_details(tool_call_details("pay", arguments))
    assert call.name == "pay" and dict(call.arguments) == arguments
    assert tool_call_context(call.name, call.arguments) == tool_call_context("pay", arguments)


def test_only_a_tools_call_request_is_read_for_the_retry() -> None:
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "pay", "arguments": {"amount": 1}}}
    assert tool_call_of(json.dumps(body).encode()) == ToolCallRequest(7, "pay", {"amount": 1})
    for other in (
        {**body, "method": "tools/list"},
        {**body, "id": None},
        {**body, "id": True},
        {**body, "params": {"name": 3}},
        {**body, "params": {"name": "pay", "arguments": [1]}},
        [body],
    ):
        assert tool_call_of(json.dumps(other).encode()) is None
    assert tool_call_of(b"") is None and tool_call_of(b"{not json") is None


def test_only_an_approval_required_answer_for_that_very_call_triggers_the_retry() -> None:
    call = ToolCallRequest(7, "pay", {"amount": 1})
    data: dict[str, object] = {
        "error": "approval_required",
        "tool": "pay",
        "groups": ["finance"],
        "tctx": tool_call_context("pay", {"amount": 1}),
    }

    def answer(request_id: object, payload: dict[str, object]) -> httpx.Response:
        body = {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32003, "message": "held", "data": payload}}
        return httpx.Response(200, json=body)

    assert held_for_approval(answer(7, data), call)
    assert held_for_approval(answer(7, {k: v for k, v in data.items() if k != "tctx"}), call)
    assert not held_for_approval(answer(8, data), call), "another request's answer"
    assert not held_for_approval(answer(7, {**data, "tool": "refund"}), call)
    assert not held_for_approval(answer(7, {**data, "tctx": tool_call_context("pay", {"amount": 2})}), call)
    assert not held_for_approval(answer(7, {**data, "error": "access_denied"}), call)
    assert not held_for_approval(httpx.Response(200, json={"jsonrpc": "2.0", "id": 7, "result": {}}), call)


# -- end to end: the real STS holds a payment tool, a member of finance approves ----------------------
PAY = {"amount": 120, "to": "acme-ltd"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PayWorld]:
    with pay_world(tmp_path_factory.mktemp("pay-world")) as made:
        yield made


def _approve_when_held(world: PayWorld, task: str, *, approve: bool = True) -> threading.Thread:
    """A member of finance, deciding as soon as the task's request shows up (as the webhook's link would)."""

    def run() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = world.pending(task)
            if found:
                world.approve(found[0].id, deny=not approve)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_apr01_payment_call_held_approved_by_finance_serves_exactly_that_call_once(world: PayWorld, http: httpx.Client) -> None:
    """The issue's headline: held, approved by a member of the group, the token carries apr and tctx, the
    call with the same arguments succeeds, with changed arguments is refused, a second use is refused."""
    session = world.session()
    key = session.key
    hop_token = session.token_for(world.url, http)
    held = rpc_call(http, world.url, hop_token, key, "pay", PAY)
    assert held["error"]["data"] == {
        "error": "approval_required", "tool": "pay", "groups": ["finance"], "tctx": tool_call_context("pay", PAY)
    }  # fmt: skip
    assert world.ran == []

    with pytest.raises(ApprovalPending) as pending_call:
        session.token_for_call(world.url, "pay", PAY, client=http)
    approval_id = pending_call.value.approval_id
    [approval] = world.pending(session.task_id)
    assert approval.id == approval_id and approval.groups == ("finance",)
    assert approval.view["tool"] == "pay" and approval.view["tctx"] == tool_call_context("pay", PAY)

    # APR-02: someone outside finance cannot approve (nor even see it); a member of finance does, through the API
    outsider = world.approve(approval_id, approver=OUTSIDER)
    assert outsider.status_code == 404 and outsider.json()["error"] == "not_found"
    approved = world.approve(approval_id)
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved" and approved.json()["decided_by"] == FINANCE
    token = session.token_for_call(world.url, "pay", PAY, approval_id=approval_id, client=http)
    claims = claims_of(token)
    assert claims["aud"] == world.url
    assert claims["apr"]["id"] == approval_id and claims["apr"]["by"] == FINANCE
    assert claims["tctx"] == tool_call_context("pay", PAY)

    done = rpc_call(http, world.url, token, key, "pay", {"to": "acme-ltd", "amount": 120})
    assert done["result"]["content"][0]["text"] == "paid 120 to acme-ltd"
    changed = rpc_call(http, world.url, token, key, "pay", {"amount": 12000, "to": "acme-ltd"})
    assert changed["error"]["data"]["error"] == "access_denied"
    assert changed["error"]["message"] == "the call differs from the one approved"
    again = rpc_call(http, world.url, token, key, "pay", PAY)
    assert again["error"]["data"]["error"] == "access_denied" and "already been used" in again["error"]["message"]
    assert world.ran == [PAY]
    # the ordinary hop token still serves unheld tools, and still cannot pay
    assert rpc_call(http, world.url, hop_token, key, "echo", {"text": "hi"})["result"]["content"][0]["text"] == "hi"
    assert rpc_call(http, world.url, hop_token, key, "pay", PAY)["error"]["data"]["error"] == "approval_required"


def test_apr03_a_denied_tool_call_is_approval_denied(world: PayWorld, http: httpx.Client) -> None:
    session = world.session()
    with pytest.raises(ApprovalPending) as held:
        session.token_for_call(world.url, "pay", PAY, client=http)
    assert world.approve(held.value.approval_id, deny=True).status_code == 200
    with pytest.raises(ApprovalDenied) as denied_call:
        session.token_for_call(world.url, "pay", PAY, approval_id=held.value.approval_id, client=http)
    assert denied_call.value.status == 403


def test_a_held_call_waits_for_the_approval_when_the_caller_gives_a_deadline(world: PayWorld, http: httpx.Client) -> None:
    session = world.session(approval_timeout=30)
    approver = _approve_when_held(world, session.task_id)
    token = session.token_for_call(world.url, "pay", {"amount": 7, "to": "acme-ltd"}, client=http)
    approver.join(timeout=30)
    assert claims_of(token)["apr"]["by"] == FINANCE


def test_mcp_client_retries_a_held_tools_call_once_with_an_approved_token(world: PayWorld) -> None:
    session = world.session()
    auth = session.mcp_auth(audiences={world.url: world.url}, discover=False, approval_timeout=30)
    arguments = {"amount": 9, "to": "acme-ltd"}
    approver = _approve_when_held(world, session.task_id)

    async def run() -> tuple[list[str], list[str]]:
        async with connect(world.url, auth) as client:
            paid = texts(await client.call_tool("pay", arguments))
            echoed = texts(await client.call_tool("echo", {"text": "after"}))  # the ordinary hop token again
            return paid, echoed

    paid, echoed = asyncio.run(run())
    approver.join(timeout=30)
    assert paid == ["paid 9 to acme-ltd"] and echoed == ["after"]
    assert auth.last_approval is None
    assert world.ran.count(arguments) == 1
    issued = [r for r in world.sts.audit() if r.kind == "token.issued" and r.task == session.task_id]
    assert sum(1 for r in issued if r.detail.get("approval")) == 1, "one token under the approval, for that call"


def test_mcp_client_without_a_deadline_surfaces_approval_required_then_resumes_the_same_approval(world: PayWorld) -> None:
    session = world.session()
    auth = session.mcp_auth(audiences={world.url: world.url}, discover=False)
    arguments = {"amount": 11, "to": "acme-ltd"}

    async def call() -> list[str] | MCPError:
        async with connect(world.url, auth) as client:
            try:
                return texts(await client.call_tool("pay", arguments))
            except MCPError as exc:
                return exc

    refused = asyncio.run(call())
    assert isinstance(refused, MCPError) and refused.error.data is not None
    assert refused.error.data["error"] == "approval_required"
    assert isinstance(auth.last_approval, ApprovalPending)
    approval_id = auth.last_approval.approval_id
    assert world.approve(approval_id).status_code == 200
    assert asyncio.run(call()) == ["paid 11 to acme-ltd"], "the retry redeemed the approval it waited on"
    assert world.pending(session.task_id) == []
    issued = [r for r in world.sts.audit() if r.kind == "token.issued" and r.task == session.task_id]
    assert [r.detail.get("approval") for r in issued if r.detail.get("approval")] == [approval_id]


@contextlib.asynccontextmanager
async def connect(url: str, auth: httpx2.Auth) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(auth=auth, trust_env=False, timeout=60.0) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


def texts(result: Any) -> list[str]:
    return [block.text for block in result.content]


def claims_of(token: str) -> dict[str, Any]:
    value: dict[str, Any] = strict_json_loads(b64url_decode(token.split(".")[1]))
    return value
