"""Review: the security headers are on every console response, the 500 page too (SECURITY WEB-03).

``SecurityHeaders`` is a user middleware; Starlette answers an unexpected exception from
``ServerErrorMiddleware``, which sits outside every user middleware, so the "something went wrong"
page went out without CSP, ``frame-ancestors``, ``nosniff`` or ``no-store``. A store row a
database writer shaped to crash a page is enough to reach it. The page also never names the
exception's text (it may hold a secret: a DSN, a path).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from consolekit import RunningConsole, running_console
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from helpers import ServerThread, free_port
from tether.console.app import create_console_app
from tether.console.web import HEADERS


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningConsole]:
    with running_console(tmp_path_factory.mktemp("review-headers")) as running:
        yield running


async def _crash(request: Request) -> Response:
    raise RuntimeError("postgresql://tether:hunter2@db/tether")  # what a crashing page might carry


def test_web03_security_headers_on_the_500_page_and_no_exception_text(console: RunningConsole) -> None:
    app = create_console_app(console.runtime, lifespan=False)  # the runtime is already started
    app.router.routes.append(Route("/crash", _crash))
    thread = ServerThread(app, free_port()).start()
    try:
        response = httpx.get(f"http://127.0.0.1:{thread.port}/crash", timeout=10.0, trust_env=False)
    finally:
        thread.stop()
    assert response.status_code == 500
    assert "hunter2" not in response.text and "Traceback" not in response.text
    for name, value in HEADERS.items():
        assert response.headers.get(name) == value, name
    assert response.headers["cache-control"] == "no-store"
