"""Issue 12 finding 6: ``TetherMiddleware`` verifies WebSocket connections and refuses unknown scope types.

Before the fix every non-``http`` scope went straight to the app: a WebSocket route was
open to anyone. A Starlette app with WebSocket routes runs under uvicorn (with the
``websockets`` library, so it speaks RFC 6455) behind the middleware, trusting the
module's STS; the client is the ``websockets`` sync client on loopback. The token and a
DPoP proof ride on the opening handshake: ``htm`` ``GET``, ``htu`` the ``http`` URI of
that request. uvicorn offers the ``websocket.http.response`` extension, so a refusal is
the usual 401/403 JSON error with its ``WWW-Authenticate: DPoP`` challenge; the close
fallback for servers without it and unknown scope types are exercised at the ASGI level.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from rskit import Env, hop_token
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import WebSocketRoute
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from helpers import AGENT, SVC_B, ServerThread, free_port
from tether.agent.proof import DPoPKey
from tether.resource import ResourceSettings, TetherMiddleware, Verifier, principal_of, require_scope
from tether.resource.middleware import UnsupportedScope


async def _whoami(websocket: WebSocket) -> None:
    principal = principal_of(websocket)
    await websocket.accept()
    await websocket.send_json({"agent": principal.agent, "scopes": sorted(principal.scopes), "jkt": principal.jkt})
    await websocket.close()


async def _admin(websocket: WebSocket) -> None:
    require_scope(websocket, "wiki:admin")  # before accept: refused as 403 insufficient_scope
    await _whoami(websocket)


@dataclass(frozen=True)
class Socket:
    url: str  # the http(s) URL: the resource, and the proof's htu
    token: str
    key: DPoPKey

    def ws(self, path: str) -> str:
        return "ws" + self.url.removeprefix("http") + path


@pytest.fixture(scope="module")
def sock(env: Env) -> Iterator[Socket]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # service B's identity is registered at the STS, so it may follow the revocation feed
    verifier = Verifier(ResourceSettings(issuer=env.sts.url, resource=url), identity=env.sts.identity(SVC_B))
    routes = [WebSocketRoute("/ws", _whoami), WebSocketRoute("/ws/admin", _admin)]
    thread = ServerThread(Starlette(routes=routes, middleware=[Middleware(TetherMiddleware, verifier=verifier)]), port).start()
    try:
        token, key = hop_token(env.sts, env.task(audiences=[url])["id"], url)
        yield Socket(url, token, key)
    finally:
        thread.stop()


def _headers(sock: Socket, path: str, *, proof: str | None = None, htu: str | None = None) -> dict[str, str]:
    proof = proof or sock.key.proof("GET", htu or sock.url + path, access_token=sock.token)
    return {"Authorization": f"DPoP {sock.token}", "DPoP": proof}


def _open(sock: Socket, path: str, headers: dict[str, str] | None) -> dict[str, Any]:
    with connect(sock.ws(path), additional_headers=headers, proxy=None, open_timeout=10) as conn:
        message = conn.recv(timeout=10)
    value: dict[str, Any] = json.loads(message)
    return value


def _refused(sock: Socket, path: str, headers: dict[str, str] | None, status: int, error: str | None) -> None:
    with pytest.raises(InvalidStatus) as caught:
        _open(sock, path, headers)
    response = caught.value.response
    assert response.status_code == status
    challenge = response.headers["WWW-Authenticate"]
    # RFC 6750 §3: a Bearer-scheme request gets the Bearer challenge (certificate-bound tokens use it, RFC 8705 §3)
    bearer = (headers or {}).get("Authorization", "").startswith("Bearer ")
    assert challenge.startswith("Bearer " if bearer else "DPoP "), challenge
    if error is None:
        assert "error=" not in challenge  # RFC 6750 §3.1: no credentials, no error code
    else:
        assert f'error="{error}"' in challenge and json.loads(response.body)["error"] == error


def test_control_valid_token_and_proof_connect_and_the_app_sees_the_principal(sock: Socket) -> None:
    seen = _open(sock, "/ws", _headers(sock, "/ws"))
    assert seen == {"agent": AGENT, "scopes": ["wiki:admin", "wiki:read", "wiki:write"], "jkt": sock.key.jkt}


def test_no_token_refused(sock: Socket) -> None:
    _refused(sock, "/ws", None, 401, None)
    assert _open(sock, "/ws", _headers(sock, "/ws"))["agent"] == AGENT


def test_DPOP_12_replayed_handshake_proof_refused(sock: Socket) -> None:
    headers = _headers(sock, "/ws")
    assert _open(sock, "/ws", headers)["agent"] == AGENT
    _refused(sock, "/ws", headers, 401, "invalid_dpop_proof")
    assert _open(sock, "/ws", _headers(sock, "/ws"))["agent"] == AGENT


def test_DPOP_08_proof_for_the_ws_uri_or_another_method_refused(sock: Socket) -> None:
    """The proof names the HTTP request that carries it: ``GET`` on the ``http`` URI, not ``ws://``."""
    _refused(sock, "/ws", _headers(sock, "/ws", htu=sock.ws("/ws")), 401, "invalid_dpop_proof")
    other = sock.key.proof("POST", sock.url + "/ws", access_token=sock.token)
    _refused(sock, "/ws", _headers(sock, "/ws", proof=other), 401, "invalid_dpop_proof")
    assert _open(sock, "/ws", _headers(sock, "/ws"))["agent"] == AGENT


