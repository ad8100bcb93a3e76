"""Servers for the agent-SDK tests: tether-protected services, a plain host, bad metadata hosts.

Every app records the requests it receives (method, path, headers) in its ``log``, so
the tests can assert exactly what the agent sent where (MCP-03).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from helpers import AGENT, RunningSts, create_task
from tether.agent import Agent, DevIdentity
from tether.agent.identity import IdentitySource
from tether.agent.onward import Onward
from tether.identity.dev_issuer import DevTrustDomain
from tether.resource import TetherMiddleware, Verifier, principal_of
from tether.rules.jws import b64url_decode, strict_json_loads
from tether.web.server import ServerThread

__all__ = ["App", "Recorder", "claims_of", "metadata_app", "plain_app", "protected_app", "serve_app", "wait_until"]


def claims_of(token: str) -> dict[str, Any]:
    value: dict[str, Any] = strict_json_loads(b64url_decode(token.split(".")[1]))
    return value


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


@dataclass
class App:
    url: str
    thread: ServerThread
    log: list[dict[str, Any]] = field(default_factory=list)

    def requests(self, path: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.log if path is None or r["path"] == path]

    def tokens(self) -> list[str]:
        """Every access token this host was sent, whatever the scheme."""
        found = []
        for record in self.log:
            for value in record["headers"].get("authorization", []):
                found.append(value.split(" ", 1)[1] if " " in value else value)
        return found


@contextlib.contextmanager
def serve_app(app: Starlette, port: int, log: list[dict[str, Any]]) -> Iterator[App]:
    thread = ServerThread(app, port).start()
    try:
        yield App(f"http://127.0.0.1:{port}", thread, log)
    finally:
        thread.stop()


def _proof_view(request: Request) -> dict[str, Any]:
    proof = request.headers["dpop"]
    view: dict[str, Any] = strict_json_loads(b64url_decode(proof.split(".")[1]))
    return view


def protected_app(
    verifier: Verifier,
    log: list[dict[str, Any]],
    *,
    onward: tuple[str, IdentitySource, str] | None = None,
) -> Starlette:
    """A tether-protected service; with ``onward=(sts_url, identity, next_url)`` it also relays."""

    async def whoami(request: Request) -> Response:
        principal = principal_of(request)
        return JSONResponse(
            {
                "subject": principal.subject,
                "agent": principal.agent,
                "actor": principal.actor,
                "actors": list(principal.actors),
                "scopes": sorted(principal.scopes),
                "task": principal.task,
                "audience": principal.audience,
                "jkt": principal.jkt,
                "proof": _proof_view(request),
            }
        )

    async def go(request: Request) -> Response:
        principal_of(request)
        return RedirectResponse(request.query_params["to"], status_code=307)

    relay_state: dict[str, Onward] = {}

    async def relay(request: Request) -> Response:
        """Call the next service on the caller's behalf with the service's own identity (MCP-03)."""
        assert onward is not None
        sts_url, identity, next_url = onward
        helper = relay_state.setdefault("onward", Onward(sts_url, identity))
        incoming = request.headers["authorization"].split(" ", 1)[1]
        async with httpx.AsyncClient(auth=helper.auth(incoming, audiences={next_url: next_url}), trust_env=False) as http:
            upstream = await http.get(next_url + "/whoami")
        return JSONResponse({"status": upstream.status_code, "next": upstream.json()})

    routes = [Route("/whoami", whoami, methods=["GET", "POST"]), Route("/go", go), Route("/relay", relay)]
    middleware = [Middleware(Recorder, log=log), Middleware(TetherMiddleware, verifier=verifier)]
    return Starlette(routes=routes, middleware=middleware)


async def _sink(request: Request) -> Response:
    return JSONResponse({"path": request.url.path})


def plain_app(log: list[dict[str, Any]]) -> Starlette:
    """Not a tether service: no protected-resource metadata; answers 200 to anything else."""

    async def no_metadata(request: Request) -> Response:
        return JSONResponse({"error": "not_found"}, status_code=404)

    routes = [
        Route("/.well-known/oauth-protected-resource", no_metadata),
        Route("/{path:path}", _sink, methods=["GET", "POST"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(Recorder, log=log)])


def metadata_app(log: list[dict[str, Any]], document: Callable[[str], Any]) -> Starlette:
    """Serves ``document(own_origin)`` as its RFC 9728 metadata; 200 to anything else."""

    async def metadata(request: Request) -> Response:
        origin = f"{request.url.scheme}://{request.url.netloc}"
        return JSONResponse(document(origin))

    routes = [
        Route("/.well-known/oauth-protected-resource", metadata),
        Route("/{path:path}", _sink, methods=["GET", "POST"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(Recorder, log=log)])


def wait_until(predicate: Callable[[], bool], *, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@dataclass
class AgentEnv:
    sts: RunningSts
    domain: DevTrustDomain
    x: App
    y: App
    n: App
    plain: App
    impostor: App
    foreign: App
    http: httpx.Client

    def task(self, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"audiences": [self.x.url, self.y.url, self.n.url], "scopes": ["wiki:read", "wiki:write"]}
        body.update(fields)
        return create_task(self.sts, **body)

    def agent(self, spiffe_id: str = AGENT) -> Agent:
        return Agent(self.sts.url, DevIdentity(self.domain, spiffe_id))

    def hop_audits(self, task_id: str) -> list[dict[str, Any]]:
        return [
            dict(r.detail)
            for r in self.sts.audit()
            if r.kind == "token.issued" and r.task == task_id and r.detail.get("token_kind") == "hop"
        ]
