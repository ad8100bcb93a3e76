"""Shared pieces for the gateway tests: a real legacy upstream, a gateway on loopback, agents and raw requests.

Everything is real: the STS from ``helpers`` (uvicorn on loopback, SQLite or
PostgreSQL + Redis), the gateway under ``ServerThread``, an upstream Starlette app that
demands a static API key and records every request it receives, and the agent SDK.
Nothing is mocked; the secret is put into the vault through the store API (or the CLI).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.client import HTTPResponse
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote_plus

import httpx
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from helpers import AGENT, Client, RunningSts, admin_token, create_task, running_sts
from tether.agent import Agent, DevIdentity, TaskSession
from tether.agent.proof import DPoPKey
from tether.config import Config, load_config
from tether.gateway.app import Gateway, build_gateway
from tether.gateway.vault import put_secret
from tether.keys.sealed import load_master_key
from tether.store.open import open_store
from tether.web.server import ServerThread, free_port

__all__ = [
    "KEY",
    "QUERY_PARAM",
    "SECRET_NAME",
    "TETHER",
    "TRANSFER_CODINGS",
    "USERNAME",
    "Caller",
    "GatewayEnv",
    "RawResponse",
    "RawUpstream",
    "SeenTransport",
    "Upstream",
    "encoded_forms",
    "gateway_toml",
    "put_secret_sync",
    "raw_call",
    "raw_request",
    "route_toml",
    "send_coded",
    "serve_env",
    "serve_gateway",
    "serve_raw",
    "serve_trickle",
    "serve_upstream",
    "task_state",
    "tether_cli",
    "variant_config",
    "wait_until",
]

#: The legacy API key. Its raw, URL-encoded and base64 spellings all differ ("/", "+", "=").
KEY = "sk_live/Q7+zX=legacy9Key!b42"
SECRET_NAME = "legacy-key"
USERNAME = "svc-user"
#: ``api_key`` (the documented default) is refused by the route validation, see test_gateway_config.py
QUERY_PARAM = "apikey"


def encoded_forms(secret: str = KEY) -> list[str]:
    """Every spelling of the secret an upstream could echo (and the agent must never see)."""
    raw = secret.encode()
    return [
        secret,
        quote_plus(secret),
        quote_plus(secret, safe="/"),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        base64.b64encode(f"{USERNAME}:{secret}".encode()).decode(),
    ]


def wait_until(predicate: Callable[[], bool], *, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- the legacy upstream -------------------------------------------------------------------
@dataclass
class Upstream:
    """A bearer-only legacy API. ``key`` is the one value it accepts (mutable: rotation tests).

    The first path segment names the credential style the route under test uses:
    ``apikey`` (``X-Api-Key: KEY``), ``legacy`` (``X-Legacy-Token: Token KEY``), ``bearer``
    (``Authorization: Bearer KEY``), ``query`` (``?apikey=KEY``, exactly once) and
    ``basic`` (``svc-user:KEY``). A missing or wrong credential is 401. Every request is
    recorded with its raw path, query, all headers, the body received and the peer address
    (one per connection).
    """

    url: str = ""
    key: str = KEY
    elsewhere: str = ""
    log: list[dict[str, Any]] = field(default_factory=list)
    #: ``/hold`` answers once this is set (or after 10 s)
    released: threading.Event = field(default_factory=threading.Event)

    def requests(self, suffix: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.log if suffix is None or r["path"].endswith(suffix)]

    def last(self) -> dict[str, Any]:
        assert self.log, "the upstream received no request"
        return self.log[-1]

    def credential_ok(self, style: str, headers: Mapping[str, list[str]], query: list[tuple[str, str]]) -> bool:
        if style == "apikey":
            return headers.get("x-api-key") == [self.key]
        if style == "legacy":
            return headers.get("x-legacy-token") == [f"Token {self.key}"]
        if style == "bearer":
            return headers.get("authorization") == [f"Bearer {self.key}"]
        if style == "query":
            return [v for k, v in query if k == QUERY_PARAM] == [self.key]
        if style == "basic":
            token = base64.b64encode(f"{USERNAME}:{self.key}".encode()).decode()
            return headers.get("authorization") == [f"Basic {token}"]
        return False

    def app(self) -> Starlette:
        async def handle(request: Request) -> Response:
            raw_path = request.scope.get("raw_path", b"").decode("latin-1")
            headers: dict[str, list[str]] = {}
            for name, value in request.scope["headers"]:
                headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
            query_string = request.scope.get("query_string", b"").decode("latin-1")
            record: dict[str, Any] = {"method": request.method, "path": raw_path, "query": query_string,
                                      "headers": headers, "body": b"", "complete": False,
                                      "peer": request.scope.get("client")}  # fmt: skip
            self.log.append(record)
            try:
                record["body"] = await request.body()
                record["complete"] = True
            except ClientDisconnect:
                return Response(status_code=400)
            style, _, rest = raw_path.lstrip("/").partition("/")
            if not self.credential_ok(style, headers, parse_qsl(query_string, keep_blank_values=True)):
                return JSONResponse({"error": "invalid api key"}, status_code=401)
            return await self.behave("/" + rest, request, record)

        return Starlette(routes=[Route("/{path:path}", handle, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])])

    async def behave(self, rest: str, request: Request, record: dict[str, Any]) -> Response:
        key = self.key
        if rest == "/echo/header":
            return JSONResponse({"ok": True}, headers={"X-Debug-Key": key, "X-Debug-Encoded": quote_plus(key),
                                                       "X-Debug-B64": base64.b64encode(key.encode()).decode()})  # fmt: skip
        if rest == "/echo/body":
            return JSONResponse({"you_sent": key, "url_encoded": quote_plus(key),
                                 "b64": base64.b64encode(key.encode()).decode()})  # fmt: skip
        if rest == "/echo/request":
            # everything this request carried, credential included, in the body and in headers
            sent = {"headers": record["headers"], "query": record["query"]}
            echo = {"X-Echo-Query": record["query"], "X-Echo-Auth": ",".join(record["headers"].get("authorization", []))}
            return JSONResponse(sent, headers=echo)
        if rest == "/echo/json-escaped":
            # PHP's json_encode (and others) escape "/" as "\/" by default
            return Response('{"you_sent": "' + key.replace("/", "\\/") + '"}', media_type="application/json")
        if rest == "/echo/gzip":
            # compressed whatever the gateway asked for (it asks for identity)
            body = gzip.compress(f"compressed {key} echo".encode())
            return Response(body, media_type="text/plain", headers={"Content-Encoding": "gzip"})
        if rest.startswith("/echo/coded/"):
            return _coded(rest.removeprefix("/echo/coded/"), f"compressed {key} echo".encode())
        if rest == "/echo/stream":
            return StreamingResponse(_split_stream(key), media_type="text/plain")
        if rest == "/redirect":
            target = f"{self.elsewhere}/steal?key={quote_plus(key)}"
            return Response(status_code=302, headers={"Location": target})
        if rest == "/set-cookie":
            return JSONResponse({"ok": True}, headers={"Set-Cookie": "upstream_session=for-one-task; Path=/"})
        if rest == "/slow":
            await asyncio.sleep(1.5)
            return JSONResponse({"slow": True})
        if rest == "/big":
            return Response(b"x" * 5000, media_type="application/octet-stream")
        if rest == "/bigstream":
            return StreamingResponse(_chunks(b"y" * 500, 10), media_type="application/octet-stream")
        if rest == "/hold":
            for _ in range(1000):
                if self.released.is_set():
                    break
                await asyncio.sleep(0.01)
            return JSONResponse({"held": True})
        if rest == "/drip":  # 1200 bytes over 3 s, chunked: never silent for 50 ms
            return StreamingResponse(_chunks(b"d" * 20, 60, pause=0.05), media_type="application/octet-stream")
        if rest == "/drip-whole":  # 60 bytes over 3 s, with a Content-Length
            return StreamingResponse(_chunks(b"w", 60, pause=0.05), headers={"Content-Length": "60"})
        return JSONResponse({"ok": True, "method": request.method, "path": rest, "query": record["query"],
                             "bytes": len(record["body"])})  # fmt: skip


async def _chunks(piece: bytes, count: int, pause: float = 0.002) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield piece
        await asyncio.sleep(pause)


def _coded(variant: str, plain: bytes) -> Response:
    """A body compressed under a coding the gateway's client does not decode (or decodes once)."""
    codings = {
        "x-gzip": (gzip.compress(plain), ["x-gzip"]),
        "list": (gzip.compress(plain), ["gzip, identity"]),
        "twice": (gzip.compress(gzip.compress(plain)), ["gzip", "gzip"]),
        "br": (gzip.compress(plain), ["br"]),  # no brotli decoder installed: never passed on
        "upper": (gzip.compress(plain), ["GZIP"]),  # decoded: the coding name is case-insensitive
        "identity": (plain, ["identity"]),
    }
    body, values = codings[variant]
    response = Response(body, media_type="text/plain")
    response.raw_headers += [(b"content-encoding", v.encode()) for v in values]
    return response


