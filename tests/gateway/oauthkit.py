"""Kit for the gateway's OAuth routes: a real OAuth server, an API that checks its tokens, the STS and a gateway.

Everything runs on loopback: ``oauth_as.mjs`` (node ``oidc-provider``, via ``oauthaskit``), an upstream
API (Starlette) that accepts a bearer token only when the server's RFC 7662 introspection says it is
active and carries the scope the path needs (``contacts`` → ``contacts.read``, ``notes`` →
``notes.write``), and records what it saw; the STS from ``helpers`` and the gateway from ``gwkit``.

Routes (``ROUTES``), one upstream client each at the server, all on the same API and allowlist:

``crm``      client_credentials, client_secret_basic, RFC 7009 revocation, ``call_scopes``
``post``     client_credentials, client_secret_post
``jwt``      client_credentials, private_key_jwt (the vault holds the private JWK)
``rt``       refresh_token (the vault holds a refresh token from a real code + PKCE flow), basic
``x``        token_exchange (RFC 8693 at the server), private_key_jwt
``noisy``    like ``crm`` but without a revocation endpoint
``down``     a token endpoint nobody listens on
``wrong``    the vault holds a wrong client secret (the server answers ``invalid_client``)
``absent``   names a vault entry that does not exist

and, at a misbehaving token endpoint (``FakeAs``): ``leaky`` (its error body echoes the client's
credentials), ``wide`` (grants more scope than asked for; records revocations), ``mac`` (a
non-Bearer token type) and ``slow`` (answers after the route's 0.5 s timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from gwkit import Caller, GatewayEnv, Upstream, gateway_toml, put_secret_sync, serve_gateway
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from helpers import QUIET_MONITOR, running_sts
from oauthaskit import OAuthServer, authorize, client_key, pkce
from tether.keys.sealed import load_master_key, unseal, vault_aad
from tether.store.open import open_store
from tether.web.server import ServerThread, free_port

__all__ = ["ALLOW", "CALL_SCOPES", "ROUTES", "Api", "FakeAs", "OAuthEnv", "agent_saw", "introspect_many", "serve_oauth_env",
           "toml_route"]  # fmt: skip

ALLOW = ["GET /contacts/*", "POST /notes", "GET /me", "GET /echo/auth", "GET /echo/leak"]
CALL_SCOPES = {"GET /contacts/*": ["contacts.read"], "POST /notes": ["notes.write"], "GET /echo/auth": ["contacts.read"],
               "GET /echo/leak": ["contacts.read"]}  # fmt: skip
SCOPES = ["contacts.read", "notes.write"]
REDIRECT = "http://127.0.0.1:8765/callback"
ROUTES = ("crm", "post", "jwt", "rt", "x", "noisy", "down", "wrong", "absent", "leaky", "wide", "mac", "slow")
_NEEDS = {"contacts": "contacts.read", "notes": "notes.write"}


@dataclass
class Api:
    """The upstream API: trusts a token only as the authorization server's introspection describes it."""

    server: OAuthServer
    url: str = ""
    #: every request: path, the Authorization header and the introspection answer
    seen: list[dict[str, Any]] = field(default_factory=list)
    #: what ``/echo/leak`` puts in its body (a test sets it to a value the agent must never see)
    leak: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        def handle(request: Request) -> Response:  # sync: Starlette runs it in a worker thread
            auth = request.headers.get("authorization", "")
            token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
            info = self.server.introspect(token) if token else {"active": False}
            path = request.url.path
            with self.lock:
                self.seen.append({"path": path, "authorization": auth, "token": token, "info": info})
            if not info.get("active"):
                return JSONResponse({"error": "invalid_token"}, status_code=401)
            need = _NEEDS.get(path.strip("/").split("/")[0])
            if need and need not in str(info.get("scope", "")).split():
                return JSONResponse({"error": "insufficient_scope"}, status_code=403)
            if path == "/echo/auth":  # a debugging API that echoes the credential it was sent
                return JSONResponse({"you_sent": auth, "token": token}, headers={"X-Echo-Auth": auth})
            if path == "/echo/leak":
                return JSONResponse({"leak": self.leak})
            return JSONResponse({"ok": True, "path": path, "scope": info.get("scope"), "sub": info.get("sub")})

        return Starlette(routes=[Route("/{path:path}", handle, methods=["GET", "POST"])])

    def tokens(self, path: str | None = None) -> list[str]:
        with self.lock:
            return [s["token"] for s in self.seen if path is None or s["path"] == path]


