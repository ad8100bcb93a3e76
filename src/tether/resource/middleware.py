"""Pure ASGI middleware for Starlette/FastAPI services that accept tether tokens.

It serves RFC 9728 metadata at ``/.well-known/oauth-protected-resource``, verifies every other
request with a ``Verifier`` (401/403/503 with ``WWW-Authenticate: DPoP``, RFC 9449 §7.1, or
``Bearer`` for a Bearer-scheme request, RFC 6750 §3), puts
the ``Principal`` on ``request.state.principal`` and runs the verifier's revocation
subscription with the app's lifespan. WebSocket handshakes are verified the same way (``htu``
is the handshake's ``http(s)`` URI, RFC 9449 §4.3); a refusal is the JSON error where the
server offers ``websocket.http.response``, else close 1008. Other scope types are refused.

The client certificate a request came with (RFC 8705 §3) is this server's own TLS client's,
or the RFC 9440 ``Client-Cert`` header of a ``trusted_proxies`` peer
(``tether.web.client_cert``); from anyone else those headers are removed before the app —
public paths included — sees the request, so no handler can be fooled by a forged one.
A malformed header from a trusted proxy is 400 ``invalid_request`` (the proxy is broken).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tether.errors import InsufficientScope, OAuthError, TetherError
from tether.resource.principal import Principal
from tether.resource.verifier import Verifier
from tether.web.client_cert import presented_certificate, strip_client_cert_headers

__all__ = [
    "METADATA_PATH",
    "TetherMiddleware",
    "UnsupportedScope",
    "principal_of",
    "require_scope",
    "requires",
    "verifier_lifespan",
]

METADATA_PATH = "/.well-known/oauth-protected-resource"
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

#: RFC 6455 §7.4.1 policy violation; 1013 "try again later" (IANA WebSocket close code registry)
_CLOSE_REFUSED, _CLOSE_RETRY = 1008, 1013
#: the first message of a response: once one is sent, a refusal can no longer be rendered
_STARTED = frozenset({"http.response.start", "websocket.accept", "websocket.close", "websocket.http.response.start"})


class UnsupportedScope(TetherError):
    """An ASGI scope type the middleware cannot verify: refused, never passed to the app unverified."""


class TetherMiddleware:
    def __init__(self, app: ASGIApp, verifier: Verifier, *, public_paths: Collection[str] = ()) -> None:
        self.app = app
        self.verifier = verifier
        self.public_paths = frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, self._lifespan(receive), send)
            return
        if kind not in ("http", "websocket"):
            raise UnsupportedScope(f"ASGI scope type {str(kind)[:40]!r} is not verified by tether")
        path = scope["path"]
        strip_client_cert_headers(scope, self.verifier.proxies)
        if kind == "http" and path == METADATA_PATH:
            await _send_json(send, 200, self.verifier.metadata())
            return
        if path in self.public_paths:
            await self.app(scope, receive, send)
            return
        await self.verifier.start()
        raw_path = scope.get("raw_path")
        wire_path = raw_path.decode("latin-1") if isinstance(raw_path, bytes) and raw_path else path
        try:
            client = scope.get("client")
            certificate = presented_certificate(scope, self.verifier.proxies)
            principal = await self.verifier.verify(
                method=scope["method"] if kind == "http" else "GET",
                path=wire_path,
                route_path=path,
                headers=Headers(scope=scope),
                client=client[0] if client else None,
                certificate=certificate,
            )
        except TetherError as exc:  # a refusal, or a shared replay cache that cannot answer (503, fail closed)
            await self._refuse(exc, scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] in _STARTED
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except OAuthError as exc:
            if started:
                raise
            await self._refuse(exc, scope, receive, send)

    async def _refuse(self, exc: Exception, scope: Scope, receive: Receive, send: Send) -> None:
        """The error response (also as a WebSocket denial response where the server supports one), else a close."""
        response = self.verifier.refusal(exc, Headers(scope=scope))
        if scope["type"] == "http" or "websocket.http.response" in scope.get("extensions", {}):
            await response(scope, receive, send)
            return
        code = _CLOSE_RETRY if response.status_code >= 500 else _CLOSE_REFUSED
        await send({"type": "websocket.close", "code": code, "reason": getattr(exc, "error", "server_error")})

    def _lifespan(self, receive: Receive) -> Receive:
        return verifier_lifespan(self.verifier, receive)


def verifier_lifespan(verifier: Verifier, receive: Receive) -> Receive:
    """``receive`` for an app's lifespan scope that also starts the verifier (its revocation
    subscription) at startup and closes it at shutdown."""

    async def wrapped() -> Message:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await verifier.start()
        elif message["type"] == "lifespan.shutdown":
            await verifier.aclose()
        return message

    return wrapped


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def principal_of(request: HTTPConnection) -> Principal:
    """The verified caller of a request (or WebSocket connection) that passed ``TetherMiddleware``."""
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        raise InsufficientScope("request was not authenticated by tether")
    return principal


def require_scope(request: HTTPConnection, *scopes: str) -> Principal:
    """Refuse with 403 ``insufficient_scope`` unless the token carries every scope named."""
    principal = principal_of(request)
    missing = set(scopes) - principal.scopes
    if missing:
        raise InsufficientScope(f"scope `{' '.join(sorted(missing))}` is required")
    return principal


def requires(*scopes: str) -> Callable[[F], F]:
    """Decorator form of ``require_scope`` for Starlette endpoints ``async def f(request)``."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        async def endpoint(request: Request, *args: Any, **kwargs: Any) -> Any:
            require_scope(request, *scopes)
            return await fn(request, *args, **kwargs)

        return endpoint  # type: ignore[return-value]

    return wrap
