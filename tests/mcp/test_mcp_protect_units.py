"""Fast tests of the pieces under ``protect``: strict message parsing, the listing filter (JSON and SSE
framing, bounds, fail-closed), ``protect``'s arguments, and importing ``tether.mcp`` without the SDK."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from typing import Any

import anyio
import pytest

from tether.clock import ManualClock
from tether.errors import InvalidToken, OAuthError, TooManyRequests
from tether.mcp import protect
from tether.mcp.cut import watch as watch_principal
from tether.mcp.listing import FilterError, SseRewriter, filter_json
from tether.mcp.messages import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    PARSE_ERROR,
    JsonRpcRefusal,
    header_value,
    parse_message,
)
from tether.mcp.sessions import SessionOwners
from tether.resource import Principal, ResourceSettings, Verifier


# -- messages --------------------------------------------------------------------------------------
def test_a_request_a_notification_and_a_response_are_told_apart() -> None:
    request = parse_message(b'{"jsonrpc":"2.0","id":"a1","method":"tools/list"}')
    assert (request.is_request, request.method, request.request_id) == (True, "tools/list", "a1")
    note = parse_message(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
    assert (note.is_request, note.method, note.request_id) == (False, "notifications/initialized", None)
    reply = parse_message(b'{"jsonrpc":"2.0","id":3,"result":{}}')
    assert (reply.is_request, reply.method, reply.request_id) == (False, None, 3)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", PARSE_ERROR),
        (b"\xef\xbb\xbf{}", PARSE_ERROR),  # a BOM is not JSON text (RFC 8259 §8.1)
        (b'{"jsonrpc":"2.0","id":1,"method":"a","method":"b"}', PARSE_ERROR),
        (b'{"jsonrpc":"2.0","id":1,"method":"a","params":{"x":NaN}}', PARSE_ERROR),
        (b"[" * 100_000 + b"]" * 100_000, PARSE_ERROR),  # deeper than Python's parser: refused, not a crash
        (b"[]", INVALID_REQUEST),
        (b'"tools/call"', INVALID_REQUEST),
        (b'{"jsonrpc":"1.0","id":1,"method":"a"}', INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":true,"method":"a"}', INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":null,"method":"a"}', INVALID_REQUEST),
    ],
)
def test_MCP_15_bodies_that_are_not_one_strict_message_are_refused(body: bytes, code: int) -> None:
    with pytest.raises(JsonRpcRefusal) as caught:
        parse_message(body)
    assert caught.value.code == code
    assert caught.value.status == 400
    reply = json.loads(caught.value.body())
    assert reply["jsonrpc"] == "2.0" and "id" in reply and reply["error"]["code"] == code


def test_a_refusal_echoes_a_readable_id() -> None:
    with pytest.raises(JsonRpcRefusal) as caught:
        parse_message(b'{"jsonrpc":"1.0","id":"req-9","method":"a"}')
    assert json.loads(caught.value.body())["id"] == "req-9"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("echo", "echo"),
        ("=?base64?ZWNobw==?=", "echo"),
        ("=?base64?ZWNobw=?=", None),  # not base64
        ("=?base64?ZWNobx==?=", None),  # non-canonical trailing bits
        ("=?base64?/w==?=", None),  # not UTF-8
        (None, None),
    ],
)
def test_mcp_name_header_values_decode_as_the_spec_says(value: str | None, expected: str | None) -> None:
    assert header_value(value) == expected


# -- the listing filter ------------------------------------------------------------------------------
def _listing(request_id: object = 1, names: tuple[str, ...] = ("echo", "secret")) -> dict[str, Any]:
    tools = [{"name": n, "inputSchema": {"type": "object"}} for n in names]
    return {"jsonrpc": "2.0", "id": request_id, "result": {"tools": tools, "nextCursor": "c"}}


def _visible(name: str) -> bool:
    return name != "secret"


def _names(message: dict[str, Any]) -> list[str]:
    return [t["name"] for t in message["result"]["tools"]]


def test_json_listing_is_filtered_and_other_answers_pass_unchanged() -> None:
    body = json.dumps(_listing()).encode()
    filtered = json.loads(filter_json(body, _visible, 1))
    assert _names(filtered) == ["echo"] and filtered["result"]["nextCursor"] == "c"
    other = json.dumps({"jsonrpc": "2.0", "id": 1, "error": {"code": -1, "message": "x"}}).encode()
    assert filter_json(other, _visible, 1) == other
    assert filter_json(json.dumps(_listing(2)).encode(), _visible, 1) == json.dumps(_listing(2)).encode()


def test_a_listing_that_cannot_be_filtered_is_withheld() -> None:
    def undecided(name: str) -> bool:
        raise FilterError("policy cannot decide")

    withheld = json.loads(filter_json(json.dumps(_listing()).encode(), undecided, 1))
    assert withheld["error"]["code"] == INTERNAL_ERROR and "withheld" in withheld["error"]["message"]
    garbage = json.loads(filter_json(b"{not json", _visible, 1))
    assert garbage["error"]["code"] == INTERNAL_ERROR


def test_tool_entries_without_a_name_are_dropped() -> None:
    message = _listing()
    message["result"]["tools"] += [{"description": "no name"}, "not an object", {"name": 3}]
    assert _names(json.loads(filter_json(json.dumps(message).encode(), _visible, 1))) == ["echo"]


def _event(message: dict[str, Any], *, eol: str = "\r\n", event_id: str | None = None) -> bytes:
    lines = ["event: message"] + ([f"id: {event_id}"] if event_id else []) + [f"data: {json.dumps(message)}"]
    return (eol.join(lines) + eol + eol).encode()


def _feed_all(rewriter: SseRewriter, data: bytes, size: int) -> bytes:
    out = b"".join(rewriter.feed(data[i : i + size]) for i in range(0, len(data), size))
    return out + rewriter.close()


def _sse_messages(data: bytes) -> list[dict[str, Any]]:
    text = data.decode().replace("\r\n", "\n").replace("\r", "\n")
    found = []
    for block in text.split("\n\n"):
        payload = [line[5:].lstrip(" ") for line in block.split("\n") if line.startswith("data:")]
        if payload:
            found.append(json.loads("\n".join(payload)))
    return found


@pytest.mark.parametrize("eol", ["\r\n", "\n", "\r"])
@pytest.mark.parametrize("size", [1, 7, 10_000])
def test_sse_listing_is_rewritten_across_any_chunking_and_line_ending(eol: str, size: int) -> None:
    progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}
    stream = b": ping" + eol.encode() * 2 + _event(progress, eol=eol) + _event(_listing(), eol=eol, event_id="e-5")
    out = _feed_all(SseRewriter(_visible, 1), stream, size)
    messages = _sse_messages(out)
    assert messages[0] == progress
    assert _names(messages[1]) == ["echo"]
    assert b"id: e-5" in out  # the event id survives (resumption still works)
    assert out.startswith(b": ping" + eol.encode() * 2 + _event(progress, eol=eol))  # other events byte for byte


def test_sse_answers_to_other_requests_pass_byte_for_byte() -> None:
    stream = _event(_listing(request_id=2))
    assert _feed_all(SseRewriter(_visible, 1), stream, 5) == stream
    # with no target (a GET stream), any listing is filtered
    assert _names(_sse_messages(_feed_all(SseRewriter(_visible, None), stream, 5))[0]) == ["echo"]


def test_multi_line_data_is_joined_before_it_is_read() -> None:
    text = json.dumps(_listing(), indent=1)
    event = ("event: message\n" + "".join(f"data: {line}\n" for line in text.split("\n")) + "\n").encode()
    assert _names(_sse_messages(_feed_all(SseRewriter(_visible, 1), event, 3))[0]) == ["echo"]


def test_an_sse_event_over_the_limit_ends_the_stream_with_an_error() -> None:
    stream = _event(_listing(names=("echo", "secret", "x" * 500)))
    rewriter = SseRewriter(_visible, 1, limit=200)
    out = _feed_all(rewriter, stream, 64)
    assert rewriter.failed
    (message,) = _sse_messages(out)
    assert message["error"]["code"] == INTERNAL_ERROR and b"secret" not in out


def test_an_unterminated_listing_event_is_never_passed_unfiltered() -> None:
    stream = _event(_listing())[:-2]  # no blank line: SSE never dispatches it, tether never passes it
    out = _feed_all(SseRewriter(_visible, 1), stream, 10)
    assert b"secret" not in out
    plain = b"data: not json"
    assert _feed_all(SseRewriter(_visible, 1), plain, 4) == plain


# -- protect's arguments, and no SDK needed for a plain ASGI app ------------------------------------------
def _verifier(resource: str) -> Verifier:
    return Verifier(ResourceSettings(issuer="http://127.0.0.1:1", resource=resource, revocation_feed=False))


async def _app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never called
    raise AssertionError


def test_protect_checks_its_arguments() -> None:
    app = protect(_app, _verifier("http://127.0.0.1:9/mcp"))
    assert app.metadata_url == "http://127.0.0.1:9/.well-known/oauth-protected-resource/mcp"
    assert app.metadata_paths == {"/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"}
    with pytest.raises(ValueError, match="not served at /mcp"):
        protect(_app, _verifier("http://127.0.0.1:9/other"))
    with pytest.raises(TypeError, match="apply to an mcp SDK server"):
        protect(_app, _verifier("http://127.0.0.1:9/mcp"), stateless_http=True)
    root = protect(_app, _verifier("http://127.0.0.1:9"))  # an origin-only resource: metadata at the root
    assert root.metadata_url == "http://127.0.0.1:9/.well-known/oauth-protected-resource"


def test_tether_mcp_imports_and_protects_a_plain_asgi_app_without_the_mcp_sdk() -> None:
    script = textwrap.dedent(
        """
        import importlib.abc, sys

        class NoMcp(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("mcp", "mcp_types"):
                    raise ImportError("the mcp SDK is not installed")
                return None

        sys.meta_path.insert(0, NoMcp())
        from tether.mcp import protect
        from tether.resource import ResourceSettings, Verifier

        async def app(scope, receive, send):
            pass

        settings = ResourceSettings(issuer="http://127.0.0.1:1", resource="http://127.0.0.1:9/mcp", revocation_feed=False)
        protected = protect(app, Verifier(settings))
        assert protected.app is app
        assert not any(m.split(".")[0] in ("mcp", "mcp_types") for m in sys.modules), "the SDK was imported"
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def _principal(subject: str, task: str | None) -> Principal:
    return Principal(
        subject=subject, agent="agent", client_id="agent", scopes=frozenset(), task=task, purpose=None,
        actors=(), jti="j", audience="a", expires_at=0, jkt="k",
    )  # fmt: skip


def test_a_session_belongs_to_its_subject_agent_and_task() -> None:
    owners = SessionOwners(capacity=2)
    alice, alice_other_task, bob = _principal("alice", "t1"), _principal("alice", "t2"), _principal("bob", "t1")
    owners.bind("s1", alice)
    assert owners.allows("s1", alice)
    assert not owners.allows("s1", alice_other_task) and not owners.allows("s1", bob)
    assert not owners.allows("never-issued", alice)
    owners.bind("s1", bob)  # a named session is never re-bound to someone else
    assert owners.allows("s1", alice) and not owners.allows("s1", bob)
    owners.forget("s1")
    assert not owners.allows("s1", alice) and len(owners) == 0


def _open(owners: SessionOwners, sid: str, principal: Principal, ended: tuple[str, ...] = ()) -> None:
    owners.admit(principal, ended)
    owners.bind(sid, principal)
    owners.release(principal)


def test_f4_an_owner_over_its_quota_is_refused_and_never_evicts_another_owners_binding() -> None:
    clock = ManualClock()
    owners = SessionOwners(capacity=4, per_owner=2, idle_seconds=60, clock=clock.now)
    alice, bob, carol = _principal("alice", "t1"), _principal("bob", "t2"), _principal("carol", "t3")
    _open(owners, "a1", alice)
    _open(owners, "b1", bob)
    _open(owners, "b2", bob)
    with pytest.raises(TooManyRequests, match="already holds 2"):
        owners.admit(bob)  # bob's quota
    _open(owners, "a2", alice)  # positive control: alice had one of her two left
    with pytest.raises(TooManyRequests, match="maximum number of sessions"):
        owners.admit(carol)  # the server's cap: refused, not made room for by evicting anyone
    assert owners.allows("a1", alice) and owners.allows("b1", bob)
    owners.forget("b2")  # a DELETE makes room
    _open(owners, "c1", carol)
    assert owners.allows("c1", carol) and owners.allows("a1", alice)


def test_f4_concurrent_initializes_count_before_they_are_answered() -> None:
    owners = SessionOwners(per_owner=2)
    bob = _principal("bob", "t2")
    owners.admit(bob)
    owners.admit(bob)
    with pytest.raises(TooManyRequests):
        owners.admit(bob)
    owners.release(bob)
    owners.admit(bob)


def test_f4_bindings_of_ended_tasks_and_idle_sessions_make_room_but_an_open_stream_is_kept() -> None:
    clock = ManualClock()
    owners = SessionOwners(capacity=10, per_owner=2, idle_seconds=60, clock=clock.now)
    alice, bob = _principal("alice", "t1"), _principal("bob", "t2")
    _open(owners, "a1", alice)
    _open(owners, "a2", alice)
    _open(owners, "b1", bob)
    _open(owners, "b2", bob)
    owners.opened("b1")  # b1's GET stream stays open
    with pytest.raises(TooManyRequests):
        owners.admit(alice)
    owners.admit(alice, ended_tasks=("t1",))  # alice's task ended: its bindings are gone
    owners.release(alice)
    assert not owners.allows("a1", alice)
    clock.advance(120)
    owners.admit(_principal("carol", "t3"))  # prunes idle bindings
    assert owners.allows("b1", bob) and not owners.allows("b2", bob)  # an open stream keeps its session
    owners.closed("b1")
    assert owners.allows("b1", bob)


def test_a_stream_outliving_its_token_is_cut() -> None:
    """The watcher ends an open response once the token expires (the client reconnects with a fresh one)."""
    clock = ManualClock()
    settings = ResourceSettings(issuer="http://127.0.0.1:1", resource="http://127.0.0.1:9/mcp", revocation_feed=False)
    app = protect(_app, Verifier(settings, clock=clock), cut_interval=0.01)
    principal = _principal("alice", "t1")
    principal = Principal(**{**principal.__dict__, "expires_at": int(clock.now()) + 60})

    async def watch(advance: float) -> list[OAuthError]:
        cut: list[OAuthError] = []
        clock.advance(advance)
        with anyio.move_on_after(0.5) as scope:  # a bound on the test, not a latency assertion
            await watch_principal(app.verifier, principal, scope, cut, interval=app.cut_interval)
        return cut

    assert asyncio.run(watch(0)) == []  # positive control: a live token keeps its stream
    (reason,) = asyncio.run(watch(120))
    assert isinstance(reason, InvalidToken) and "expired" in reason.description
