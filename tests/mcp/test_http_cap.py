"""``tether.mcp.http_cap``: an HTTP upstream's responses are bounded while they stream (real HTTP, loopback)."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.mcp.http_cap import _EVENT_END, ResponseCap, ResponseTooLarge, _events
from tether.web.server import ServerThread, free_port

LIMIT = 10_000
CHUNK = 4096
#: the Accept-Encoding of every request the server saw
SEEN: list[str] = []


async def app(scope: Any, receive: Any, send: Any) -> None:
    """``/json?size=N``: an N-byte body in 4 KiB chunks; ``/sse?events=K&size=N&sep=crlf``: K events
    of N data bytes each; ``/gzip``: a small gzip-coded body whatever was asked for."""
    if scope["type"] != "http":
        return
    SEEN.append(dict(scope["headers"]).get(b"accept-encoding", b"").decode())
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    path = scope["path"]
    if path == "/gzip":
        head = [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": gzip.compress(b"{}" * 10)})
        return
    size = int(query.get("size", "0"))
    if path == "/json":
        body = b"x" * size
        parts = [body[i : i + CHUNK] for i in range(0, size, CHUNK)] or [b""]
        content_type = b"application/json"
    else:
        end = b"\r\n\r\n" if query.get("sep") == "crlf" else b"\n\n"
        parts = [b"data: " + b"y" * size + end for _ in range(int(query["events"]))]
        content_type = b"text/event-stream"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})
    for part in parts:
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    port = free_port()
    server = ServerThread(app, port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def fetch(url: str) -> tuple[int, int]:
    """Bytes read through a capped client, and the cap's overflow count (raises what reading raised)."""
    cap = ResponseCap(LIMIT)

    async def run() -> int:
        async with (
            httpx2.AsyncClient(event_hooks=cap.hooks, trust_env=False) as client,
            client.stream("GET", url) as response,
        ):
            return len(await response.aread())

    try:
        return asyncio.run(run()), cap.overflows
    except ResponseTooLarge:
        assert cap.overflows in (0, 1)
        raise


def test_a_json_body_at_the_limit_is_read_one_over_is_refused(url: str) -> None:
    assert fetch(f"{url}/json?size={LIMIT}") == (LIMIT, 0)  # positive control
    with pytest.raises(ResponseTooLarge, match=f"more than {LIMIT} bytes"):
        fetch(f"{url}/json?size={LIMIT + 1}")
    with pytest.raises(ResponseTooLarge):  # a far larger one is stopped the same, not read to its end
        fetch(f"{url}/json?size={LIMIT * 100}")


def test_the_refusal_is_what_the_sdk_turns_into_an_error_answer() -> None:
    """The SDK resolves the pending request on httpx2.StreamError (JSON body) and httpx2.SSEError (SSE)."""
    refusal = ResponseTooLarge("x")
    assert isinstance(refusal, httpx2.StreamError) and isinstance(refusal, httpx2.SSEError)


@pytest.mark.parametrize("sep", ["lf", "crlf"])
def test_an_sse_stream_is_bounded_per_event_not_in_all(url: str, sep: str) -> None:
    size = LIMIT // 2
    read, overflows = fetch(f"{url}/sse?events=50&size={size}&sep={sep}")  # 25 times the limit in all
    assert overflows == 0 and read > LIMIT * 20
    with pytest.raises(ResponseTooLarge):
        fetch(f"{url}/sse?events=2&size={LIMIT + 1}&sep={sep}")


def test_a_compressed_response_is_refused_and_identity_is_asked_for(url: str) -> None:
    SEEN.clear()
    with pytest.raises(ResponseTooLarge, match="compressed"):
        fetch(f"{url}/gzip")
    assert SEEN == ["identity"]
    assert fetch(f"{url}/json?size=10") == (10, 0)  # positive control on the same server


@given(st.lists(st.sampled_from([b"d", b"data: xyz", b"\n", b"\r", b"\r\n"]), max_size=40), st.data())
def test_any_chunking_measures_the_events_a_whole_read_would(parts: list[bytes], data: st.DataObject) -> None:
    """The largest event seen chunk by chunk is the largest of the whole stream (up to the two bytes of
    an event end that straddles two chunks), so no chunking lets an event past the limit."""
    stream = b"".join(parts)
    whole = max((len(event) for event in _EVENT_END.split(stream)), default=0)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    biggest, held, tail = 0, 0, b""
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        seen, held, tail = _events(tail, stream[start:end], held)
        biggest = max(biggest, seen)
    assert whole <= biggest <= whole + 2
