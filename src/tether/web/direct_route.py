"""One hot route served straight from the middleware stack, past Starlette's router.

The token endpoint is most of what an STS serves. Reaching it through the router costs a
request its route matching, the exception middleware's and ``request_response``'s wrappers
and their ``send`` closures — a few percent of a hop exchange. ``DirectRoute`` sits inside the
error middleware and the admission limit, answers exactly one method on one path by calling
the endpoint itself, and hands every other request on unchanged. The path is compared as the
router compares it, below the ``root_path`` (``get_route_path``): an app mounted or served
under a prefix answers what the router would, and still takes the short way. What the
endpoint raises takes the same way as before: ``HTTPException`` to the app's HTTP handler (as
the exception middleware would), anything else up to the error middleware's 500 handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette._utils import get_route_path
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["DirectRoute"]

Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Exception], Awaitable[Response]]


class DirectRoute:
    """ASGI middleware: ``method path`` → ``endpoint(Request)``; everything else → ``app``."""

    def __init__(self, app: ASGIApp, *, path: str, method: str, endpoint: Endpoint, on_http_error: Handler) -> None:
        self.app = app
        self.path = path
        self.method = method
        self.endpoint = endpoint
        self.on_http_error = on_http_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != self.method or get_route_path(scope) != self.path:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await self.endpoint(request)
        except HTTPException as exc:
            response = await self.on_http_error(request, exc)
        await response(scope, receive, send)
