"""``web.admission``: a request takes a slot once its body has arrived (a slow-body attack cannot
hold the slots), a body that does not arrive in time is refused 400 ``invalid_request`` with the
connection closed, and the endpoint reads the body exactly as the client sent it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from tether.web.admission import AdmissionLimit

pytestmark = pytest.mark.anyio


class _Echo:
    """Reads the whole body through the channel it is given and answers its length and first bytes."""

    def __init__(self) -> None:
        self.seen: list[Message] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            self.seen.append(message)
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        payload = json.dumps({"length": len(body), "head": body[:16].decode()}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})


def _scope(method: str = "POST", path: str = "/token") -> Scope:
    return {"type": "http", "method": method, "path": path, "headers": [], "query_string": b"", "root_path": ""}


def _chunks(*parts: bytes, stall: bool = False) -> Receive:
    queue = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1 or stall} for i, p in enumerate(parts)]

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        await asyncio.sleep(3600)  # the client stalls
        raise AssertionError("unreachable")

    return receive


async def _call(app: Any, scope: Scope, receive: Receive) -> tuple[int, dict[str, str], bytes]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode().lower(): v.decode() for k, v in start.get("headers", [])}
    return start["status"], headers, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def _limit(app: Any, **kwargs: Any) -> AdmissionLimit:
    return AdmissionLimit(app, limit=1, exempt=frozenset({"/healthz"}), prebuffer=64, **kwargs)


async def test_a_body_in_several_chunks_reaches_the_endpoint_whole() -> None:
    echo = _Echo()
    status, _, body = await _call(_limit(echo), _scope(), _chunks(b"grant_", b"type=x", b"&a=1"))
    assert status == 200 and json.loads(body) == {"length": 16, "head": "grant_type=x&a=1"}


async def test_a_body_larger_than_the_prebuffer_still_reaches_the_endpoint_whole() -> None:
    echo = _Echo()
    parts = [b"x" * 50] * 4  # 200 bytes against a prebuffer of 64: the endpoint reads on past it
    status, _, body = await _call(_limit(echo), _scope(), _chunks(*parts))
    assert status == 200 and json.loads(body)["length"] == 200


async def test_a_stalled_body_is_refused_400_and_the_connection_closed() -> None:
    echo = _Echo()
    status, headers, body = await _call(_limit(echo, body_seconds=0.05), _scope(), _chunks(b"grant_type=", stall=True))
    assert status == 400 and json.loads(body)["error"] == "invalid_request"
    assert headers["connection"] == "close"
    assert echo.seen == []  # the endpoint never ran


async def test_stalled_bodies_hold_no_slot() -> None:
    echo = _Echo()
    limit = _limit(echo, body_seconds=5)
    stalled = [asyncio.create_task(_call(limit, _scope(), _chunks(b"a=", stall=True))) for _ in range(5)]
    await asyncio.sleep(0.05)
    assert limit.in_flight == 0
    status, _, _ = await _call(limit, _scope(), _chunks(b"a=1"))  # limit=1, yet it is served
    assert status == 200
    for task in stalled:
        task.cancel()
    await asyncio.gather(*stalled, return_exceptions=True)


async def test_a_client_that_leaves_mid_body_is_handed_to_the_endpoint_as_it_left() -> None:
    echo = _Echo()

    queue: list[Message] = [{"type": "http.request", "body": b"a=", "more_body": True}, {"type": "http.disconnect"}]

    async def receive() -> Message:
        return queue.pop(0)

    async def send(message: Message) -> None:
        raise AssertionError("nothing is answered to a client that left")

    await _limit(echo)(_scope(), receive, send)
    assert [m["type"] for m in echo.seen] == ["http.request", "http.disconnect"]


async def test_get_and_exempt_paths_are_not_buffered() -> None:
    echo = _Echo()
    limit = _limit(echo, body_seconds=0.01)
    # a GET's (empty) body is left to the endpoint: nothing waits on it at admission
    status, _, _ = await _call(limit, _scope("GET", "/jwks"), _chunks(b""))
    assert status == 200
    status, _, _ = await _call(limit, _scope("POST", "/healthz"), _chunks(b"x"))
    assert status == 200


async def test_the_deadline_cuts_only_the_late_reads_and_the_timer_stops_when_none_wait() -> None:
    echo = _Echo()
    limit = _limit(echo, body_seconds=0.1)
    late = asyncio.create_task(_call(limit, _scope(), _chunks(b"a=", stall=True)))
    on_time = [await _call(limit, _scope(), _chunks(b"a=1")) for _ in range(3)]
    status, _, _ = await late
    assert status == 400 and [s for s, _, _ in on_time] == [200, 200, 200]
    await asyncio.sleep(0.25)
    assert limit._deadlines._waiting == {} and limit._deadlines._timer is None


async def test_a_cancellation_from_elsewhere_is_not_taken_for_the_deadline() -> None:
    echo = _Echo()
    limit = _limit(echo, body_seconds=30)
    call = asyncio.create_task(_call(limit, _scope(), _chunks(b"a=", stall=True)))
    await asyncio.sleep(0.02)
    call.cancel()  # the server shutting down, say
    with pytest.raises(asyncio.CancelledError):
        await call
    assert limit._deadlines._waiting == {}
