"""Review of the issue-20 hot path (``web.direct_route``, ``web.forms.parse_pairs``), attacked from outside.

``POST /token`` is now answered by ``DirectRoute`` inside the error middleware and the admission
limit, past Starlette's router. The claim under test: every request gets the answer, headers,
audit record, refusal metric and admission accounting the routed endpoint gave. The same running
STS answers each request twice — with the direct route and with it taken out of the middleware
stack (the router then serves ``/token`` as before) — and the two answers must match.

Findings (each test names it): the direct route matched ``scope["path"]`` where the router matches
the path below ``root_path`` (a deployment mounted under a prefix equal to ``/token`` got the token
endpoint where the router answers 404); a client that hung up mid-body made every body-reading
endpoint log an "unexpected error" traceback (twice, with uvicorn's) instead of refusing the request.
Found and fixed in ``web.admission`` after the review: a request whose body never ended held its
admission slot for ever (now the body is read before a slot is taken, within a deadline).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message

from helpers import AGENT, JWT, TOKEN_EXCHANGE, Client, RunningSts, create_task, make_deployment, serving
from tether.clock import ManualClock
from tether.config import load_config
from tether.metrics import REGISTRY
from tether.web import forms
from tether.web.admission import AdmissionLimit
from tether.web.direct_route import DirectRoute
from tether.web.errors import handle_http, handle_unexpected
from tether.web.forms import parse_pairs
from tether.web.json_response import CompactJSONResponse

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


# -- the direct route against a toy app: root_path ----------------------------------------------


async def _where(request: Request) -> Response:
    return JSONResponse({"path": request.url.path, "routed": "route" in request.scope})


def _toy(*, direct: bool) -> Starlette:
    middleware = [Middleware(DirectRoute, path="/token", method="POST", endpoint=_where, on_http_error=handle_http)]
    return Starlette(
        routes=[Route("/token", _where, methods=["POST"])],
        middleware=middleware if direct else [],
        exception_handlers={HTTPException: handle_http, Exception: handle_unexpected},
    )


async def _toy_answer(app: Starlette, path: str, *, root_path: str) -> tuple[int, str]:
    transport = httpx.ASGITransport(app=app, root_path=root_path, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://sts.test") as client:
        response = await client.post(path)
    return response.status_code, response.json().get("error", "") if response.status_code != 200 else ""


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("root_path", "path"),
    [
        ("", "/token"),
        ("/token", "/token"),
        ("/token", "/token/token"),
        ("/sts", "/sts/token"),
        ("/sts", "/token"),
        ("/tok", "/token"),
        ("/token", "/tokentoken"),
    ],
)
async def test_review_direct_route_matches_the_path_the_router_matches_under_a_root_path(root_path: str, path: str) -> None:
    # the router matches the path below ``root_path`` (``get_route_path``); under a mount or a
    # server ``--root-path`` equal to ``/token`` the direct route answered a path the router 404s
    assert await _toy_answer(_toy(direct=True), path, root_path=root_path) == await _toy_answer(
        _toy(direct=False), path, root_path=root_path
    )


@pytest.mark.anyio
async def test_review_direct_route_still_serves_under_a_root_path() -> None:
    # the point of the change: a prefixed deployment (uvicorn --root-path) takes the short way too
    transport = httpx.ASGITransport(app=_toy(direct=True), root_path="/sts")
    async with httpx.AsyncClient(transport=transport, base_url="http://sts.test") as client:
        response = await client.post("/sts/token")
    assert response.status_code == 200 and response.json() == {"path": "/sts/token", "routed": False}


async def _raw(app: Starlette, scope: dict[str, Any], inbox: list[Message]) -> list[Message]:
    sent: list[Message] = []
    pending = list(inbox)

    async def receive() -> Message:
        return pending.pop(0) if pending else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


_WS = {"type": "websocket", "path": "/token", "raw_path": b"/token", "root_path": "", "headers": [], "query_string": b"",
       "scheme": "ws", "server": ("sts.test", 80), "client": ("192.0.2.1", 4000), "subprotocols": []}  # fmt: skip


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("scope", "inbox"),
    [
        (_WS, [{"type": "websocket.connect"}]),
        ({"type": "lifespan", "asgi": {"version": "3.0"}}, [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]),
    ],
    ids=["websocket /token", "lifespan"],
)
async def test_review_direct_route_passes_other_scope_types_on(scope: dict[str, Any], inbox: list[Message]) -> None:
    direct = await _raw(_toy(direct=True), dict(scope), inbox)
    assert direct == await _raw(_toy(direct=False), dict(scope), inbox)
    assert direct and direct[0]["type"] in ("websocket.close", "lifespan.startup.complete")


def test_review_compact_json_refusal_leaves_the_shared_encoder_unchanged() -> None:
    # the token answer's encoder is built once: a refused body (NaN) must not spoil the next answer
    with pytest.raises(ValueError):
        CompactJSONResponse({"a": [math.nan]})
    good = {"access_token": "t", "expires_in": 300, "scope": "wiki:read \u00e9"}
    assert CompactJSONResponse(good).body == JSONResponse(good).body


# -- the real STS, answered with and without the direct route ----------------------------------


def _stack(app: Starlette) -> list[object]:
    if app.middleware_stack is None:  # built on the first request; build it now (no request is in flight)
        app.middleware_stack = app.build_middleware_stack()
    nodes: list[object] = []
    node: object = app.middleware_stack
    while node is not None:
        nodes.append(node)
        node = getattr(node, "app", None)
    return nodes


def _admission(app: Starlette) -> AdmissionLimit:
    return next(n for n in _stack(app) if isinstance(n, AdmissionLimit))


@contextlib.contextmanager
def _routed(app: Starlette) -> Iterator[None]:
    """The same app with ``DirectRoute`` taken out of its middleware (the stack is rebuilt on the next request)."""
    kept = list(app.user_middleware)
    app.user_middleware[:] = [m for m in kept if getattr(m, "cls", None) is not DirectRoute]
    app.middleware_stack = None
    try:
        yield
    finally:
        app.user_middleware[:] = kept
        app.middleware_stack = None


def _refusal_counts() -> dict[tuple[str, str], float]:
    counts: dict[tuple[str, str], float] = {}
    for metric in REGISTRY.collect():
        if metric.name == "tether_refusals":
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    counts[(sample.labels["endpoint"], sample.labels["error"])] = sample.value
    return counts


_TOKEN_FIELDS = ("access_token", "refresh_token", "task", "expires_at", "issued_at")


def _body(response: httpx.Response) -> object:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text
    if isinstance(body, dict):
        return {k: ("<value>" if k in _TOKEN_FIELDS else v) for k, v in body.items()}
    return body


def _masked(reason: object) -> object:
    """A reason with the key thumbprints and ids of this run's fresh keys and tasks masked."""
    return _IDS.sub("<id>", reason) if isinstance(reason, str) else reason