async def _split_stream(key: str) -> AsyncIterator[bytes]:
    """The key in three spellings, each cut across chunk boundaries (sent as separate writes)."""
    text = f"start {key} middle {quote_plus(key)} then {base64.b64encode(key.encode()).decode()} end".encode()
    for i in range(0, len(text), 5):
        yield text[i : i + 5]
        await asyncio.sleep(0.001)


@contextlib.contextmanager
def serve_upstream(upstream: Upstream, port: int | None = None) -> Iterator[Upstream]:
    port = port or free_port()
    upstream.url = f"http://127.0.0.1:{port}"
    thread = ServerThread(upstream.app(), port).start()
    try:
        yield upstream
    finally:
        thread.stop()


@dataclass
class RawUpstream:
    """A socket-level upstream: ``respond(conn, path)`` writes whatever bytes a test needs."""

    port: int
    paths: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def serve_raw(respond: Callable[[socket.socket, str], None]) -> Iterator[RawUpstream]:
    """One thread per connection: read the request head, record its path, ``respond``, close."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    raw = RawUpstream(port=int(listener.getsockname()[1]))

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(1.0)
            with contextlib.suppress(OSError):
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                path = data.split(b" ", 2)[1].decode("latin-1")
                raw.paths.append(path)
                respond(conn, path)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield raw
    finally:
        stop.set()
        thread.join(timeout=2)
        listener.close()


@contextlib.contextmanager
def serve_trickle(seconds: float = 5.0) -> Iterator[int]:
    """A raw upstream that sends its response head one byte every 50 ms (never a full head
    within a short timeout, yet never silent long enough to trip a per-read one)."""
    stop = threading.Event()

    def drip(conn: socket.socket, path: str) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Drip: ")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not stop.is_set():
            conn.sendall(b"x")
            time.sleep(0.05)

    with serve_raw(drip) as raw:
        try:
            yield raw.port
        finally:
            stop.set()


def chunked(body: bytes, size: int = 7) -> bytes:
    """``body`` in HTTP/1.1 chunked framing (RFC 9112 §7.1), ``size`` bytes a chunk."""
    frames = [b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)]
    return b"".join(frames) + b"0\r\n\r\n"


#: ``/te/{variant}``: the key, compressed or not, under each ``Transfer-Encoding`` a test names
#: (the header fields, and whether the body is gzip/deflate-compressed and chunk-framed).
TRANSFER_CODINGS: dict[str, tuple[list[str], str, bool]] = {
    "gzip-chunked": (["gzip, chunked"], "gzip", True),
    "x-gzip-chunked": (["x-gzip, chunked"], "gzip", True),
    "deflate-chunked": (["deflate, chunked"], "deflate", True),
    "repeated": (["gzip", "chunked"], "gzip", True),
    "gzip-alone": (["gzip"], "gzip", False),
    "identity-chunked": (["identity, chunked"], "", True),
    "chunked-twice": (["chunked, chunked"], "", True),
    "chunked": (["chunked"], "", True),
    "chunked-upper": (["Chunked"], "", True),
}


def send_coded(conn: socket.socket, path: str, key: str = KEY) -> None:
    """The raw upstream of ``TRANSFER_CODINGS``: ``compressed {key} echo`` in the named coding."""
    fields, compress, framed = TRANSFER_CODINGS[path.rsplit("/", 1)[-1]]
    body = f"compressed {key} echo".encode()
    body = gzip.compress(body) if compress == "gzip" else zlib.compress(body) if compress == "deflate" else body
    head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    head += "".join(f"Transfer-Encoding: {value}\r\n" for value in fields)
    conn.sendall(head.encode() + b"\r\n" + (chunked(body) if framed else body))


# -- configuration ---------------------------------------------------------------------------
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)


def gateway_toml(port: int, **settings: Any) -> str:
    lines = ["[gateway]", f'url = "http://127.0.0.1:{port}"', f"port = {port}"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


DEFAULT_ALLOW = (
    "GET /v1/items",
    "GET /v1/items/*",
    "POST /v1/items",
    "GET /v1/files/**",
    "GET /v1/private",
    "GET /echo/header",
    "GET /echo/body",
    "GET /echo/stream",
    "GET /echo/request",
    "GET /echo/json-escaped",
    "GET /echo/gzip",
    "GET /echo/coded/*",
    "GET /redirect",
    "GET /set-cookie",
)


def route_toml(name: str, upstream: str, *, allow: Sequence[str] = DEFAULT_ALLOW, expires: str = "2099-12-31",
               **extra: Any) -> str:  # fmt: skip
    row: dict[str, Any] = {"name": name, "upstream": upstream, "secret": SECRET_NAME, "allow": list(allow),
                           "owner": "team-legacy", "justification": "the vendor API only takes a static key"}  # fmt: skip
    row.update(extra)
    lines = ["[[gateway.routes]]"] + [f"{k} = {_toml_value(v)}" for k, v in row.items()]
    lines.append(f"expires = {expires}")
    return "\n".join(lines) + "\n"


def put_secret_sync(config: Config, name: str, value: str, *, now: float | None = None) -> int:
    async def run() -> int:
        store = await open_store(config)
        try:
            entry = await put_secret(store, load_master_key(config.master_key_file), name, value.encode(),
                                     now=time.time() if now is None else now, actor="test:operator")  # fmt: skip
            return entry.version
        finally:
            await store.aclose()

    return asyncio.run(run())


@contextlib.contextmanager
def serve_gateway(config: Config, sts: RunningSts, *, clock: Any = None) -> Iterator[Gateway]:
    """The gateway of ``config`` on its configured port, its revocation view in sync."""
    gateway = build_gateway(config, clock=clock or sts.clock)
    thread = ServerThread(gateway.app, int(config.values["gateway"]["port"])).start()
    try:
        wait_until(lambda: gateway.feed.fresh(gateway.clock.now()), timeout=10, what="gateway revocation feed")
        yield gateway
    finally:
        thread.stop()


def variant_config(base: Config, **env: str) -> Config:
    """The same deployment file with ``TETHER_GATEWAY_*`` overrides (another gateway on the same STS)."""
    assert base.path is not None
    return load_config(Path(base.path), env={f"TETHER_GATEWAY_{k.upper()}": v for k, v in env.items()})


# -- agents ----------------------------------------------------------------------------------
class SeenTransport(httpx.BaseTransport):
    """A real HTTP transport that keeps a copy of every response the agent process receives."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.seen: list[tuple[str, int, list[tuple[bytes, bytes]], bytes]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        body = response.read()
        self.seen.append((str(request.url), response.status_code, list(response.headers.raw), body))
        return response

    def close(self) -> None:
        self.inner.close()

    def everything(self) -> bytes:
        """All response status lines, headers and bodies the agent got, as one blob."""
        parts = []
        for url, status, headers, body in self.seen:
            parts.append(f"{url} {status}\n".encode())
            parts += [name + b": " + value + b"\n" for name, value in headers]
            parts.append(body)
        return b"\n".join(parts)


