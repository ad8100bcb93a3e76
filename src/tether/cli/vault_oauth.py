"""``tether vault oauth-connect ROUTE``: the operator's one-time authorization for a refresh_token route.

The gateway refreshes a route's upstream access tokens with a refresh token that a person
obtains once (RFC 6749 §4.1 with PKCE, RFC 7636). This command runs that flow: it prints the
authorization URL (opening a browser only with ``--browser``), listens on the route's exact
loopback ``redirect_uri`` (RFC 8252 §7.3: 127.0.0.1, that port only, one callback accepted),
checks ``state``, exchanges the code with the route's client authentication, and stores the
refresh token sealed in the vault under ``oauth.refresh_token`` (audited; a second connect is
a rotation). The code, the tokens and the client secret are never printed, logged or written
anywhere else; the rules live in ``tether.gateway.oauth_connect``.

The command itself (its options and help) is declared in ``tether.cli.vault``; this module,
with the HTTP listener and the gateway's OAuth code it needs, is imported only when it runs.
"""

from __future__ import annotations

import secrets
import socket
import tempfile
import time
import webbrowser
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from tether.cli.common import config_or_exit, errors_to_exit, with_store
from tether.cli.output import console, fail
from tether.config import Config
from tether.gateway.oauth_config import OAuthCredentials
from tether.gateway.oauth_connect import (
    MAX_TOKEN_RESPONSE,
    ConnectRefused,
    ConnectRequest,
    callback_code,
    client_assertion,
    refresh_token_of,
    start,
    token_request,
)
from tether.gateway.vault import MissingSecret, SecretCache, SecretRefused, put_secret
from tether.keys.sealed import load_master_key
from tether.localstate import LocalState
from tether.store.protocol import Store

__all__ = ["connect"]

OPERATOR = "operator:cli"
#: how long one connection to the listener may take to send its request (a stalled one is dropped)
_REQUEST_SECONDS = 5.0
#: how long the token request and its answer may take in all
_TOKEN_SECONDS = 30.0
_DONE = b"tether: authorization received. You can close this tab and go back to the terminal.\n"