_IDS = re.compile(r"[A-Za-z0-9_-]{22,}")


@dataclass(frozen=True)
class Answer:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: object
    audit: tuple[tuple[object, ...], ...]
    refusals: tuple[tuple[tuple[str, str], float], ...]
    in_flight: int


def _answer(sts: RunningSts, send: Callable[[RunningSts], httpx.Response]) -> Answer:
    mark = max((r.seq for r in sts.audit()), default=0)
    before = _refusal_counts()
    response = send(sts)
    time.sleep(0.05)  # a refusal is audited before its answer; this only lets a stray late write show
    records = [r for r in sts.audit() if r.seq > mark]
    after = _refusal_counts()
    volatile = {"date", "dpop-nonce", "content-length"}
    headers = tuple(sorted((k, v) for k, v in response.headers.items() if k not in volatile))
    headers += (("dpop-nonce?", str("dpop-nonce" in response.headers)),)
    audit = tuple((r.kind, r.outcome, r.error, r.principal, _masked(r.detail.get("reason")), r.detail.get("stage"),
                   tuple(sorted(r.detail))) for r in records)  # fmt: skip
    delta = tuple(sorted((k, v - before.get(k, 0.0)) for k, v in after.items() if v != before.get(k, 0.0)))
    return Answer(response.status_code, headers, _body(response), audit, delta, _admission(sts.sts.app).in_flight)