def test_DPOP_15_token_without_its_proof_or_as_bearer_refused(sock: Socket) -> None:
    _refused(sock, "/ws", {"Authorization": f"DPoP {sock.token}"}, 401, "invalid_dpop_proof")
    bearer = {**_headers(sock, "/ws"), "Authorization": f"Bearer {sock.token}"}
    _refused(sock, "/ws", bearer, 401, "invalid_token")
    assert _open(sock, "/ws", _headers(sock, "/ws"))["agent"] == AGENT


def test_insufficient_scope_raised_by_the_endpoint_before_accept_is_a_403(env: Env, sock: Socket) -> None:
    narrow, key = hop_token(env.sts, env.task(audiences=[sock.url])["id"], sock.url, scope="wiki:read")
    reader = Socket(sock.url, narrow, key)
    _refused(reader, "/ws/admin", _headers(reader, "/ws/admin"), 403, "insufficient_scope")
    assert "wiki:admin" in _open(sock, "/ws/admin", _headers(sock, "/ws/admin"))["scopes"]  # control


# -- the ASGI level: the close fallback and scope types ------------------------------------------------------
class _App:
    def __init__(self) -> None:
        self.scopes: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope["type"])


def _run(middleware: TetherMiddleware, scope: Scope) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    return sent


def _ws_scope(**extra: Any) -> Scope:
    return {"type": "websocket", "path": "/ws", "raw_path": b"/ws", "query_string": b"", "headers": [],
            "client": ("127.0.0.1", 1), "scheme": "ws", **extra}  # fmt: skip


def test_without_the_denial_extension_a_refused_websocket_is_closed_with_1008() -> None:
    app = _App()
    settings = ResourceSettings(issuer="http://127.0.0.1:9", resource="http://127.0.0.1:9", revocation_feed=False)
    middleware = TetherMiddleware(app, Verifier(settings))
    assert _run(middleware, _ws_scope()) == [{"type": "websocket.close", "code": 1008, "reason": "invalid_token"}]
    denied = _run(middleware, _ws_scope(extensions={"websocket.http.response": {}}))
    assert [m["type"] for m in denied] == ["websocket.http.response.start", "websocket.http.response.body"]
    assert denied[0]["status"] == 401
    assert app.scopes == [], "a refused connection never reached the app"


@pytest.mark.parametrize("kind", ["webtransport", "http2.stream", "WEBSOCKET", ""])
def test_unknown_scope_type_refused_before_the_app(kind: str) -> None:
    app = _App()
    settings = ResourceSettings(issuer="http://127.0.0.1:9", resource="http://127.0.0.1:9", revocation_feed=False)
    middleware = TetherMiddleware(app, Verifier(settings))
    with pytest.raises(UnsupportedScope):
        _run(middleware, {"type": kind, "path": "/ws", "headers": []})
    assert app.scopes == []
    _run(middleware, {"type": "lifespan"})  # control: the same middleware passes lifespan through
    assert app.scopes == ["lifespan"]
