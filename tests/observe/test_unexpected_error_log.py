"""Issue 12: a 500 logs its traceback — redacted, in one record — at every log level, so an operator can act on it.

A real Starlette app under uvicorn on loopback uses tether's handler of last resort
(``tether.web.errors.handle_unexpected``, as the STS and the gateway do); one route fails
with an exception whose text holds a token and a line break. The ``tether.web`` records
go through the redacting handler ``configure_logging`` installs, with the formatters at
level ``info`` (not debug). Control: the same formatter leaves the traceback out of an
ordinary exception record, as before.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from helpers import ServerThread, free_port
from tether.logs import REDACTED, JsonFormatter, RedactionFilter, TextFormatter
from tether.web.errors import handle_unexpected

TOKEN = "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJzcGlmZmU6Ly90In0.c2lnbmF0dXJlLWJ5dGVz"


def _broken_lookup(token: str) -> None:
    raise KeyError(f"no entry for {token}\nforged: line")


async def _fails(request: Request) -> Response:
    _broken_lookup(TOKEN)
    return Response("unreachable")


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    app = Starlette(routes=[Route("/fails", _fails)], exception_handlers={Exception: handle_unexpected})
    port = free_port()
    thread = ServerThread(app, port).start()
    try:
        yield f"http://127.0.0.1:{port}/fails"
    finally:
        thread.stop()


def _capture(url: str, formatter: logging.Formatter) -> list[str]:
    """The ``tether.web`` lines written while one request to ``url`` answers 500."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(formatter)
    handler.addFilter(RedactionFilter())
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("tether.web")
    logger.addHandler(handler)
    try:
        response = httpx.get(url, timeout=10, trust_env=False)
    finally:
        logger.removeHandler(handler)
    assert response.status_code == 500
    assert response.json() == {"error": "server_error", "error_description": "internal error"}
    assert TOKEN not in response.text and "Traceback" not in response.text
    return buffer.getvalue().splitlines()


def test_a_500_logs_its_redacted_traceback_at_info_in_one_json_record(url: str) -> None:
    [line] = _capture(url, JsonFormatter(debug=False))
    record = json.loads(line)
    assert record["level"] == "error" and record["logger"] == "tether.web" and record["exc_type"] == "KeyError"
    trace = str(record["traceback"])
    assert trace.startswith("Traceback (most recent call last)") and "_broken_lookup" in trace and "_fails" in trace
    assert TOKEN not in line and f"no entry for {REDACTED}" in trace


def test_a_500_logs_its_traceback_at_info_on_one_text_line(url: str) -> None:
    [line] = _capture(url, TextFormatter(debug=False))
    assert " ERROR tether.web: unexpected error (KeyError: " in line
    assert "Traceback (most recent call last)" in line and "_broken_lookup" in line
    assert "\\nforged: line" in line and TOKEN not in line


def test_control_an_ordinary_exception_record_still_has_no_traceback_at_info() -> None:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter(debug=False))
    logger = logging.getLogger("tether.test.unexpected")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        try:
            _broken_lookup("x")
        except KeyError:
            logger.exception("upkeep failed")
    finally:
        logger.removeHandler(handler)
    record = json.loads(buffer.getvalue())
    assert record["exc_type"] == "KeyError" and "traceback" not in record