@dataclass
class GatewayEnv:
    sts: RunningSts
    config: Config
    gateway: Gateway
    upstream: Upstream
    elsewhere: Upstream
    down_port: int
    closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.config.values["gateway"]["url"])

    def aud(self, route: str) -> str:
        return f"{self.url}/routes/{route}"

    def task(self, *routes: str, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"audiences": [self.aud(r) for r in routes] or [self.aud("apikey")],
                                "scopes": ["wiki:read"]}  # fmt: skip
        body.update(fields)
        return create_task(self.sts, **body)

    def caller(self, *routes: str, task: dict[str, Any] | None = None, extra_audiences: Sequence[str] = ()) -> Caller:
        task = task or self.task(*routes, audiences=[*(self.aud(r) for r in routes), *extra_audiences])
        caller = Caller(self, task, routes)
        self.closers.append(caller.close)
        return caller

    def audit(self, kind: str | None = None, task: str | None = None) -> list[Any]:
        return [r for r in self.sts.audit() if (kind is None or r.kind == kind) and (task is None or r.task == task)]

    def close(self) -> None:
        for close in self.closers:
            close()
        self.closers.clear()


@contextlib.contextmanager
def serve_env(tmp_path: Path, extra_toml: str, upstream: Upstream, *, elsewhere: Upstream | None = None,
              down_port: int = 0) -> Iterator[GatewayEnv]:  # fmt: skip
    """A whole deployment: an STS with ``extra_toml`` (its gateway settings and routes), the
    upstream's key in the vault as ``SECRET_NAME``, and the gateway serving."""
    with running_sts(tmp_path, extra_toml=extra_toml) as sts:
        put_secret_sync(sts.config, SECRET_NAME, upstream.key)
        with serve_gateway(sts.config, sts) as gateway:
            env = GatewayEnv(sts=sts, config=sts.config, gateway=gateway, upstream=upstream,
                             elsewhere=elsewhere or upstream, down_port=down_port)  # fmt: skip
            try:
                yield env
            finally:
                env.close()