def _post(path: str, body: bytes | None = None, *, headers: dict[str, str] | None = None,
          method: str = "POST") -> Callable[[RunningSts], httpx.Response]:  # fmt: skip
    def send(sts: RunningSts) -> httpx.Response:
        with httpx.Client(timeout=10, trust_env=False) as http:
            return http.send(http.build_request(method, sts.url + path, content=body, headers=headers))

    return send


def _chunked(size: int) -> Callable[[RunningSts], httpx.Response]:
    def send(sts: RunningSts) -> httpx.Response:
        def chunks() -> Iterator[bytes]:
            for _ in range(size // 4096 + 1):
                yield b"a" * 4096

        with httpx.Client(timeout=10, trust_env=False) as http:
            return http.post(sts.token_url, content=chunks(), headers=FORM)

    return send


def _learn_nonce(client: Client) -> None:
    """The server's DPoP nonce, learnt as a standard client does: from a ``use_dpop_nonce`` challenge."""
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": "probe", "subject_token_type": JWT}
    response = client.post_token(form, retry_nonce=False)
    assert response.json()["error"] == "use_dpop_nonce" and client.nonce is not None, response.text


def _proved(form: dict[str, str], *, proof: str | None = None, nonce: bool = True) -> Callable[[RunningSts], httpx.Response]:
    """A token request with a DPoP proof (and the server's nonce); a ``subject_token`` of
    ``<svid>`` is a fresh SVID of the agent."""

    def send(sts: RunningSts) -> httpx.Response:
        client = Client(sts)
        if nonce:
            _learn_nonce(client)
        sent = {k: (sts.svid(AGENT) if v == "<svid>" else v) for k, v in form.items()}
        return client.post_token(sent, proof=proof, retry_nonce=False)

    return send


def _session(sts: RunningSts) -> httpx.Response:
    task = create_task(sts)
    return Client(sts).session(task["id"])


def _replayed(sts: RunningSts) -> httpx.Response:
    """DPOP-12: a proof that was spent on an issuance, sent again."""
    task = create_task(sts)
    client = Client(sts)
    _learn_nonce(client)
    proof = client.proof()
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": sts.svid(AGENT), "subject_token_type": JWT, "task": task["id"]}
    assert client.post_token(form, proof=proof).status_code == 200
    return client.post_token({**form, "subject_token": sts.svid(AGENT)}, proof=proof)


_EXCHANGE = {"grant_type": TOKEN_EXCHANGE, "subject_token": "x", "subject_token_type": JWT}
_LATIN1 = {"Content-Type": "application/x-www-form-urlencoded; charset=latin-1"}
_SURROGATE = '[{"type":"tool_call","tool":"t","arguments":{"q":"\\ud800"}}]'

REQUESTS: dict[str, Callable[[RunningSts], httpx.Response]] = {
    "empty form": _post("/token", b"", headers=FORM),
    "field without =": _post("/token", b"grant_type", headers=FORM),
    "empty field": _post("/token", b"a=1&&b=2", headers=FORM),
    "not utf-8 escape": _post("/token", b"grant_type=%FF", headers=FORM),
    "not utf-8 body": _post("/token", b"grant_type=\xff", headers=FORM),
    "repeated grant_type": _post("/token", b"grant_type=a&grant_type=b", headers=FORM),
    "65 fields": _post("/token", b"&".join([b"a=1"] * 65), headers=FORM),
    "no grant_type": _post("/token", b"scope=a+b", headers=FORM),
    "unknown grant_type": _post("/token", b"grant_type=urn%3Ax", headers=FORM),
    "json body": _post("/token", b'{"grant_type":"x"}', headers={"Content-Type": "application/json"}),
    "no content type": _post("/token", b"grant_type=x"),
    "form with charset": _post("/token", b"grant_type=x", headers=_LATIN1),
    "declared too large": _post("/token", b"a=" + b"b" * 70_000, headers=FORM),
    "chunked too large": _chunked(70_000),
    "GET /token": _post("/token", method="GET"),
    "HEAD /token": _post("/token", method="HEAD"),
    "PUT /token": _post("/token", b"grant_type=x", headers=FORM, method="PUT"),
    "OPTIONS /token": _post("/token", method="OPTIONS"),
    "lower-case post": _post("/token", b"grant_type=x", headers=FORM, method="post"),
    "POST /token/": _post("/token/", b"grant_type=x", headers=FORM),
    "POST //token": _post("//token", b"grant_type=x", headers=FORM),
    "POST /%74oken": _post("/%74oken", b"grant_type=x", headers=FORM),
    "POST /token%2F": _post("/token%2F", b"grant_type=x", headers=FORM),
    "POST /token%0A": _post("/token%0A", b"grant_type=x", headers=FORM),
    "POST /TOKEN": _post("/TOKEN", b"grant_type=x", headers=FORM),
    "POST /token;x": _post("/token;x", b"grant_type=x", headers=FORM),
    "POST /token?grant_type=x": _post("/token?grant_type=x", b"", headers=FORM),
    "DPOP-01 no proof": _post("/token", urlencode(_EXCHANGE).encode(), headers=FORM),
    "DPOP-10 proof without nonce": _proved(_EXCHANGE, nonce=False),
    "garbage subject token": _proved({**_EXCHANGE, "subject_token": "x.y.z"}),
    "DPOP-02 malformed proof": _proved(_EXCHANGE, proof="a.b.c"),
    "bad authorization_details": _proved({**_EXCHANGE, "authorization_details": _SURROGATE}),
    "session without task": _proved({**_EXCHANGE, "subject_token": "<svid>"}),
    "DPOP-12 replayed proof": _replayed,
    "session": _session,
}  # fmt: skip


@pytest.fixture(scope="module")
def hot_sts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSts]:
    # no monitor: its alerts land in the audit log whenever its detectors fire, not with a request
    config = make_deployment(tmp_path_factory.mktemp("hot-sts"), extra_toml="[monitor]\nenabled = false\n")
    with serving(config, ManualClock()) as server:
        yield server


