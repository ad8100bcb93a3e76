"""The MCP gateway's pure pieces: admission checks, result scrubbing and size, audit record shapes (no servers)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.errors import AccessDenied, InsufficientScope, TooManyRequests
from tether.gateway.inject import Injection, encodings
from tether.gateway.mcp_checks import (
    HeaderMismatch,
    JsonTextArgument,
    check_allowed,
    check_cap,
    check_drift,
    check_json_text,
    check_open,
    check_param_headers,
    check_pinned,
    check_rate,
    check_scope,
    visible,
)
from tether.gateway.mcp_records import McpCall, argument_shape, call_event, drift_event, refusal_event, result_event
from tether.gateway.mcp_results import result_size, scrub_json
from tether.gateway.mcp_routes import McpRoute
from tether.gateway.mcp_wire import Ambiguous, ambiguity, rpc_error
from tether.gateway.scrub import REDACTED
from tether.resource.principal import Principal
from tether.rules.tool_call import parse_tool_call

# runs the same whatever TETHER_TEST_STORE says: the PostgreSQL pass of scripts/test leaves it out
pytestmark = pytest.mark.store_independent

SECRET = 'k3y/with+odd="chars"\\'
PINS = {"read_file": "d-read", "list_directory": "d-list"}


def route(**extra: Any) -> McpRoute:
    fields: dict[str, Any] = {"name": "files", "command": ("srv",), "url": "", "tools": ("read_file", "list_directory"),
                              "owner": "o", "justification": "j", "expires": dt.date(2099, 1, 1)}  # fmt: skip
    fields.update(extra)
    return McpRoute(**fields)


def principal(scopes: frozenset[str] = frozenset()) -> Principal:
    return Principal(subject="user", agent="spiffe://t/agent", client_id="spiffe://t/agent", scopes=scopes,
                     task="tsk_1", purpose=None, actors=(), jti="jti-1", audience="http://gw/mcp/files",
                     expires_at=0, jkt="jkt-1")  # fmt: skip


def test_expiry() -> None:
    with pytest.raises(AccessDenied, match="expired"):
        check_open(route(expires=dt.date(2001, 1, 1)), dt.date(2026, 1, 1))
    check_open(route(), dt.date(2026, 1, 1))


def test_allowlist_and_pins() -> None:
    with pytest.raises(AccessDenied) as refused:
        check_allowed(route(), "write_file")
    assert refused.value.audit["not_allowlisted"] is True
    check_allowed(route(), "read_file")
    check_allowed(route(tools=("*",)), "write_file")
    with pytest.raises(AccessDenied) as unpinned:
        check_pinned(route(tools=("*",)), PINS, "write_file")
    assert unpinned.value.audit["not_pinned"] is True
    assert check_pinned(route(), PINS, "read_file") == "d-read"


def test_scope_convention() -> None:
    with pytest.raises(InsufficientScope) as refused:
        check_scope(route(), {"tool:list_directory"}, "read_file")
    assert refused.value.scope == "tool:read_file"
    check_scope(route(), {"tool:read_file"}, "read_file")
    check_scope(route(scope_prefix=""), set(), "read_file")  # the convention turned off
    with pytest.raises(InsufficientScope):
        check_scope(route(scope_prefix="mcp.files:"), {"tool:read_file"}, "read_file")


def test_drift() -> None:
    check_drift(route(), "read_file", "d-read", "d-read")
    for current in ("d-other", None):
        with pytest.raises(AccessDenied) as refused:
            check_drift(route(), "read_file", "d-read", current)
        assert refused.value.audit["drift"] is True


def test_rate_and_cap() -> None:
    check_rate(route(max_calls_per_second=2), 2)
    with pytest.raises(TooManyRequests):
        check_rate(route(max_calls_per_second=2), 3)
    check_cap(route(max_calls_per_task=3), 3)
    with pytest.raises(TooManyRequests) as capped:
        check_cap(route(max_calls_per_task=3), 4)
    assert capped.value.audit["cap_hit"] is True


def test_visible_needs_allowlist_pin_current_digest_and_scope() -> None:
    assert visible(route(scope_prefix=""), PINS, set(), "read_file", "d-read")
    assert not visible(route(scope_prefix=""), PINS, set(), "read_file", "d-drifted")
    assert not visible(route(scope_prefix="", tools=("*",)), PINS, set(), "write_file", "d-write")
    assert not visible(route(), PINS, set(), "read_file", "d-read")
    assert visible(route(), PINS, {"tool:read_file"}, "read_file", "d-read")


def test_scrubbing_replaces_every_form_in_every_string_and_keeps_the_structure() -> None:
    needles = encodings(SECRET, Injection(mode="header", header="X-Api-Key", template="{secret}"))
    b64 = base64.b64encode(SECRET.encode()).decode()
    result = {
        "content": [{"type": "text", "text": f"raw {SECRET} and b64 {b64}"},
                    {"type": "text", "text": json.dumps({"echo": SECRET})}],  # JSON-escaped inside a string
        "structuredContent": {SECRET: [SECRET, 1, None, True]},
        "isError": False,
    }  # fmt: skip
    cleaned, hits = scrub_json(result, needles)
    dumped = json.dumps(cleaned)
    assert SECRET not in json.dumps(cleaned, ensure_ascii=False) and b64 not in dumped
    assert hits >= 5 and cleaned["isError"] is False and cleaned["structuredContent"][REDACTED.decode()][1:] == [1, None, True]
    untouched = {"content": [{"type": "text", "text": "nothing here"}]}
    assert scrub_json(untouched, needles) == (untouched, 0)
    assert scrub_json(untouched, []) == (untouched, 0)


@given(st.recursive(st.text() | st.integers() | st.booleans() | st.none(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                    max_leaves=20))  # fmt: skip
def test_scrubbing_never_leaves_the_secret_anywhere(value: Any) -> None:
    needles = encodings(SECRET, Injection(mode="header"))
    cleaned, _ = scrub_json({"a": value, "b": [SECRET, {"c": f"x{SECRET}y"}]}, needles)
    assert SECRET not in json.dumps(cleaned, ensure_ascii=False)


def test_result_size_is_compact_utf8_json() -> None:
    assert result_size({"a": "é"}) == len('{"a":"é"}'.encode())


def test_records_carry_the_shape_and_digest_never_the_values() -> None:
    call = parse_tool_call({"name": "read_file", "arguments": {"path": "/secret/x", "n": 2, "deep": {"k": [1]}}})
    record = McpCall(route(), principal(), call, started=0.0, seq=7)
    event = call_event(record)
    assert event.kind == "mcp.call" and event.task == "tsk_1" and event.jti == "jti-1"
    assert event.detail["argument_shape"] == ["deep:object", "n:number", "path:string"]
    assert event.detail["arguments_digest"] == call.digest and "/secret/x" not in json.dumps(event.detail)
    assert argument_shape({"b": [], "a": None, "c": False}) == ["a:null", "b:array", "c:boolean"]
    done = result_event(record, outcome="error", ms=1.234, size=10, scrubbed=1, error="boom")
    assert done.outcome == "error" and done.detail["call"] == 7 and done.detail["reason"] == "boom"
    refused = refusal_event(route(), None, AccessDenied("no", debug="why"), method="POST", tool=None, digest=None,
                            status=401, ms=0.5)  # fmt: skip
    assert refused.principal is None and refused.task is None and refused.error == "access_denied"
    assert refused.detail["reason"] == "why" and refused.detail["status"] == 401
    drift = drift_event(route(), principal(), "read_file", pinned="d1", current=None)
    assert drift.outcome == "alert" and "vanished" in drift.detail["reason"]


def test_mcp15_ambiguous_json_is_named_and_strict_or_broken_json_passes_through() -> None:
    repeated = b'{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"read_file","arguments":{"p":1,"p":2}}}'
    found = ambiguity(repeated)
    assert found is not None and "duplicate member `p`" in found.reason
    assert (found.ident, found.method, found.tool) == (4, "tools/call", "read_file")
    nan = ambiguity(b'{"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"name":"t","arguments":{"n":NaN}}}')
    assert nan is not None and nan.ident == "x"
    assert ambiguity(b'[{"a":1},{"a":1,"a":2}]') == Ambiguous(reason="duplicate member `a`", ident=None, method="POST",
                                                              tool=None)  # fmt: skip
    assert ambiguity(b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}') is None
    assert ambiguity(b"{not json") is None  # the SDK answers its own parse error


def test_mcp15_an_ambiguous_body_with_a_lone_surrogate_id_is_answered_with_a_null_id() -> None:
    """Review (issue 20): the loose parse keeps ``"\\ud800"``; echoing it made the 400 a 500."""
    body = b'{"jsonrpc":"2.0","id":"\\ud800","method":"tools/\\udc00","params":{"name":"t\\ud800","a":1,"a":2}}'
    found = ambiguity(body)
    assert found is not None and "duplicate member `a`" in found.reason
    assert (found.ident, found.method, found.tool) == (None, "POST", None)
    answer = rpc_error(found.ident, -32602, found.reason, 400)
    assert answer.status_code == 400 and json.loads(bytes(answer.body))["id"] is None
    paired = ambiguity(b'{"jsonrpc":"2.0","id":"\\ud83d\\ude00","method":"m","a":1,"a":2}')
    assert paired is not None and paired.ident == "\U0001f600"  # a proper pair is one character, kept


def test_mcp11_param_headers_must_mirror_the_arguments_the_schema_declares() -> None:
    definition = {"name": "deploy", "inputSchema": {"type": "object", "properties": {
        "region": {"type": "string", "x-mcp-header": "Region"}, "note": {"type": "string"}}}}  # fmt: skip
    call = parse_tool_call({"name": "deploy", "arguments": {"region": "eu-west", "note": "x"}})
    check_param_headers(definition, call, {"mcp-param-region": "eu-west"})
    with pytest.raises(HeaderMismatch):
        check_param_headers(definition, call, {"mcp-param-region": "us-east"})  # routed one way, run another
    with pytest.raises(HeaderMismatch):
        check_param_headers(definition, parse_tool_call({"name": "deploy", "arguments": {}}), {"mcp-param-region": "eu"})
    check_param_headers({"name": "plain"}, call, {"mcp-param-region": "anything"})  # no schema declares a header


def test_mcp15_json_text_is_refused_unless_the_upstream_schema_declares_a_string() -> None:
    """Review F2: an SDK upstream decodes a JSON string for a parameter not typed ``str``."""
    definition = {"inputSchema": {"type": "object", "properties": {"path": {"type": "string"}, "filter": {}}}}
    smuggled = parse_tool_call({"name": "read_file", "arguments": {"filter": '{"k": "p\\u0061ss"}'}})
    with pytest.raises(JsonTextArgument, match="`filter`"):
        check_json_text(definition, smuggled)
    with pytest.raises(JsonTextArgument):
        check_json_text({}, parse_tool_call({"name": "read_file", "arguments": {"path": "[1]"}}))  # no schema known
    check_json_text(definition, parse_tool_call({"name": "read_file", "arguments": {"path": '{"k": 1}'}}))
    check_json_text(definition, parse_tool_call({"name": "read_file", "arguments": {"filter": {"k": "pass"}}}))