@dataclass
class FakeAs:
    """A misbehaving token endpoint (see the module docstring); ``revoked`` lists the tokens revoked at it."""

    url: str = ""
    revoked: list[str] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        async def token(request: Request) -> Response:
            kind = request.path_params["kind"]
            form = dict(await request.form())
            if kind == "leaky":
                echo = f"bad client {request.headers.get('authorization')} {form}"
                return JSONResponse({"error": "invalid_client", "error_description": echo}, status_code=400)
            if kind == "slow":
                await asyncio.sleep(3)
            value = f"{kind}-{secrets.token_urlsafe(16)}"
            self.issued.append(value)
            scope = "contacts.read notes.write admin" if kind == "wide" else str(form.get("scope", ""))
            return JSONResponse({"access_token": value, "token_type": "mac" if kind == "mac" else "Bearer",
                                 "expires_in": 60, "scope": scope})  # fmt: skip

        async def revoke(request: Request) -> Response:
            self.revoked.append(str((await request.form())["token"]))
            return Response(status_code=200)

        return Starlette(routes=[Route("/{kind}/token", token, methods=["POST"]),
                                 Route("/{kind}/revoke", revoke, methods=["POST"])])  # fmt: skip


def toml_route(name: str, upstream: str, oauth: dict[str, Any], *, allow: list[str] = ALLOW,
               call_scopes: dict[str, list[str]] | None = None, **settings: Any) -> str:  # fmt: skip
    """A ``[[gateway.routes]]`` row (``settings`` added) with its ``[gateway.routes.oauth]`` table and ``call_scopes``."""
    row = {"name": name, "upstream": upstream, "allow": allow, "owner": "team-crm",
           "justification": "the vendor issues OAuth tokens", "max_requests_per_second": 1000,
           "max_requests_per_task": 1000, **settings}  # fmt: skip
    lines = ["[[gateway.routes]]", *(f"{k} = {json.dumps(v)}" for k, v in row.items()), "expires = 2099-12-31"]
    lines += ["[gateway.routes.oauth]", *(f"{k} = {json.dumps(v)}" for k, v in oauth.items())]
    scopes = CALL_SCOPES if call_scopes is None else call_scopes
    if scopes:
        lines += ["[gateway.routes.oauth.call_scopes]", *(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in scopes.items())]
    return "\n".join(lines) + "\n"


def _refresh_token(server: OAuthServer, client_id: str, secret: str) -> str:
    """A refresh token from a real authorization code + PKCE flow (what ``tether vault oauth-connect`` stores)."""
    verifier, challenge = pkce()
    query = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "scope": " ".join(SCOPES),
             "state": "s", "code_challenge": challenge, "code_challenge_method": "S256"}  # fmt: skip
    callback = authorize(f"{server.authorization_endpoint}?{urlencode(query)}", REDIRECT)
    assert isinstance(callback, str)
    code = parse_qs(urlsplit(callback).query)["code"][0]
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier}
    answer = server.token(form, auth=(client_id, secret))
    assert answer.status_code == 200, answer.text[:300]
    return str(answer.json()["refresh_token"])


@dataclass
class OAuthEnv:
    gw: GatewayEnv
    server: OAuthServer
    api: Api
    #: client id → secret (and the private JWK of the signing clients, under ``key``)
    secrets: dict[str, str]
    key: dict[str, Any]
    fake: FakeAs

    def caller(self, *routes: str) -> Caller:
        return self.gw.caller(*routes)

    def audit(self, kind: str, task: str | None = None) -> list[Any]:
        return self.gw.audit(kind, task)

    def vault(self, name: str) -> tuple[str, int]:
        """A vault entry's value (opened as the gateway opens it) and version."""
        return _open_entry(self.gw, name)


def _open_entry(gw: GatewayEnv, name: str) -> tuple[str, int]:
    async def read() -> tuple[str, int]:
        store = await open_store(gw.config)
        try:
            entry = await store.vault_get(name)
            assert entry is not None
            aad = vault_aad(name, created_at=entry.created_at, version=entry.version)
            return unseal(load_master_key(gw.config.master_key_file), entry.sealed, aad=aad).decode(), entry.version
        finally:
            await store.aclose()

    return asyncio.run(read())


