"""``web.direct_route.DirectRoute``: the token endpoint served past Starlette's router must answer
exactly as the routed endpoint did — same responses, same 405s and 404s for everything else, HTTP
errors through the app's handler, anything unexpected a bare 500 from the error middleware."""

from __future__ import annotations

import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether.web.direct_route import DirectRoute
from tether.web.errors import handle_http, handle_unexpected

pytestmark = pytest.mark.anyio


async def _endpoint(request: Request) -> Response:
    body = await request.body()
    if body == b"http-error":
        raise HTTPException(status_code=413, detail="too large")
    if body == b"crash":
        raise RuntimeError("secret detail that must not reach the client")
    return JSONResponse({"path": request.url.path, "method": request.method, "body": body.decode(),
                         "client": request.client.host if request.client else None})  # fmt: skip


def _app(*, direct: bool) -> Starlette:
    middleware = [Middleware(DirectRoute, path="/token", method="POST", endpoint=_endpoint, on_http_error=handle_http)]
    return Starlette(
        routes=[Route("/token", _endpoint, methods=["POST"]), Route("/other", _endpoint, methods=["GET"])],
        middleware=middleware if direct else [],
        exception_handlers={HTTPException: handle_http, Exception: handle_unexpected},
    )


async def _answers(app: Starlette, method: str, path: str, body: bytes = b"") -> tuple[int, object, str]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://sts.test") as client:
        response = await client.request(method, path, content=body)
    try:
        parsed: object = response.json()
    except json.JSONDecodeError:
        parsed = response.text
    return response.status_code, parsed, response.headers.get("content-type", "")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/token", b"grant_type=x"),
        ("POST", "/token", b"http-error"),
        ("POST", "/token", b"crash"),
        ("GET", "/token", b""),
        ("PUT", "/token", b""),
        ("POST", "/token/", b""),
        ("POST", "/tokens", b""),
        ("GET", "/other", b""),
        ("POST", "/other", b""),
    ],
)
async def test_same_answer_with_and_without_the_direct_route(method: str, path: str, body: bytes) -> None:
    assert await _answers(_app(direct=True), method, path, body) == await _answers(_app(direct=False), method, path, body)


async def test_an_unexpected_error_is_a_bare_500_without_the_detail() -> None:
    status, parsed, _ = await _answers(_app(direct=True), "POST", "/token", b"crash")
    assert status == 500
    assert "secret detail" not in json.dumps(parsed)


async def test_the_endpoint_answers_on_its_own_path_and_method_only() -> None:
    status, parsed, _ = await _answers(_app(direct=True), "POST", "/token", b"a=1")
    assert status == 200 and parsed == {"path": "/token", "method": "POST", "body": "a=1", "client": "127.0.0.1"}
    assert (await _answers(_app(direct=True), "GET", "/token"))[0] == 405