@pytest.mark.parametrize("name", list(REQUESTS))
def test_review_direct_route_answers_audits_counts_and_admits_as_the_router_did(hot_sts: RunningSts, name: str) -> None:
    send = REQUESTS[name]
    app = hot_sts.sts.app
    direct = _answer(hot_sts, send)
    assert any(isinstance(n, DirectRoute) for n in _stack(app))  # control: the direct route served it
    with _routed(app):
        routed = _answer(hot_sts, send)
        assert not any(isinstance(n, DirectRoute) for n in _stack(app))  # control: the router served it
    assert direct == routed
    assert direct.status < 500 and direct.in_flight == 0


def _at_capacity(sts: RunningSts) -> tuple[int, str, int, tuple[tuple[tuple[str, str], float], ...]]:
    """With no slot free, what a token request gets. (A stalled body no longer holds a slot — the
    body is read before admission, ``tests/web/test_admission_body.py`` — so the limit is set to 0.)"""
    admission = _admission(sts.sts.app)
    limit, admission.limit = admission.limit, 0
    try:
        before = _refusal_counts()
        response = httpx.post(sts.token_url, content=b"grant_type=x", headers=FORM, trust_env=False)
        after = _refusal_counts()
    finally:
        admission.limit = limit
    _settled(sts)
    delta = tuple(sorted((k, v - before.get(k, 0.0)) for k, v in after.items() if v != before.get(k, 0.0)))
    return response.status_code, response.json()["error"], admission.in_flight, delta


def test_review_the_direct_route_is_admitted_and_refused_at_capacity_like_the_router(hot_sts: RunningSts) -> None:
    # no way past the admission limit through the short route: at capacity the token request is
    # refused with 503 and counted as an admission refusal, exactly as through the router
    direct = _at_capacity(hot_sts)
    assert _app_has_direct_route(hot_sts)  # control
    with _routed(hot_sts.sts.app):
        routed = _at_capacity(hot_sts)
    assert direct == routed == (503, "temporarily_unavailable", 0, ((("admission", "temporarily_unavailable"), 1.0),))


def _app_has_direct_route(sts: RunningSts) -> bool:
    return any(isinstance(n, DirectRoute) for n in _stack(sts.sts.app))


# -- a client that hangs up mid-body -------------------------------------------------------------


def _hang_up(port: int, path: str, headers: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers
                     + b"Content-Length: 1000\r\n\r\ngrant_type=urn")  # fmt: skip
        time.sleep(0.2)  # the endpoint is waiting for the rest of the body


