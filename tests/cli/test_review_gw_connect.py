"""Review (rvgw): ``tether vault oauth-connect`` against a hostile token endpoint (FED-04).

The operator's one-time flow talks to a server the operator does not control. Whatever that
token endpoint answers, the command ends in bounded time with an RFC 6749 error code on one
line (never a traceback), and stores nothing it should not:

- a body nested deeper than the JSON parser recurses is "not JSON", not a ``RecursionError``;
- an endless body is cut at the answer's size cap instead of being read into memory for ever;
- a refresh token the gateway could not scrub (under ``MIN_TOKEN_BYTES``: ``oauth_wire``) is refused
  here too, rather than stored for a gateway that then refuses or cannot hide it.

The end-to-end test runs the real executable; the test plays the browser by delivering the
callback with the ``state`` from the printed URL.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cli_support import TETHER, _env
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from helpers import free_port, make_deployment
from tether.config import Config
from tether.gateway.oauth_connect import ConnectRefused, refresh_token_of
from tether.store.open import open_store
from tether.web.server import ServerThread


def test_review_fed04_a_deeply_nested_token_answer_is_refused_by_code() -> None:
    with pytest.raises(ConnectRefused) as refused:
        refresh_token_of(200, b"[" * 50_000)
    assert refused.value.error == "invalid_request"
    with pytest.raises(ConnectRefused) as refused:
        refresh_token_of(400, b"[" * 50_000)
    assert refused.value.error == "invalid_request"


@pytest.mark.parametrize("token", ["rt", "DACT", "0123456789abcde"])
def test_review_fed04_a_refresh_token_too_short_to_scrub_is_not_stored(token: str) -> None:
    with pytest.raises(ConnectRefused) as refused:
        refresh_token_of(200, json.dumps({"access_token": "a" * 20, "refresh_token": token}).encode())
    assert refused.value.error == "invalid_grant" and token not in refused.value.description


def _endless_as() -> Starlette:
    async def token(request: Request) -> Response:
        await request.body()

        async def forever() -> AsyncIterator[bytes]:
            yield b'{"refresh_token": "'
            while True:
                yield b"x" * 4096
                await asyncio.sleep(0.01)

        return StreamingResponse(forever(), media_type="application/json")

    return Starlette(routes=[Route("/token", token, methods=["POST"])])


@pytest.fixture(scope="module")
def endless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Config, str]]:
    port = free_port()
    thread = ServerThread(_endless_as(), port).start()
    redirect = f"http://127.0.0.1:{free_port()}/callback"
    route = (
        '[[gateway.routes]]\nname = "crm"\nupstream = "http://127.0.0.1:9"\nallow = ["GET /contacts/*"]\n'
        'owner = "team-crm"\njustification = "the CRM only speaks OAuth"\nexpires = 2099-12-31\n'
        f'[gateway.routes.oauth]\ngrant = "refresh_token"\ntoken_endpoint = "http://127.0.0.1:{port}/token"\n'
        f'authorization_endpoint = "http://127.0.0.1:{port}/authorize"\nredirect_uri = "{redirect}"\n'
        'client_id = "crm"\nclient_auth = "none"\nrefresh_token = "crm-refresh"\nscopes = ["contacts.read"]\n'
    )
    directory: Path = tmp_path_factory.mktemp("review-connect")
    try:
        yield make_deployment(directory, extra_toml=f"[gateway]\nport = {free_port()}\n{route}"), redirect
    finally:
        thread.stop()


def _stored(config: Config, name: str) -> bool:
    async def run() -> bool:
        store = await open_store(config)
        try:
            return await store.vault_get(name) is not None
        finally:
            await store.aclose()

    return asyncio.run(run())


def test_review_fed04_an_endless_token_answer_is_cut_and_nothing_stored(endless: tuple[Config, str]) -> None:
    config, redirect = endless
    command = [TETHER, "vault", "oauth-connect", "crm", "--config", str(config.path), "--no-browser"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        assert process.stdout is not None
        url = next(line.strip() for line in process.stdout if line.startswith("http"))
        state = parse_qs(urlsplit(url).query)["state"][0]
        with httpx.Client(timeout=10.0, trust_env=False) as browser:
            assert browser.get(redirect, params={"code": "code-from-the-as", "state": state}).status_code == 200
        out, err = process.communicate(timeout=20)  # bounded: not the endless body read into memory
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    output = out + err
    assert process.returncode == 1, output
    assert "invalid_request" in output and "Traceback" not in output and "code-from-the-as" not in output
    assert not _stored(config, "crm-refresh")
