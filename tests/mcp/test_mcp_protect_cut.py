"""``protect``: a task that ends cuts its MCP session mid-way (tether DESIGN "revocation"; MCP-10).

The STS's revocation feed tells the verifier the task ended; the next message fails
verification (401), and a response still open — the session's GET stream, a long ``tools/call``
answered over SSE — is ended and the server's handling of it cancelled. Deadlines only bound
the waits; no latency is asserted.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from mcpkit import McpEnv, call_tool, legacy_headers, legacy_session, modern_headers, modern_request, sse_messages

from tether.agent import TaskSession
from tether.mcp.sessions import DEFAULT_SESSIONS_PER_OWNER

DEADLINE = 10.0


@dataclass
class Stream:
    """One streamed response read on a thread until the server ends it."""

    opened: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    status: int = 0
    content_type: str = ""
    body: bytearray = field(default_factory=bytearray)
    error: BaseException | None = None

    def messages(self) -> list[dict[str, Any]]:
        return sse_messages(self.body.decode())


def _read(
    session: TaskSession, stream: Stream, method: str, url: str, *, headers: dict[str, str], **kw: Any
) -> threading.Thread:
    """Stream on a thread. The request is signed here, not by ``session.auth()``: that auth reads every
    response body to its end before handing it back (it inspects refusals), which would hold a stream."""
    token = session.token_for(url)
    signed = {**headers, "Authorization": f"DPoP {token}", "DPoP": session.key.proof(method, url, access_token=token)}

    def run() -> None:
        try:
            with (
                httpx.Client(trust_env=False, timeout=30.0) as http,
                http.stream(method, url, headers=signed, **kw) as response,
            ):
                stream.status, stream.content_type = response.status_code, response.headers.get("content-type", "")
                for chunk in response.iter_bytes():
                    stream.body += chunk
                    stream.opened.set()
                stream.opened.set()
        except httpx.HTTPError as exc:  # recorded: the test asserts the stream ended cleanly
            stream.error = exc
        finally:
            stream.opened.set()
            stream.ended.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _post_with(session: TaskSession, token: str, url: str, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    """A POST with a token obtained before the task ended (the agent SDK would not exchange again)."""
    signed = {**headers, "Authorization": f"DPoP {token}", "DPoP": session.key.proof("POST", url, access_token=token)}
    with httpx.Client(trust_env=False, timeout=10.0) as http:
        return http.post(url, json=body, headers=signed)


def _wait_for(predicate: Any, what: str) -> None:
    event = threading.Event()
    for _ in range(int(DEADLINE / 0.02)):
        if predicate():
            return
        event.wait(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_task_completion_closes_the_open_get_stream_and_refuses_the_next_message(
    menv: McpEnv, caplog: pytest.LogCaptureFixture
) -> None:
    session = menv.session()
    with menv.client(session) as http, caplog.at_level(logging.INFO, logger="tether.mcp"):
        session_id = legacy_session(http, menv.sse.url)
        listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        before = http.post(menv.sse.url, json=listing, headers=legacy_headers(session_id))
        assert before.status_code == 200, before.text
        stream = Stream()
        headers = {**legacy_headers(session_id), "Accept": "text/event-stream"}
        thread = _read(session, stream, "GET", menv.sse.url, headers=headers)
        _wait_for(lambda: stream.status != 0 or stream.ended.is_set(), "the GET stream to open")
        assert stream.status == 200 and stream.content_type.startswith("text/event-stream"), (stream.status, stream.error)
        assert not stream.ended.is_set()
        token = session.token_for(menv.sse.url)
        session.complete()
        assert stream.ended.wait(DEADLINE), "the GET stream stayed open after the task ended"
        thread.join(DEADLINE)
        assert stream.error is None, stream.error  # ended by the server, not by a timeout
        after = _post_with(session, token, menv.sse.url, {**listing, "id": 2}, legacy_headers(session_id))
    assert after.status_code == 401
    assert 'error="invalid_token"' in after.headers["www-authenticate"]
    cuts = [r for r in caplog.records if getattr(r, "mcp_event", None) == "stream cut"]
    assert cuts and cuts[0].task == session.task_id  # type: ignore[attr-defined]


def test_task_completion_ends_a_long_tools_call_and_cancels_the_tool(menv: McpEnv) -> None:
    session = menv.session()
    tools = menv.sse.tools
    body = modern_request("tools/call", {"name": "wait", "arguments": {"seconds": 60}, "_meta": {"progressToken": "p-1"}})
    with menv.client(session) as http:
        # positive control first: the same session calls a short tool
        assert call_tool(http, menv.sse.url, "echo", {"text": "before-cut"}).status_code == 200
        stream = Stream()
        started = len(tools.calls("wait"))
        thread = _read(session, stream, "POST", menv.sse.url, json=body, headers=modern_headers("tools/call", "wait"))
        _wait_for(lambda: stream.body or stream.ended.is_set(), "the tools/call SSE stream to commit")
        assert stream.content_type.startswith("text/event-stream"), (stream.status, stream.error, bytes(stream.body))
        assert tools.calls("wait")[started:] == ["started"]
        token = session.token_for(menv.sse.url)
        session.complete()
        assert stream.ended.wait(DEADLINE), "the tools/call stream stayed open after the task ended"
        thread.join(DEADLINE)
        assert stream.error is None, stream.error
        _wait_for(lambda: "cancelled" in tools.calls("wait")[started:], "the tool to be cancelled")
        echo = modern_request("tools/call", {"name": "echo", "arguments": {"text": "after-cut"}})
        after = _post_with(session, token, menv.sse.url, echo, modern_headers("tools/call", "echo"))
    # the progress notification went out; the tool's result never did
    messages = stream.messages()
    assert [m.get("method") for m in messages] == ["notifications/progress"]
    assert tools.calls("wait")[started:] == ["started", "cancelled"]
    assert after.status_code == 401
    assert "after-cut" not in tools.calls("echo")


def test_f4_one_task_opening_sessions_stops_at_its_quota_and_others_still_get_one(menv: McpEnv) -> None:
    """``initialize`` beyond the owner's quota is refused with 429 ``too_many_requests`` (a JSON-RPC
    error), so one agent cannot fill the server's session table; another task still opens one."""
    greedy, other = menv.session(), menv.session()
    hello = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
    init = {"jsonrpc": "2.0", "id": 9, "method": "initialize", "params": hello}
    with menv.client(greedy) as http:
        opened = [legacy_session(http, menv.sse.url) for _ in range(DEFAULT_SESSIONS_PER_OWNER)]
        refused = http.post(menv.sse.url, json=init, headers=legacy_headers())
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["data"] == {"error": "too_many_requests"} and refused.json()["id"] == 9
        http.delete(menv.sse.url, headers=legacy_headers(opened[0]))  # ending one makes room again
        assert legacy_session(http, menv.sse.url)
    with menv.client(other) as http:
        assert legacy_session(http, menv.sse.url)  # positive control: another task is unaffected
