"""``create_console_app``: the operator console as a Starlette app on its own port.

Server-rendered pages (Jinja2, autoescaped) over the STS's own use cases and store, with one
script and one stylesheet served from ``static/`` (no CDN, no build step). ``tether console``
runs it alone (its lifespan starts the STS runtime: store, keys, policy); ``tether serve`` with
``[console] enabled`` runs it beside the STS, sharing that runtime (``lifespan=False``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tether.console.login import link_login, link_page, login_page, logout
from tether.console.oidc import OIDC_ROUTES
from tether.console.pages import PAGE_ROUTES
from tether.console.web import HEADERS, SecurityHeaders, error_page
from tether.sts.context import StsContext

if TYPE_CHECKING:
    from tether.config import Config

__all__ = ["ConsoleRuntime", "create_console_app"]


class ConsoleRuntime(Protocol):
    """What the console needs from its owner (``tether.sts.bootstrap.Sts``)."""

    @property
    def config(self) -> Config: ...

    @property
    def ctx(self) -> StsContext: ...

    async def start(self) -> StsContext: ...

    async def stop(self) -> None: ...


async def _not_found(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    return error_page(request, status, "no such page" if status == 404 else "method not allowed")


async def _unexpected(request: Request, exc: Exception) -> Response:
    import logging

    logging.getLogger("tether.console").error("console error: %s", type(exc).__name__, exc_info=exc)
    response = error_page(request, 500, "something went wrong on the server; it has been logged")
    # Starlette answers from ServerErrorMiddleware, outside SecurityHeaders: set them here (WEB-03)
    response.headers.update({**HEADERS, "Cache-Control": "no-store"})
    return response


_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def allowed_hosts(config: Config) -> list[str]:
    """The ``Host`` values the console answers: its public URL's host, or its bind address, and the
    loopback names when it listens on loopback (a DNS-rebinding page at another name gets 400)."""
    console = config.console
    hosts = {urlsplit(console.public_url).hostname or ""} if console.public_url else {console.host}
    if console.host in _LOOPBACK or hosts & set(_LOOPBACK):
        hosts.update(_LOOPBACK)
    return sorted(h for h in hosts if h)


def create_console_app(runtime: ConsoleRuntime, *, lifespan: bool = True) -> Starlette:
    @contextlib.asynccontextmanager
    async def run(app: Starlette) -> AsyncIterator[None]:
        if lifespan:
            await runtime.start()
        try:
            yield
        finally:
            if lifespan:
                await runtime.stop()

    routes = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login/link", link_page, methods=["GET"]),
        Route("/login/link", link_login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        *OIDC_ROUTES,
        *PAGE_ROUTES,
        Mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=run,
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(runtime.config)),
        ],
        exception_handlers={HTTPException: _not_found, Exception: _unexpected},
    )
    app.state.runtime = runtime
    return app