class _Listener(HTTPServer):
    """The loopback redirect listener: the route's host and port only, never a wildcard address.

    The first GET on the redirect path is the one callback accepted (RFC 8252 §7.3); its outcome,
    the code or the refusal, is kept for the command. Other paths get a 404 and change nothing."""

    def __init__(self, host: str, port: int, path: str, request: ConnectRequest) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.callback_path = path
        self.request = request
        self.outcome: str | ConnectRefused | None = None
        super().__init__((host, port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    timeout = _REQUEST_SECONDS
    server: _Listener

    def do_GET(self) -> None:
        target = urlsplit(self.path)
        if target.path != self.server.callback_path or self.server.outcome is not None:
            self._answer(404, b"not found\n")
            return
        try:
            self.server.outcome = callback_code(self.server.request, target.query)
            self._answer(200, _DONE)
        except ConnectRefused as exc:  # the code is RFC 6749-charset only: safe in a text/plain page
            self.server.outcome = exc
            self._answer(400, f"tether: the authorization failed ({exc.error}). See the terminal.\n".encode())

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a request line carries the authorization code."""


def _route_oauth(cfg: Config, name: str) -> OAuthCredentials:
    route = next((r for r in cfg.routes if r.name == name), None)
    if route is None:
        fail(f"no gateway route `{name}` in {cfg.path}", code=2)
    if route.oauth is None:
        fail(f"route `{name}` has no [gateway.routes.oauth] table: it injects a static vault secret", code=2)
    if route.oauth.grant != "refresh_token":
        fail(f"route `{name}` uses grant = {route.oauth.grant}: only grant = refresh_token routes are connected", code=2)
    return route.oauth


def _client_credential(cfg: Config, master: bytes, oauth: OAuthCredentials) -> str:
    """The vaulted client secret or private JWK the token request needs ("" for a public client).

    Opened with the gateway's own checks against the audit log (an entry rolled back is refused);
    the gateway's host marks are not written from here (it keeps them for its own process)."""
    name = oauth.client_secret or oauth.private_key
    if not name:
        return ""

    async def work(store: Store) -> str:
        with tempfile.TemporaryDirectory() as scratch:
            cache = SecretCache(store, master, LocalState(Path(scratch) / "marks"), ttl=0)
            return await cache.get(name)

    try:
        value: str = with_store(cfg, work)
    except SecretRefused as exc:
        fail(str(exc))
    except MissingSecret:
        fail(f"no vault entry `{name}` (the route's client credential): store it first with `tether vault put {name}`")
    return value


def _listen(oauth: OAuthCredentials, request: ConnectRequest) -> _Listener:
    target = urlsplit(oauth.redirect_uri)
    host, port = target.hostname or "127.0.0.1", target.port or 80
    try:
        return _Listener(host, port, target.path or "/", request)
    except OSError as exc:
        fail(f"cannot listen on {oauth.redirect_uri} ({exc.strerror or exc}): the redirect URI's port must be free")


def _wait(listener: _Listener, timeout: float) -> str:
    """The authorization code, once the callback came and checked out (else its ``ConnectRefused``)."""
    deadline = time.monotonic() + timeout
    listener.timeout = 0.25
    while listener.outcome is None:
        if time.monotonic() > deadline:
            raise ConnectRefused("temporarily_unavailable", f"no callback within {timeout:g} s; nothing was stored")
        listener.handle_request()
    if isinstance(listener.outcome, ConnectRefused):
        raise listener.outcome
    return listener.outcome


def _exchange(oauth: OAuthCredentials, request: ConnectRequest, code: str, credential: str) -> str:
    secret, jwk = (credential, "") if oauth.client_auth.startswith("client_secret_") else ("", credential)
    call = token_request(oauth, request, code, client_secret=secret, private_jwk=jwk, now=time.time(),
                         jti=secrets.token_urlsafe(16))  # fmt: skip
    headers = {"Accept": "application/json"} | ({"Authorization": call.authorization} if call.authorization else {})
    try:
        with httpx.Client(timeout=_TOKEN_SECONDS, trust_env=False, follow_redirects=False) as http:
            return _post(http, oauth.token_endpoint, call.form, headers)
    except httpx.HTTPError as exc:
        fail(f"cannot reach the token endpoint {oauth.token_endpoint}: {type(exc).__name__}; nothing was stored")


def _post(http: httpx.Client, url: str, form: dict[str, str], headers: dict[str, str]) -> str:
    """The token request; its answer read only up to ``MAX_TOKEN_RESPONSE`` bytes and ``_TOKEN_SECONDS`` in
    all (httpx's timeout is per read: a server trickling an endless body would hold the command for ever)."""
    deadline = time.monotonic() + _TOKEN_SECONDS
    with http.stream("POST", url, data=form, headers=headers) as response:
        body = b""
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > MAX_TOKEN_RESPONSE or time.monotonic() > deadline:
                raise ConnectRefused("invalid_request", f"the token endpoint's answer is over {MAX_TOKEN_RESPONSE} "
                                     f"bytes or took over {_TOKEN_SECONDS:g} s; nothing was stored")  # fmt: skip
        return refresh_token_of(response.status_code, body)


def connect(route: str, config: Path | None, *, browser: bool, timeout: int) -> None:
    """``tether vault oauth-connect``: authorize ROUTE at its OAuth server once; store its refresh token sealed."""
    cfg = config_or_exit(config)
    oauth = _route_oauth(cfg, route)
    with errors_to_exit():
        master = load_master_key(cfg.master_key_file)
    credential = _client_credential(cfg, master, oauth)
    if oauth.client_auth == "private_key_jwt":  # a bad vaulted key fails now, not after the operator logged in
        try:
            client_assertion(credential, oauth.client_id, oauth.token_endpoint, now=time.time(), jti="check")
        except ConnectRefused as exc:
            fail(f"vault entry `{oauth.private_key}`: {exc.description}", code=2)
    request = start(oauth, secrets.token_urlsafe)
    with _listen(oauth, request) as listener:
        console.print(f"Open this URL in a browser to authorize route `{route}`:")
        console.print(request.url, soft_wrap=True)
        console.print(f"Waiting up to {timeout} s for the callback on {oauth.redirect_uri} ...", soft_wrap=True)
        console.file.flush()
        if browser:
            webbrowser.open(request.url)
        try:
            code = _wait(listener, timeout)
        except ConnectRefused as exc:
            fail(f"oauth-connect refused: {exc.error}: {exc.description}")
    try:
        refresh_token = _exchange(oauth, request, code, credential)
    except ConnectRefused as exc:
        fail(f"oauth-connect refused: {exc.error}: {exc.description}")

    async def store_it(store: Store) -> int:
        try:
            entry = await put_secret(store, master, oauth.refresh_token, refresh_token.encode(), now=time.time(),
                                     actor=OPERATOR)  # fmt: skip
        except ValueError as exc:
            fail(f"the refresh token was not stored: {exc}")
        return entry.version

    with errors_to_exit():
        version = with_store(cfg, store_it)
    verb = "stored" if version == 1 else "rotated"
    console.print(f"route `{route}` connected: refresh token {verb} sealed as vault entry `{oauth.refresh_token}` "
                  f"(version {version}); it is not shown", soft_wrap=True)  # fmt: skip
