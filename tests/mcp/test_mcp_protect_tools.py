"""``protect``: per-tool authorization of ``tools/call`` and the filtered ``tools/list``.

Cedar sees the tool and its arguments (``mcpkit.POLICY``: ``read_file`` only under ``/shared/``,
``secret_admin`` never); the ``sse`` server also asks for the ``tool:<name>`` scope. Every refusal
is asserted with its wire form (JSON-RPC error, or 403 challenge), its audit record, and the
tool's side effect not happening; each has a positive control on the same server.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
from mcpkit import (
    McpEnv,
    Served,
    call_tool,
    error_of,
    legacy_headers,
    legacy_session,
    modern_headers,
    modern_request,
    reply_of,
    result_of,
)

from tether.mcp.messages import ACCESS_DENIED, HEADER_MISMATCH, INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR
from tether.rules.tool_call import MAX_DEPTH, canonical_json, digest


def _records(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "tether.mcp" and getattr(r, "mcp_event", None) == event]


def _logged_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)


# -- Cedar on the arguments ------------------------------------------------------------------------
@pytest.mark.parametrize("server", ["sse", "json"])
def test_MCP_15_cedar_decides_on_the_arguments_and_a_denied_call_never_runs(
    menv: McpEnv, server: str, caplog: pytest.LogCaptureFixture
) -> None:
    served: Served = getattr(menv, server)
    session = menv.session()
    secret_path = f"/etc/{server}-passwd"
    with menv.client(session) as http, caplog.at_level(logging.INFO, logger="tether.mcp"):
        allowed = call_tool(http, served.url, "read_file", {"path": f"/shared/{server}.txt"})
        denied = call_tool(http, served.url, "read_file", {"path": secret_path})
    assert allowed.status_code == 200, allowed.text
    assert result_of(allowed)["content"][0]["text"] == f"contents of /shared/{server}.txt"
    # the refusal is a JSON-RPC error an MCP client surfaces as an error (HTTP 200, code -32003)
    assert denied.status_code == 200
    error = error_of(denied)
    assert error["code"] == ACCESS_DENIED
    assert error["data"] == {"error": "access_denied", "tool": "read_file"}
    assert reply_of(denied)["id"] is not None
    assert served.tools.calls("read_file")[-1] == f"/shared/{server}.txt"
    assert secret_path not in served.tools.calls("read_file")
    # audited with the tool, the arguments' digest, the principal and the task — never the arguments
    (record,) = _records(caplog, "tool call denied")
    assert record.tool == "read_file"  # type: ignore[attr-defined]
    assert record.arguments_digest == digest(canonical_json({"path": secret_path}))  # type: ignore[attr-defined]
    assert record.task == session.task_id  # type: ignore[attr-defined]
    assert record.principal.startswith("spiffe://")  # type: ignore[attr-defined]
    assert record.error == "access_denied"  # type: ignore[attr-defined]
    assert secret_path not in _logged_text(caplog)


# -- the tool:<name> scope convention -----------------------------------------------------------------
def test_MCP_09_a_missing_tool_scope_is_403_naming_every_scope_needed(menv: McpEnv, caplog: pytest.LogCaptureFixture) -> None:
    session = menv.session(scopes={menv.sse.url: "tool:echo tool:store"})
    with menv.client(session) as http, caplog.at_level(logging.INFO, logger="tether.mcp"):
        held = call_tool(http, menv.sse.url, "echo", {"text": "scoped"})
        missing = call_tool(http, menv.sse.url, "read_file", {"path": "/shared/scope-test"})
    assert held.status_code == 200, held.text
    assert missing.status_code == 403
    challenge = missing.headers["www-authenticate"]
    assert challenge.startswith("DPoP ")
    assert 'error="insufficient_scope"' in challenge
    # one challenge: the scopes held plus the one missing, so one step-up grants them all (RFC 6750 §3.1)
    assert 'scope="tool:echo tool:read_file tool:store"' in challenge
    assert f'resource_metadata="{menv.sse.origin}/.well-known/oauth-protected-resource/mcp"' in challenge
    assert missing.json()["error"] == "insufficient_scope"
    assert "/shared/scope-test" not in menv.sse.tools.calls("read_file")
    (record,) = _records(caplog, "tool scope missing")
    assert record.tool == "read_file"  # type: ignore[attr-defined]
    assert record.error == "insufficient_scope"  # type: ignore[attr-defined]


def test_with_the_scope_convention_off_cedar_alone_decides(menv: McpEnv) -> None:
    """The ``json`` server has ``scope_prefix=None``: a token without ``tool:read_file`` may call it."""
    session = menv.session(scopes={menv.json.url: "tool:echo", menv.sse.url: "tool:echo"})
    with menv.client(session) as http:
        off = call_tool(http, menv.json.url, "read_file", {"path": "/shared/convention-off"})
        on = call_tool(http, menv.sse.url, "read_file", {"path": "/shared/convention-on"})
    assert off.status_code == 200, off.text
    assert menv.json.tools.calls("read_file")[-1] == "/shared/convention-off"
    assert on.status_code == 403
    assert "/shared/convention-on" not in menv.sse.tools.calls("read_file")


# -- tools/list -------------------------------------------------------------------------------------
def _names(result: dict[str, Any]) -> list[str]:
    return sorted(tool["name"] for tool in result["tools"])


def test_tools_list_is_filtered_in_a_json_answer(menv: McpEnv) -> None:
    """Cedar alone (scope convention off): every tool but ``secret_admin``."""
    session = menv.session(scopes={menv.json.url: "tool:echo"})
    with menv.client(session) as http:
        response = http.post(menv.json.url, json=modern_request("tools/list"), headers=modern_headers("tools/list"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert int(response.headers["content-length"]) == len(response.content)
    assert _names(result_of(response)) == ["echo", "read_file", "store", "wait"]
    # what survived is the server's own description, untouched
    echo = next(t for t in result_of(response)["tools"] if t["name"] == "echo")
    assert echo["inputSchema"]["properties"]["text"]["type"] == "string"


def test_tools_list_is_filtered_in_an_sse_answer(menv: McpEnv) -> None:
    """The ``sse`` server answers over SSE: scope convention and Cedar both hide tools."""
    session = menv.session(scopes={menv.sse.url: "tool:echo tool:read_file tool:secret_admin"})
    with menv.client(session) as http:
        session_id = legacy_session(http, menv.sse.url)
        response = http.post(
            menv.sse.url, json={"jsonrpc": "2.0", "id": 7, "method": "tools/list"}, headers=legacy_headers(session_id)
        )
        full = menv.session()  # positive control: every tool scope
        with menv.client(full) as other:
            other_id = legacy_session(other, menv.sse.url)
            everything = other.post(
                menv.sse.url, json={"jsonrpc": "2.0", "id": 8, "method": "tools/list"}, headers=legacy_headers(other_id)
            )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert reply_of(response)["id"] == 7
    # store and wait: no scope; secret_admin: Cedar
    assert _names(result_of(response)) == ["echo", "read_file"]
    assert _names(result_of(everything)) == ["echo", "read_file", "store", "wait"]


# -- caps and malformed messages (MCP-15) ----------------------------------------------------------------
def _nested(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"data": _nested(MAX_DEPTH + 5)}, f"deeper than {MAX_DEPTH}"),
        ({"data": "x" * 20_000}, "exceed 16384 bytes"),
    ],
    ids=["too-deep", "too-large"],
)
def test_MCP_15_arguments_over_the_caps_are_refused_and_the_tool_never_runs(
    menv: McpEnv, arguments: dict[str, Any], message: str, caplog: pytest.LogCaptureFixture
) -> None:
    session = menv.session()
    with menv.client(session) as http, caplog.at_level(logging.INFO, logger="tether.mcp"):
        refused = call_tool(http, menv.sse.url, "store", arguments)
        fine = call_tool(http, menv.sse.url, "store", {"data": {"small": [1, 2]}})
    assert refused.status_code == 400  # INVALID_PARAMS, as the MCP SDK maps it
    error = error_of(refused)
    assert error["code"] == INVALID_PARAMS
    assert message in error["message"]
    assert reply_of(refused)["id"] is not None
    assert fine.status_code == 200, fine.text
    assert menv.sse.tools.calls("store")[-1] == {"small": [1, 2]}
    assert arguments["data"] not in menv.sse.tools.calls("store")
    (record,) = _records(caplog, "invalid tool call")
    assert record.tool == "store"  # type: ignore[attr-defined]


def _raw(http: httpx.Client, url: str, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    hdrs = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json", **(headers or {})}
    return http.post(url, content=content, headers=hdrs)


def _call_body(**fields: Any) -> dict[str, Any]:
    return modern_request("tools/call", {"name": "echo", "arguments": {"text": "malformed"}}) | fields


_CALL = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":'
MALFORMED = [
    ("not-json", b"{not json", PARSE_ERROR),
    ("not-utf8", _CALL + b'{"name":"echo","arguments":{"text":"\xff"}}}', PARSE_ERROR),
    # the SDK's parser would keep the second "name": tether refuses to guess (MCP-15)
    ("duplicate-key", _CALL + b'{"name":"echo","name":"secret_admin"}}', PARSE_ERROR),
    ("batch", json.dumps([_call_body()]).encode(), INVALID_REQUEST),
    ("scalar", b"42", INVALID_REQUEST),
    ("no-jsonrpc", json.dumps({k: v for k, v in _call_body().items() if k != "jsonrpc"}).encode(), INVALID_REQUEST),
    ("method-not-string", json.dumps(_call_body(method=7)).encode(), INVALID_REQUEST),
    ("params-array", json.dumps(_call_body(params=["echo"])).encode(), INVALID_PARAMS),
    ("params-string", json.dumps(_call_body(params="echo")).encode(), INVALID_PARAMS),
    ("arguments-array", json.dumps(_call_body(params={"name": "echo", "arguments": ["malformed"]})).encode(), INVALID_PARAMS),
    ("bad-tool-name", json.dumps(_call_body(params={"name": "echo me", "arguments": {}})).encode(), INVALID_PARAMS),
    ("notification", json.dumps({k: v for k, v in _call_body().items() if k != "id"}).encode(), INVALID_REQUEST),
    ("id-object", json.dumps(_call_body(id={"x": 1})).encode(), INVALID_REQUEST),
]


@pytest.mark.parametrize(("case", "body", "code"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_MCP_15_malformed_messages_get_a_clear_jsonrpc_error_never_a_500(
    menv: McpEnv, case: str, body: bytes, code: int
) -> None:
    session = menv.session()
    before = list(menv.sse.tools.ran)
    with menv.client(session) as http:
        response = _raw(http, menv.sse.url, body, modern_headers("tools/call", "echo"))
        control = call_tool(http, menv.sse.url, "echo", {"text": f"after-{case}"})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    reply = response.json()
    assert reply["jsonrpc"] == "2.0" and reply["error"]["code"] == code, reply
    assert reply["error"]["message"]
    assert menv.sse.tools.ran[: len(before)] == before
    assert ("echo", "malformed") not in menv.sse.tools.ran[len(before) :]
    assert ("secret_admin", None) not in menv.sse.tools.ran
    assert control.status_code == 200, control.text


def test_MCP_11_mcp_headers_that_disagree_with_the_body_are_refused(menv: McpEnv) -> None:
    session = menv.session()
    body = modern_request("tools/call", {"name": "echo", "arguments": {"text": "header-mismatch"}})
    with menv.client(session) as http:
        wrong_method = http.post(menv.json.url, json=body, headers=modern_headers("tools/list", "echo"))
        wrong_name = http.post(menv.json.url, json=body, headers=modern_headers("tools/call", "read_file"))
        encoded = http.post(menv.json.url, json=body, headers=modern_headers("tools/call", "=?base64?ZWNobw==?="))
    for response in (wrong_method, wrong_name):
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == HEADER_MISMATCH
    # positive control: the same name, base64-encoded as MCP 2026-07-28 allows
    assert encoded.status_code == 200, encoded.text
    assert menv.json.tools.calls("echo").count("header-mismatch") == 1


def test_a_body_over_the_cap_is_413_before_the_server_reads_it(menv: McpEnv) -> None:
    session = menv.session()
    huge = json.dumps(modern_request("tools/call", {"name": "echo", "arguments": {"text": "y" * (4 * 1024 * 1024)}})).encode()
    with menv.client(session) as http:
        response = _raw(http, menv.json.url, huge, modern_headers("tools/call", "echo"))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == INVALID_REQUEST
    assert "exceeds" in response.json()["error"]["message"]
    assert not any(len(v) > 1000 for v in menv.json.tools.calls("echo"))


# -- MCP-15: JSON text in an argument the SDK would decode before the tool runs (review F2) -------
@pytest.mark.parametrize("server", ["sse", "json"])
def test_mcp_15_json_text_for_a_non_string_parameter_is_refused_and_the_tool_never_runs(menv: McpEnv, server: str) -> None:
    """``store(data: Any)``: the SDK would json.loads the string, so the tool would get a structure whose
    text Cedar never saw (an escape can spell around a rule). Refused as invalid params."""
    served = getattr(menv, server)
    before = list(served.tools.calls("store"))
    with menv.client(menv.session()) as http:
        smuggled = call_tool(http, served.url, "store", {"data": '{"k": "p\\u0061ssword"}'})
        structured = call_tool(http, served.url, "store", {"data": {"k": "fine"}})  # positive control
        declared = call_tool(http, served.url, "echo", {"text": '{"k": "v"}'})  # `text: str`: passed on as text
    error = error_of(smuggled)
    assert smuggled.status_code == 400 and error["code"] == INVALID_PARAMS and "`data`" in error["message"]
    assert result_of(structured)["content"][0]["text"] == "stored"
    assert result_of(declared)["content"][0]["text"] == '{"k": "v"}'
    assert served.tools.calls("store") == [*before, {"k": "fine"}]