@contextlib.contextmanager
def serve_oauth_env(directory: Path, **server_options: Any) -> Iterator[OAuthEnv]:
    """The server (``server_options``: oauth_as.mjs's, e.g. ``ttl``), the API, the STS and a gateway with ``ROUTES``."""
    key, jwks = client_key("gw-key")
    secrets_by_client = {c: secrets.token_urlsafe(18) for c in ("gw-basic", "gw-post", "gw-web", "gw-noisy")}
    clients: list[dict[str, Any]] = [
        {"client_id": "gw-basic", "client_secret": secrets_by_client["gw-basic"], "auth": "client_secret_basic"},
        {"client_id": "gw-post", "client_secret": secrets_by_client["gw-post"], "auth": "client_secret_post"},
        {"client_id": "gw-noisy", "client_secret": secrets_by_client["gw-noisy"], "auth": "client_secret_basic"},
        {"client_id": "gw-jwt", "auth": "private_key_jwt", "jwks": jwks},
        {"client_id": "gw-x", "auth": "private_key_jwt", "jwks": jwks},
        {"client_id": "gw-web", "client_secret": secrets_by_client["gw-web"], "auth": "client_secret_basic",
         "redirect_uris": [REDIRECT]},
    ]  # fmt: skip
    with OAuthServer.run(directory, clients=clients, scopes=SCOPES, **server_options) as server:
        api, fake = Api(server), FakeAs()
        port, fake_port = free_port(), free_port()
        api.url, fake.url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{fake_port}"
        thread = ServerThread(api.app(), port).start()
        fake_thread = ServerThread(fake.app(), fake_port).start()
        try:
            base = {"token_endpoint": server.token_endpoint, "scopes": SCOPES, "resource": api.url}
            revoke = {"revocation_endpoint": server.revocation_endpoint}
            rows = [
                toml_route("crm", api.url, {**base, **revoke, "grant": "client_credentials", "client_id": "gw-basic",
                                            "client_secret": "crm-secret"}),
                toml_route("post", api.url, {**base, **revoke, "grant": "client_credentials", "client_id": "gw-post",
                                             "client_auth": "client_secret_post", "client_secret": "post-secret"}),
                toml_route("jwt", api.url, {**base, **revoke, "grant": "client_credentials", "client_id": "gw-jwt",
                                            "client_auth": "private_key_jwt", "private_key": "gw-key"}),
                toml_route("rt", api.url, {**{k: v for k, v in base.items() if k != "resource"}, **revoke,
                                           "grant": "refresh_token", "client_id": "gw-web", "client_secret": "web-secret",
                                           "refresh_token": "web-refresh", "redirect_uri": REDIRECT,
                                           "authorization_endpoint": server.authorization_endpoint}),
                toml_route("x", api.url, {**base, **revoke, "grant": "token_exchange", "client_id": "gw-x",
                                          "client_auth": "private_key_jwt", "private_key": "gw-key"}),
                toml_route("noisy", api.url, {**base, "grant": "client_credentials", "client_id": "gw-noisy",
                                              "client_secret": "noisy-secret"}),
                toml_route("down", api.url, {**base, "token_endpoint": f"http://127.0.0.1:{free_port()}/token",
                                             "grant": "client_credentials", "client_id": "gw-basic",
                                             "client_secret": "crm-secret"}),
                toml_route("wrong", api.url, {**base, "grant": "client_credentials", "client_id": "gw-basic",
                                              "client_secret": "wrong-secret"}),
                toml_route("absent", api.url, {**base, "grant": "client_credentials", "client_id": "gw-basic",
                                               "client_secret": "absent-secret"}),
                *(toml_route(kind, api.url, {**base, "token_endpoint": f"{fake.url}/{kind}/token",
                                             "revocation_endpoint": f"{fake.url}/{kind}/revoke",
                                             "grant": "client_credentials", "client_id": "gw-basic",
                                             "client_secret": "crm-secret"}, timeout=0.5)
                  for kind in ("leaky", "wide", "mac", "slow")),
            ]  # fmt: skip
            gw_port = free_port()
            settings = gateway_toml(gw_port, suspend_after_refusals=1000, suspend_on_cap=False, secret_cache_seconds=1)
            extra = settings + "\n" + "\n".join(rows) + "\n" + QUIET_MONITOR
            with running_sts(directory, extra_toml=extra) as sts:
                config = sts.config
                put_secret_sync(config, "crm-secret", secrets_by_client["gw-basic"])
                put_secret_sync(config, "post-secret", secrets_by_client["gw-post"])
                put_secret_sync(config, "noisy-secret", secrets_by_client["gw-noisy"])
                put_secret_sync(config, "web-secret", secrets_by_client["gw-web"])
                put_secret_sync(config, "wrong-secret", "not-the-secret-" + secrets.token_urlsafe(8))
                put_secret_sync(config, "gw-key", json.dumps(key))
                put_secret_sync(config, "web-refresh", _refresh_token(server, "gw-web", secrets_by_client["gw-web"]))
                with serve_gateway(config, sts) as gateway:
                    gw = GatewayEnv(sts=sts, config=config, gateway=gateway, upstream=Upstream(), elsewhere=Upstream(),
                                    down_port=0)  # fmt: skip
                    try:
                        yield OAuthEnv(gw, server, api, secrets_by_client, key, fake)
                    finally:
                        gw.close()
        finally:
            thread.stop()
            fake_thread.stop()


def agent_saw(caller: Caller) -> bytes:
    """Everything the agent process received (status lines, headers, bodies)."""
    return caller.transport.everything()


def introspect_many(server: OAuthServer, tokens: list[str]) -> list[bool]:
    return [bool(server.introspect(t).get("active")) for t in tokens]
