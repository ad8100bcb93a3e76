"""Shared pieces for the resource-SDK tests: a protected Starlette app, servers, token helpers.

Everything is real: the STS from ``helpers`` (uvicorn on loopback, SQLite), the
resource app under ``tether.web.server.ServerThread``, the crypto. Nothing is mocked.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from joserfc.jwk import ECKey
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from helpers import JWT, Client, RunningSts, admin_token, create_task, make_deployment
from tether.agent.proof import DPoPKey
from tether.clock import ManualClock
from tether.config import Config
from tether.errors import AccessDenied
from tether.resource import Principal, TetherMiddleware, Verifier, principal_of, require_scope, requires
from tether.rules.jws import b64url_decode, strict_json_loads
from tether.sts.bootstrap import build_sts
from tether.web.server import ServerThread

__all__ = [
    "ACTOR_GATE",
    "OWN_KID",
    "Env",
    "Recorder",
    "RestartableSts",
    "Served",
    "X",
    "Y",
    "actor_exchange",
    "call",
    "claims_of",
    "hop_token",
    "protected_app",
    "serve",
    "wait_until",
]

X = "http://svc-b.test"
Y = "http://svc-c.test"
OWN_KID = "test-owned-key"

#: The one service the ``/b-only`` route lets act on a subject's behalf (TX-05 demo).
ACTOR_GATE = "spiffe://tether.local/svc/b"


def claims_of(token: str) -> dict[str, Any]:
    value: dict[str, Any] = strict_json_loads(b64url_decode(token.split(".")[1]))
    return value


def header_of(token: str) -> dict[str, Any]:
    value: dict[str, Any] = strict_json_loads(b64url_decode(token.split(".", maxsplit=1)[0]))
    return value


def _seen(principal: Principal) -> dict[str, Any]:
    return {
        "subject": principal.subject,
        "agent": principal.agent,
        "client_id": principal.client_id,
        "actor": principal.actor,
        "actors": list(principal.actors),
        "scopes": sorted(principal.scopes),
        "task": principal.task,
        "purpose": principal.purpose,
        "audience": principal.audience,
        "jti": principal.jti,
        "jkt": principal.jkt,
        "expires_at": principal.expires_at,
    }


async def _whoami(request: Request) -> Response:
    return JSONResponse(_seen(principal_of(request)))


async def _write(request: Request) -> Response:
    return JSONResponse(_seen(require_scope(request, "wiki:write")))


@requires("wiki:admin")
async def _admin(request: Request) -> Response:
    return JSONResponse(_seen(principal_of(request)))


async def _b_only(request: Request) -> Response:
    """An authorisation helper keyed on the *current* actor only (RFC 8693 §4.1, TX-05)."""
    principal = principal_of(request)
    if principal.actor != ACTOR_GATE:
        raise AccessDenied(f"only `{ACTOR_GATE}` may call this on a subject's behalf")
    return JSONResponse(_seen(principal))


async def _public(request: Request) -> Response:
    return JSONResponse({"public": True, "principal": getattr(request.state, "principal", None) is not None})


async def _doc(request: Request) -> Response:
    return JSONResponse({"name": request.path_params["name"], **_seen(principal_of(request))})


class Recorder:
    """Outermost ASGI layer: remembers every request's method, path and headers."""

    def __init__(self, app: ASGIApp, log: list[dict[str, Any]]) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers: dict[str, list[str]] = {}
            for name, value in scope["headers"]:
                headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
            self.log.append({"method": scope["method"], "path": scope["path"], "headers": headers})
        await self.app(scope, receive, send)


def protected_app(verifier: Verifier, *, log: list[dict[str, Any]] | None = None) -> Starlette:
    routes = [
        Route("/whoami", _whoami, methods=["GET", "POST"]),
        Route("/write", _write, methods=["POST"]),
        Route("/admin", _admin),
        Route("/b-only", _b_only),
        Route("/public", _public),
        Route("/docs/{name}", _doc),
    ]
    middleware = [
        Middleware(Recorder, log=log if log is not None else []),
        Middleware(TetherMiddleware, verifier=verifier, public_paths=["/public"]),
    ]
    return Starlette(routes=routes, middleware=middleware)


@dataclass
class Served:
    url: str
    verifier: Verifier
    thread: ServerThread
    log: list[dict[str, Any]] = field(default_factory=list)

    def fresh(self) -> bool:
        feed = self.verifier.feed
        return feed is not None and feed.fresh(self.verifier.clock.now())

    def wait_synced(self, timeout: float = 10.0) -> None:
        wait_until(self.fresh, timeout=timeout, what=f"{self.url} revocation feed in sync")


@contextlib.contextmanager
def serve(verifier: Verifier, port: int, *, sync: bool = True) -> Iterator[Served]:
    """Run the protected app for ``verifier`` on ``port`` until the block ends."""
    log: list[dict[str, Any]] = []
    thread = ServerThread(protected_app(verifier, log=log), port).start()
    served = Served(f"http://127.0.0.1:{port}", verifier, thread, log)
    try:
        if sync and verifier.feed is not None:
            served.wait_synced()
        yield served
    finally:
        thread.stop()