class Caller:
    """An agent process: its own DPoP key, a task session, an httpx client that records all it gets."""

    def __init__(self, env: GatewayEnv, task: dict[str, Any], routes: Sequence[str], *,
                 audiences: Sequence[str] = ()) -> None:  # fmt: skip
        self.env = env
        self.task = task
        self.agent = Agent(env.sts.url, DevIdentity(env.sts.dev(), AGENT))
        self.session: TaskSession = self.agent.session(task["id"])
        self.transport = SeenTransport()
        known = {aud: aud for aud in [*(env.aud(r) for r in routes), *audiences]}
        self.http = httpx.Client(auth=self.session.auth(audiences=known, discover=False), transport=self.transport,
                                 trust_env=False, timeout=10.0)  # fmt: skip
        self.plain = httpx.Client(trust_env=False, timeout=10.0)

    @property
    def key(self) -> DPoPKey:
        return self.agent.key

    def call(self, method: str, route: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, self.env.aud(route) + path, **kwargs)

    def get(self, route: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.call("GET", route, path, **kwargs)

    def token(self, audience: str) -> str:
        return self.session.token_for(audience, self.plain)

    def manual(self, method: str, url: str, token: str, *, scheme: str = "DPoP", proof: str | None = None,
               **kwargs: Any) -> httpx.Response:  # fmt: skip
        """A request built by hand: ``token`` under ``scheme`` and a proof (fresh unless given)."""
        headers = dict(kwargs.pop("headers", {}))
        headers["Authorization"] = f"{scheme} {token}"
        headers["DPoP"] = proof if proof is not None else self.key.proof(method, url, access_token=token)
        return self.plain.request(method, url, headers=headers, **kwargs)

    def complete(self) -> None:
        self.session.complete(self.plain)

    def close(self) -> None:
        self.http.close()
        self.plain.close()


# -- raw HTTP (paths that httpx would normalise or encode) ---------------------------------------
@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(base: str, method: str, target: bytes, headers: Mapping[str, str]) -> RawResponse:
    """Send ``target`` byte for byte as the request-target (no normalisation, no encoding)."""
    host, port = base.split("://", 1)[1].split(":")
    lines = [method.encode() + b" " + target + b" HTTP/1.1", f"Host: {host}:{port}".encode(), b"Connection: close"]
    lines += [f"{k}: {v}".encode() for k, v in headers.items()]
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        response = HTTPResponse(sock, method=method)
        response.begin()
        body = response.read()
        result = RawResponse(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
        response.close()
    return result


def raw_call(caller: Caller, route: str, rest: bytes, *, method: str = "GET") -> RawResponse:
    """A correctly authorised call whose path after ``/routes/{route}`` is exactly ``rest``."""
    token = caller.token(caller.env.aud(route))
    target = f"/routes/{route}".encode() + rest
    url = caller.env.url + target.decode("latin-1")
    proof = caller.key.proof(method, url, access_token=token)
    return raw_request(caller.env.url, method, target, {"Authorization": f"DPoP {token}", "DPoP": proof})


# -- the CLI -----------------------------------------------------------------------------------
TETHER = str(Path(sys.prefix) / "bin" / "tether")


def tether_cli(*args: str, stdin: bytes | None = None, env: Mapping[str, str] | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    """The real ``tether`` executable of this venv (no inherited ``TETHER_*`` overrides)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    clean.update({"COLUMNS": "200", "NO_COLOR": "1", **(env or {})})
    return subprocess.run([TETHER, *args], input=stdin if stdin is not None else b"", capture_output=True,
                          timeout=timeout, check=False, env=clean)  # fmt: skip


# -- the STS side ----------------------------------------------------------------------------------
def task_state(sts: RunningSts, task_id: str) -> str:
    client, token = admin_token(sts, Client(sts))
    response = client.api("GET", f"/tasks/{task_id}", token)
    assert response.status_code == 200, response.text
    return str(response.json()["state"])
