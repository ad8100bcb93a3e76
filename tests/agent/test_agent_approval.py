"""The agent SDK and held requests (issue 17; SECURITY APR-01, APR-03): polling, typed errors, tool-call tokens.

The client protocol (RFC 8628 §3.5 as the STS speaks it) against a scripted token endpoint
(``agent_approval_kit``); the whole flow — a payment tool held at an MCP server, approved by
a member of the group, the token carrying ``apr`` and ``tctx`` — against the real STS.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from agent_approval_kit import APPROVAL_ID, denied, drive, expired, issued, pending, scripted_sts, slow_down

from tether.agent import ApprovalDenied, ApprovalExpired, ApprovalPending, ExchangeError
from tether.agent.exchange import Nonces, exchange_flow
from tether.agent.mcp_auth import ToolCallRequest, held_for_approval, tool_call_of
from tether.agent.proof import DPoPKey
from tether.agent.session import tool_call_details
from tether.clock import ManualClock
from tether.rules.approval import parse_authorization_details, tool_call_context

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