def wait_until(predicate: Callable[[], bool], *, timeout: float = 5.0, what: str = "condition", step: float = 0.02) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds (no latency is asserted)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(step)


def call(
    http: httpx.Client,
    method: str,
    url: str,
    token: str | None,
    key: DPoPKey | None,
    *,
    proof: str | None = None,
    scheme: str = "DPoP",
    nonce: str | None = None,
    extra_headers: list[tuple[str, str]] | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """One request with ``Authorization: <scheme> <token>`` and a fresh proof (or ``proof``)."""
    headers: list[tuple[str, str]] = []
    if token is not None:
        headers.append(("Authorization", f"{scheme} {token}"))
    if proof is None and key is not None:
        proof = key.proof(method, url, access_token=token, nonce=nonce)
    if proof is not None:
        headers.append(("DPoP", proof))
    headers += extra_headers or []
    return http.request(method, url, headers=headers, **kwargs)


def session_token(sts: RunningSts, task_id: str, key: DPoPKey | None = None) -> tuple[str, Client]:
    client = Client(sts, key)
    response = client.session(task_id)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"]), client


def hop_token(
    sts: RunningSts, task_id: str, audience: str, *, key: DPoPKey | None = None, scope: str | None = None
) -> tuple[str, DPoPKey]:
    """The agent's session token then a hop token for ``audience``, both bound to ``key``."""
    session, client = session_token(sts, task_id, key)
    extra = {"scope": scope} if scope else {}
    response = client.hop(session, audience, **extra)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"]), client.key


def hop_from(client: Client, session: str, audience: str, **extra: str) -> str:
    response = client.hop(session, audience, **extra)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def actor_exchange(
    sts: RunningSts, subject: str, actor: str, audience: str, *, key: DPoPKey | None = None
) -> tuple[str, DPoPKey]:
    """Service ``actor`` exchanges the token it received for one for ``audience`` (RFC 8693 actor_token)."""
    client = Client(sts, key)
    response = client.hop(subject, audience, actor_token=sts.svid(actor), actor_token_type=JWT)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"]), client.key


def complete_task(sts: RunningSts, task_id: str) -> None:
    client, token = admin_token(sts)
    response = client.api("POST", f"/tasks/{task_id}/complete", token)
    assert response.status_code == 200, response.text


class RestartableSts:
    """An STS whose server can be stopped and started again on the same data dir and port.

    ``running`` quacks like ``helpers.RunningSts`` (it *is* one), so ``Client``,
    ``admin_token`` and ``create_task`` work against it; after a restart its ``sts``
    and ``thread`` are the new instance's.
    """

    def __init__(self, directory: Path, *, extra_toml: str = "", clock: ManualClock | None = None) -> None:
        self.config: Config = make_deployment(directory, extra_toml=extra_toml)
        self.clock = clock or ManualClock()
        self.port = int(self.config.issuer.rsplit(":", 1)[1])
        self.running: RunningSts | None = None

    @property
    def url(self) -> str:
        return self.config.issuer

    def start(self, port: int | None = None) -> RunningSts:
        """Serve on the configured port (or ``port``, keeping the configured issuer)."""
        sts = build_sts(self.config, clock=self.clock)
        thread = ServerThread(sts.app, port or self.port).start()
        clients = self.running.clients if self.running is not None else []
        self.running = RunningSts(config=self.config, clock=self.clock, sts=sts, thread=thread, clients=clients)
        return self.running

    def stop(self) -> None:
        if self.running is not None:
            self.running.thread.stop()

    def close(self) -> None:
        if self.running is not None:
            for http in self.running.clients:
                http.close()
            self.running.clients.clear()
        self.stop()


class PortRedirect(httpx.BaseTransport):
    """Send requests for one loopback port to another (the URL, ``Host`` and proofs stay unchanged).

    Lets a test talk to a second STS instance that shares the data directory and the
    issuer URL while the issuer's own port is dead, so the resource server is really
    disconnected while the revocation is written.
    """

    def __init__(self, from_port: int, to_port: int) -> None:
        self._from, self._to = from_port, to_port
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.port == self._from:
            request.url = request.url.copy_with(port=self._to)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


def redirected_client(sts: RunningSts, to_port: int) -> Client:
    """A helpers ``Client`` for ``sts`` whose HTTP goes to ``to_port`` instead of the issuer's port."""
    client = Client(sts)
    client.http.close()
    sts.clients.remove(client.http)
    client.http = httpx.Client(transport=PortRedirect(int(sts.url.rsplit(":", 1)[1]), to_port), timeout=10.0, trust_env=False)
    sts.clients.append(client.http)
    return client


@dataclass
class Env:
    sts: RunningSts
    a: Served
    b: Served
    n: Served
    o: Served
    clock: ManualClock
    own_key: ECKey
    http: httpx.Client

    def task(self, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "audiences": [self.a.url, self.b.url, self.n.url, self.o.url, X, Y],
            "scopes": ["wiki:read", "wiki:write", "wiki:admin"],
            "max_depth": 4,
        }
        body.update(fields)
        return create_task(self.sts, **body)
