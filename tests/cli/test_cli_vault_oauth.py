"""``tether vault oauth-connect ROUTE`` end to end: the real executable against a real OAuth server.

The CLI runs as a subprocess; the test plays the operator's browser with httpx: it takes the
printed authorization URL through the provider's own login and consent forms (node
``oidc-provider``, tests/interop/oauth_as.mjs) and follows the redirect to the CLI's loopback
listener. Then the vault holds a refresh token the provider accepts (a refresh grant works), for
each client authentication a route may use. Refused: a forged ``state``, an ``error=`` callback
(the provider's own, and a hostile one whose code is escaped), a token answer without a refresh
token, no callback in time, and routes that are not ``refresh_token`` OAuth routes. The code,
tokens and secrets never appear in the output, and no file holds the refresh token in the clear.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from cli_support import TETHER

from helpers import free_port, make_deployment
from oauthaskit import OAuthServer, authorize, client_assertion, client_key
from tether.config import Config
from tether.gateway.vault import put_secret
from tether.keys.sealed import load_master_key, unseal, vault_aad
from tether.store.open import open_store
from tether.urns import JWT_BEARER

CLIENT_SECRET = "crm+secret/1=&x"  # RFC 6749 §2.3.1: form-urlencoded inside HTTP Basic
KEY, JWKS = client_key()
# route → (client_id, client_auth, client metadata for the AS)
CLIENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "crm-basic": ("client_secret_basic", {"client_secret": CLIENT_SECRET}),
    "crm-post": ("client_secret_post", {"client_secret": CLIENT_SECRET}),
    "crm-jwt": ("private_key_jwt", {"jwks": JWKS}),
    "crm-public": ("none", {}),
    "crm-norefresh": ("client_secret_basic", {"client_secret": CLIENT_SECRET, "refresh": False}),
    "crm-narrow": ("client_secret_basic", {"client_secret": CLIENT_SECRET, "scope": "contacts.read"}),
}
SCOPES = {"crm-narrow": ["notes.write"]}  # beyond that client's ceiling: the AS answers error=invalid_scope


@dataclass
class Deployment:
    config: Config
    server: OAuthServer
    redirects: dict[str, str]


def _route(name: str, body: str) -> str:
    return (f'[[gateway.routes]]\nname = "{name}"\nupstream = "http://127.0.0.1:9"\nallow = ["GET /contacts/*"]\n'
            f'owner = "team-crm"\njustification = "the CRM only speaks OAuth"\nexpires = 2099-12-31\n{body}\n')  # fmt: skip


def _oauth_route(name: str, server: OAuthServer, redirect: str, auth: str) -> str:
    credential = {"client_secret_basic": 'client_secret = "crm-client-secret"\n',
                  "client_secret_post": 'client_secret = "crm-client-secret"\n',
                  "private_key_jwt": 'private_key = "crm-client-key"\n', "none": ""}[auth]  # fmt: skip
    scopes = ", ".join(f'"{s}"' for s in SCOPES.get(name, ["contacts.read"]))
    return _route(name, f'[gateway.routes.oauth]\ngrant = "refresh_token"\ntoken_endpoint = "{server.token_endpoint}"\n'
                        f'authorization_endpoint = "{server.authorization_endpoint}"\nredirect_uri = "{redirect}"\n'
                        f'client_id = "{name}"\nclient_auth = "{auth}"\n{credential}'
                        f'refresh_token = "{name}-refresh-token"\nscopes = [{scopes}]\n')  # fmt: skip


def _put(config: Config, name: str, value: str) -> None:
    async def run() -> None:
        store = await open_store(config)
        try:
            await put_secret(store, load_master_key(config.master_key_file), name, value.encode(), now=1.0, actor="test")
        finally:
            await store.aclose()

    asyncio.run(run())


def vaulted(config: Config, name: str) -> tuple[str, int] | None:
    """The opened value and version of vault entry ``name`` (None when absent)."""

    async def run() -> tuple[str, int] | None:
        store = await open_store(config)
        try:
            entry = await store.vault_get(name)
            if entry is None:
                return None
            aad = vault_aad(name, created_at=entry.created_at, version=entry.version)
            return unseal(load_master_key(config.master_key_file), entry.sealed, aad=aad).decode(), entry.version
        finally:
            await store.aclose()

    return asyncio.run(run())


def _config_path(deployment: Deployment) -> Path:
    assert deployment.config.path is not None
    return deployment.config.path


def last_audit_kind(config: Config, name: str) -> tuple[str, str] | None:
    async def run() -> tuple[str, str] | None:
        store = await open_store(config)
        try:
            record = await store.vault_latest_audit(name)
            return None if record is None else (record.kind, record.principal or "")
        finally:
            await store.aclose()

    return asyncio.run(run())


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    directory = tmp_path_factory.mktemp("oauth-connect")
    redirects = {name: f"http://127.0.0.1:{free_port()}/callback" for name in CLIENTS}
    clients = [{"client_id": name, "auth": auth, "redirect_uris": [redirects[name]], **extra}
               for name, (auth, extra) in CLIENTS.items()]  # fmt: skip
    with OAuthServer.run(directory, clients=clients) as server:
        routes = "".join(_oauth_route(name, server, redirects[name], auth) for name, (auth, _) in CLIENTS.items())
        routes += _route("legacy", 'secret = "legacy-key"')
        machine = (f'[gateway.routes.oauth]\ngrant = "client_credentials"\nclient_id = "crm-basic"\n'
                   f'token_endpoint = "{server.token_endpoint}"\nclient_secret = "crm-client-secret"\n')  # fmt: skip
        routes += _route("machine", machine)
        config = make_deployment(directory / "tether", extra_toml=f"[gateway]\nport = {free_port()}\n{routes}")
        _put(config, "crm-client-secret", CLIENT_SECRET)
        _put(config, "crm-client-key", json.dumps(KEY))
        _put(config, "not-a-key", "just some text")
        yield Deployment(config, server, redirects)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    return env | {"COLUMNS": "200", "NO_COLOR": "1"}


@dataclass
class Connect:
    process: subprocess.Popen[str]
    url: str
    head: str

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        out, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, self.head + out + err


@pytest.fixture
def connect(deployment: Deployment) -> Iterator[Any]:
    started: list[subprocess.Popen[str]] = []

    def run(route: str, *args: str) -> Connect:
        command = [TETHER, "vault", "oauth-connect", route, "--config", str(deployment.config.path), "--no-browser", *args]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        started.append(process)
        assert process.stdout is not None
        head = ""
        for line in process.stdout:  # the URL is printed once the listener is bound
            head += line
            if line.startswith("http"):
                return Connect(process, line.strip(), head)
        raise AssertionError(f"no authorization URL: {head}{process.stderr.read() if process.stderr else ''}")

    yield run
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def _refused(code: int, output: str, what: str) -> None:
    assert code == 1, output
    assert what in output and "Traceback" not in output, output


@pytest.mark.parametrize("route", ["crm-basic", "crm-post", "crm-jwt", "crm-public"])
def test_fed04_connect_stores_a_refresh_token_the_provider_accepts(deployment: Deployment, connect: Any, route: str) -> None:
    running = connect(route)
    query = parse_qs(urlsplit(running.url).query)
    assert query["code_challenge_method"] == ["S256"] and query["redirect_uri"] == [deployment.redirects[route]]
    assert "nonce" not in query  # no openid asked
    with httpx.Client(timeout=10.0, trust_env=False) as stray:  # another path on the port: 404, the wait goes on
        assert stray.get(deployment.redirects[route].replace("/callback", "/favicon.ico")).status_code == 404
    page = authorize(running.url, deployment.redirects[route], deliver=True)
    assert isinstance(page, httpx.Response) and page.status_code == 200 and "close this tab" in page.text
    assert page.headers["content-type"].startswith("text/plain") and page.headers["cache-control"] == "no-store"
    code, output = running.finish()
    assert code == 0, output
    stored = vaulted(deployment.config, f"{route}-refresh-token")
    assert stored is not None
    refresh_token, version = stored
    authorization_code = parse_qs(urlsplit(str(page.url)).query)["code"][0]
    for secret in (refresh_token, authorization_code, CLIENT_SECRET):
        assert secret not in output
    assert f"vault entry `{route}-refresh-token`" in output
    assert last_audit_kind(deployment.config, f"{route}-refresh-token") == (
        "vault.put" if version == 1 else "vault.rotated",
        "operator:cli",
    )
    # the provider accepts the vaulted refresh token: a refresh grant with the route's client authentication works
    assert deployment.server.introspect(refresh_token)["active"] is True
    refreshed = _refresh(deployment.server, route, refresh_token)
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["refresh_token"] != refresh_token and refreshed.json()["scope"] == "contacts.read"


def _refresh(server: OAuthServer, route: str, refresh_token: str) -> httpx.Response:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    auth = CLIENTS[route][0]
    if auth == "client_secret_basic":
        return server.token(form, auth=(route, CLIENT_SECRET))
    if auth == "client_secret_post":
        return server.token(form | {"client_id": route, "client_secret": CLIENT_SECRET})
    if auth == "private_key_jwt":
        assertion = client_assertion(KEY, route, server.token_endpoint)
        return server.token(form | {"client_id": route, "client_assertion": assertion, "client_assertion_type": JWT_BEARER})
    return server.token(form | {"client_id": route})


def test_fed04_second_connect_rotates_and_nothing_is_written_in_clear(deployment: Deployment, connect: Any) -> None:
    tokens = []
    for _ in range(2):
        running = connect("crm-post")
        authorize(running.url, deployment.redirects["crm-post"], deliver=True)
        code, output = running.finish()
        assert code == 0, output
        stored = vaulted(deployment.config, "crm-post-refresh-token")
        assert stored is not None
        tokens.append(stored)
    (first, v1), (second, v2) = tokens
    assert v2 == v1 + 1 and first != second and "rotated" in output
    assert last_audit_kind(deployment.config, "crm-post-refresh-token") == ("vault.rotated", "operator:cli")
    for path in deployment.config.data_dir.rglob("*"):
        if path.is_file():
            assert second.encode() not in path.read_bytes(), path


def test_forged_state_refused(deployment: Deployment, connect: Any) -> None:
    running = connect("crm-basic")
    before = vaulted(deployment.config, "crm-basic-refresh-token")
    with httpx.Client(timeout=10.0, trust_env=False) as http:
        page = http.get(deployment.redirects["crm-basic"], params={"code": "forged-code", "state": "forged"})
    assert page.status_code == 400 and "invalid_request" in page.text
    code, output = running.finish()
    _refused(code, output, "invalid_request: the callback's state does not match")
    assert "forged-code" not in output
    assert vaulted(deployment.config, "crm-basic-refresh-token") == before


def test_error_callback_from_the_provider_shown_by_code(deployment: Deployment, connect: Any) -> None:
    running = connect("crm-narrow")  # asks notes.write; the client may only get contacts.read
    callback = authorize(running.url, deployment.redirects["crm-narrow"])
    assert isinstance(callback, str) and parse_qs(urlsplit(callback).query)["error"] == ["invalid_scope"]
    with httpx.Client(timeout=10.0, trust_env=False) as http:
        assert http.get(callback).status_code == 400
    code, output = running.finish()
    _refused(code, output, "invalid_scope")
    assert vaulted(deployment.config, "crm-narrow-refresh-token") is None


def test_hostile_error_callback_escaped(deployment: Deployment, connect: Any) -> None:
    running = connect("crm-basic")
    state = parse_qs(urlsplit(running.url).query)["state"][0]
    hostile = "access_denied\x1b[2J\r\n<script>alert(1)</script>"
    with httpx.Client(timeout=10.0, trust_env=False) as http:
        page = http.get(deployment.redirects["crm-basic"] + "?" + urlencode({"error": hostile, "state": state}))
    assert page.status_code == 400 and page.headers["content-type"].startswith("text/plain")
    assert "\x1b" not in page.text and "\r" not in page.text
    code, output = running.finish()
    _refused(code, output, "access_denied?[2J??<script>")
    assert "\x1b" not in output and "\r" not in output


def test_token_answer_without_refresh_token_refused(deployment: Deployment, connect: Any) -> None:
    running = connect("crm-norefresh")
    authorize(running.url, deployment.redirects["crm-norefresh"], deliver=True)
    code, output = running.finish()
    _refused(code, output, "invalid_grant: the token endpoint issued no refresh token")
    assert vaulted(deployment.config, "crm-norefresh-refresh-token") is None


def test_no_callback_in_time_refused(deployment: Deployment, connect: Any) -> None:
    running = connect("crm-basic", "--timeout", "1")
    code, output = running.finish()
    _refused(code, output, "temporarily_unavailable: no callback within 1 s")


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ("nowhere", "no gateway route `nowhere`"),
        ("legacy", "route `legacy` has no [gateway.routes.oauth] table"),
        ("machine", "route `machine` uses grant = client_credentials"),
    ],
)
def test_wrong_route_refused(deployment: Deployment, route: str, message: str) -> None:
    done = subprocess.run([TETHER, "vault", "oauth-connect", route, "--config", str(deployment.config.path)],
                          capture_output=True, text=True, timeout=30, env=_env(), check=False)  # fmt: skip
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "http" not in done.stdout  # no authorization URL, no listener


def test_missing_client_secret_refused_before_listening(deployment: Deployment) -> None:
    text = _config_path(deployment).read_text().replace('"crm-client-secret"', '"absent-secret"')
    other = _config_path(deployment).with_name("absent-secret.toml")  # beside it: same data_dir and store
    other.write_text(text)
    done = subprocess.run([TETHER, "vault", "oauth-connect", "crm-basic", "--config", str(other)],
                          capture_output=True, text=True, timeout=30, env=_env(), check=False)  # fmt: skip
    assert done.returncode == 1 and "no vault entry `absent-secret`" in done.stderr, done.stderr
    assert "http" not in done.stdout


def test_bad_vaulted_private_key_refused_before_listening(deployment: Deployment) -> None:
    text = _config_path(deployment).read_text().replace('private_key = "crm-client-key"', 'private_key = "not-a-key"')
    other = _config_path(deployment).with_name("not-a-key.toml")
    other.write_text(text)
    done = subprocess.run([TETHER, "vault", "oauth-connect", "crm-jwt", "--config", str(other)],
                          capture_output=True, text=True, timeout=30, env=_env(), check=False)  # fmt: skip
    assert done.returncode == 2 and "vault entry `not-a-key`: the vaulted private key is not a JWK" in done.stderr, done.stderr
    assert "http" not in done.stdout and "just some text" not in done.stdout + done.stderr