def _settled(sts: RunningSts) -> None:
    deadline = time.monotonic() + 5
    while _admission(sts.sts.app).in_flight and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.parametrize("path", ["/token", "/introspect", "/revoke"])
def test_review_a_client_hanging_up_mid_body_is_a_refused_request_not_an_unexpected_error(
    hot_sts: RunningSts, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    # before: ``ClientDisconnect`` from the body read reached the error middleware — an
    # "unexpected error" traceback from tether and "Exception in ASGI application" from uvicorn
    # for every connection any client cut (a cheap log flood), and no audit record of the refusal
    mark = max((r.seq for r in hot_sts.audit()), default=0)
    port = int(hot_sts.url.rsplit(":", 1)[1])
    with caplog.at_level(logging.ERROR):
        _hang_up(port, path, b"Content-Type: application/x-www-form-urlencoded\r\n")
        _settled(hot_sts)
        time.sleep(0.1)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    new = [r for r in hot_sts.audit() if r.seq > mark]
    assert [(r.outcome, r.error) for r in new] == [("refused", "invalid_request")]
    assert _admission(hot_sts.sts.app).in_flight == 0
    # control: the same endpoint still answers a client that stays
    response = httpx.post(hot_sts.url + path, content=b"grant_type=x", headers=FORM, trust_env=False)
    assert response.status_code in (400, 401) and response.json()["error"] != "server_error"


# -- admission: a body that never ends --------------------------------------------------------------


def test_review_stalled_bodies_do_not_lock_other_clients_out(tmp_path: Path) -> None:
    config = make_deployment(tmp_path)
    assert config.path is not None
    config.path.write_text(config.path.read_text().replace("[server]\n", "[server]\nmax_inflight = 4\n", 1))
    with serving(load_config(config.path), ManualClock()) as sts:
        port = int(sts.url.rsplit(":", 1)[1])
        stalled = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(4)]
        try:
            for sock in stalled:
                sock.sendall(b"POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded"
                             b"\r\nContent-Length: 100\r\n\r\ngrant_type=")  # fmt: skip
            time.sleep(1.0)
            assert httpx.get(sts.url + "/jwks", trust_env=False).status_code == 200
        finally:
            for sock in stalled:
                sock.close()


# -- the form-value memo --------------------------------------------------------------------------


def _memo() -> Any:
    return forms._decode_short


def test_review_memo_keeps_no_refusal_and_a_refusal_does_not_change_a_later_answer() -> None:
    before = _memo().cache_info()
    for _ in range(3):
        with pytest.raises(UnicodeDecodeError):
            parse_pairs("resource=https%3A%2F%2Fa%FF")
    after = _memo().cache_info()
    assert after.currsize == before.currsize
    assert after.misses - before.misses == 3  # each refusal decoded afresh: nothing was kept
    # the valid neighbour of the refused value decodes right, before and after the refusal
    assert parse_pairs("resource=https%3A%2F%2Fa%C3%BF") == [("resource", "https://a\u00ff")]


def test_review_memo_is_bounded_in_entries_and_never_holds_a_long_value() -> None:
    for i in range(5_000):
        parse_pairs(f"resource=https%3A%2F%2Fs{i}.example&scope=a+b{i}")
    assert _memo().cache_info().currsize <= 512
    long = "x%20" * 100  # 400 characters: decoded, never memoised
    misses = _memo().cache_info().misses
    assert parse_pairs("a=" + long) == [("a", "x " * 100)]
    assert _memo().cache_info().misses == misses  # the long value did not go through the memo at all


@pytest.mark.parametrize(
    ("warm", "text", "pairs"),
    [
        ("a=%2f", "a=%2F", [("a", "/")]),
        ("a=%20", "a=+", [("a", " ")]),
        ("a=%2B", "a=+", [("a", " ")]),
        ("a=+", "a=%2B", [("a", "+")]),
        ("a=%25%32%46", "a=%252F", [("a", "%2F")]),
        ("a=%C3%A9", "a=%c3%a9", [("a", "\u00e9")]),
    ],
)
def test_review_memo_one_requests_decoding_never_answers_for_anothers(
    warm: str, text: str, pairs: list[tuple[str, str]]
) -> None:
    parse_pairs(warm)
    assert parse_pairs(text) == pairs
