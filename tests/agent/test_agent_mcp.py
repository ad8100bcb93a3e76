"""``TaskSession.mcp_auth()`` with the official MCP client SDK against real MCP servers on loopback.

One STS; ``mcp`` and ``named`` are ``MCPServer`` apps (two tools) behind ``TetherMiddleware`` with
``ResourceSettings(resource="http://127.0.0.1:PORT/mcp")``. ``mcp`` serves its RFC 9728 metadata
at the path-suffixed well-known URL (a public route); ``named``'s 401 names its metadata with
``resource_metadata`` (RFC 9728 §5.1) at a path no well-known rule would find, and it demands
DPoP nonces (RFC 9449 §9). Small stub hosts answer 401 and serve metadata that must be refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
import pytest
from agentkit import App, Recorder, claims_of, serve_app, wait_until
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from helpers import AGENT, FEED_SUBSCRIBER, JWT_BEARER, QUIET_MONITOR, SVC_RS, RunningSts, create_task, free_port, running_sts
from tether.agent import Agent, DevIdentity, DiscoveryError, SessionEnded, TaskSession
from tether.clock import ManualClock
from tether.identity.dev_issuer import DevTrustDomain
from tether.resource import ResourceSettings, TetherMiddleware, Verifier
from tether.web.server import ServerThread

METADATA = "/.well-known/oauth-protected-resource"
NAMED_METADATA = "/meta/mcp-resource"


def tool_server() -> MCPServer:
    server = MCPServer("tools")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @server.tool()
    def echo(text: str) -> str:
        """Say it back."""
        return text

    return server


class PublicMetadata:
    """The test's stand-in for ``tether.mcp.protect``: the verifier's metadata at ``path``, else the MCP app."""

    def __init__(self, app: ASGIApp, verifier: Verifier, path: str) -> None:
        self.app, self.verifier, self.path = app, verifier, path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.path:
            await JSONResponse(self.verifier.metadata())(scope, receive, send)
            return
        await self.app(scope, receive, send)


class NamesMetadata:
    """Adds ``resource_metadata="URL"`` to every 401 challenge (RFC 9728 §5.1)."""

    def __init__(self, app: ASGIApp, url: str) -> None:
        self.app, self.url = app, url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def named(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                headers = [
                    (k, v + f', resource_metadata="{self.url}"'.encode() if k.lower() == b"www-authenticate" else v)
                    for k, v in message["headers"]
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, named)


def mcp_app(verifier: Verifier, log: list[dict[str, Any]], *, metadata_path: str, name_it: str | None = None) -> ASGIApp:
    inner = PublicMetadata(tool_server().streamable_http_app(streamable_http_path="/mcp"), verifier, metadata_path)
    app: ASGIApp = TetherMiddleware(inner, verifier, public_paths={metadata_path})
    if name_it is not None:
        app = NamesMetadata(app, name_it)
    return Recorder(app, log)


def stub_app(log: list[dict[str, Any]], documents: dict[str, Any], *, named: str | None = None) -> Starlette:
    """Not tether: ``/mcp`` answers 401 (naming ``named`` as its metadata), ``documents`` maps paths to metadata."""

    async def challenge(request: Request) -> Response:
        header = 'DPoP algs="ES256"' + (f', resource_metadata="{named}"' if named else "")
        return JSONResponse({"error": "invalid_token"}, status_code=401, headers={"WWW-Authenticate": header})

    async def metadata(request: Request) -> Response:
        document = documents.get(request.url.path)
        return JSONResponse(document) if document is not None else JSONResponse({"error": "not_found"}, status_code=404)

    routes = [Route("/mcp", challenge, methods=["GET", "POST", "DELETE"]), Route("/{path:path}", metadata)]
    return Starlette(routes=routes, middleware=[Middleware(Recorder, log=log)])


@dataclass
class McpEnv:
    sts: RunningSts
    domain: DevTrustDomain
    mcp: App
    named: App

    @property
    def mcp_url(self) -> str:
        return self.mcp.url + "/mcp"

    @property
    def named_url(self) -> str:
        return self.named.url + "/mcp"

    def session(self, *, clock: ManualClock | None = None, audiences: list[str] | None = None) -> TaskSession:
        task = create_task(self.sts, audiences=audiences or [self.mcp_url, self.named_url], scopes=["wiki:read"])
        return Agent(self.sts.url, DevIdentity(self.domain, AGENT), clock=clock).session(task["id"])

    def hop_audits(self, task_id: str) -> list[dict[str, Any]]:
        return [
            dict(r.detail)
            for r in self.sts.audit()
            if r.kind == "token.issued" and r.task == task_id and r.detail.get("token_kind") == "hop"
        ]


@contextlib.contextmanager
def serve_asgi(app: ASGIApp, port: int, log: list[dict[str, Any]]) -> Iterator[App]:
    """``agentkit.serve_app`` for any ASGI app (the MCP app is wrapped in plain ASGI layers)."""
    thread = ServerThread(app, port).start()
    try:
        yield App(f"http://127.0.0.1:{port}", thread, log)
    finally:
        thread.stop()


def _synced(verifier: Verifier) -> bool:
    return verifier.feed is not None and verifier.feed.fresh(time.time())


@pytest.fixture(scope="module")
def menv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpEnv]:
    ports = {name: free_port() for name in ("mcp", "named")}
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    with (
        running_sts(tmp_path_factory.mktemp("mcp"), extra_toml=FEED_SUBSCRIBER + QUIET_MONITOR) as sts,
        contextlib.ExitStack() as stack,
    ):
        rs = sts.identity(SVC_RS)
        verifiers = {
            "mcp": Verifier(ResourceSettings(issuer=sts.url, resource=url["mcp"] + "/mcp"), identity=rs),
            "named": Verifier(ResourceSettings(issuer=sts.url, resource=url["named"] + "/mcp", nonce=True), identity=rs),
        }
        logs: dict[str, list[dict[str, Any]]] = {name: [] for name in ports}
        apps = {
            "mcp": mcp_app(verifiers["mcp"], logs["mcp"], metadata_path=METADATA + "/mcp"),
            "named": mcp_app(
                verifiers["named"], logs["named"], metadata_path=NAMED_METADATA, name_it=url["named"] + NAMED_METADATA
            ),
        }
        served = {name: stack.enter_context(serve_asgi(app, ports[name], logs[name])) for name, app in apps.items()}
        for verifier in verifiers.values():
            wait_until(functools.partial(_synced, verifier), timeout=10, what="feed sync")
        yield McpEnv(sts=sts, domain=sts.dev(), **served)


@contextlib.asynccontextmanager
async def connect(url: str, auth: httpx2.Auth, *, mode: str = "auto") -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(auth=auth, trust_env=False, timeout=10.0) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


def texts(result: Any) -> list[str]:
    return [block.text for block in result.content]


# -- the SDK client through tether -----------------------------------------------------------------
def test_list_and_call_tools_with_one_exchange_per_audience(menv: McpEnv) -> None:
    session = menv.session()
    before = len(menv.mcp.log)

    async def run() -> tuple[list[str], list[str], list[str]]:
        async with connect(menv.mcp_url, session.mcp_auth()) as client:
            tools = await client.list_tools()
            added = await client.call_tool("add", {"a": 2, "b": 3})
            echoed = await client.call_tool("echo", {"text": "hi"})
            return sorted(t.name for t in tools.tools), texts(added), texts(echoed)

    names, added, echoed = asyncio.run(run())
    assert (names, added, echoed) == (["add", "echo"], ["5"], ["hi"])
    assert session.exchanges == 2, "one session token and one hop token for the whole MCP session"
    hops = menv.hop_audits(session.task_id)
    assert [h["aud"] for h in hops] == [menv.mcp_url]
    sent = menv.mcp.log[before:]
    paths = [r["path"] for r in sent]
    assert paths[:2] == ["/mcp", METADATA + "/mcp"], "the first request goes bare; its 401 leads to the path-suffixed metadata"
    assert "authorization" not in sent[0]["headers"] and "authorization" not in sent[1]["headers"]
    tokens = {r["headers"]["authorization"][0] for r in sent[2:] if "authorization" in r["headers"]}
    assert len(tokens) == 1, "the hop token is reused across requests"
    assert all("dpop" in r["headers"] for r in sent[2:] if "authorization" in r["headers"])
    claims = claims_of(tokens.pop().split(" ", 1)[1])
    assert (claims["aud"], claims["cnf"]["jkt"], claims["txn"]) == (menv.mcp_url, session.key.jkt, session.task_id)


def test_legacy_session_with_its_sse_stream_and_delete(menv: McpEnv) -> None:
    """Before 2026-07-28: initialize, an ``Mcp-Session-Id``, a long-lived GET SSE stream and a closing
    DELETE; every one carries the hop token, and the SSE bodies are left to the SDK to read."""
    session = menv.session()
    before = len(menv.mcp.log)

    async def run() -> list[str]:
        async with connect(menv.mcp_url, session.mcp_auth(), mode="legacy") as client:
            await client.list_tools()
            return texts(await client.call_tool("add", {"a": 1, "b": 1}))

    assert asyncio.run(run()) == ["2"]
    sent = [r for r in menv.mcp.log[before:] if "authorization" in r["headers"]]
    assert {r["method"] for r in sent} >= {"POST", "GET", "DELETE"}, [(r["method"], r["path"]) for r in sent]
    assert any("mcp-session-id" in r["headers"] for r in sent)
    assert len({r["headers"]["authorization"][0] for r in sent}) == 1
    assert session.exchanges == 2


def test_configured_audience_skips_discovery(menv: McpEnv) -> None:
    session = menv.session()
    before = len(menv.mcp.log)

    async def run() -> list[str]:
        auth = session.mcp_auth(audiences={menv.mcp_url: menv.mcp_url}, discover=False)
        async with connect(menv.mcp_url, auth) as client:
            return texts(await client.call_tool("echo", {"text": "mapped"}))

    assert asyncio.run(run()) == ["mapped"]
    sent = menv.mcp.log[before:]
    assert all("authorization" in r["headers"] for r in sent), "no bare probe, no metadata fetch"
    assert session.exchanges == 2


def test_hop_token_renewed_near_expiry(menv: McpEnv) -> None:
    clock = ManualClock()
    session = menv.session(clock=clock)
    before = len(menv.mcp.log)

    async def run() -> None:
        async with connect(menv.mcp_url, session.mcp_auth()) as client:
            assert texts(await client.call_tool("echo", {"text": "one"})) == ["one"]
            first = _tokens(menv.mcp.log[before:])[-1]
            assert texts(await client.call_tool("echo", {"text": "two"})) == ["two"]
            assert _tokens(menv.mcp.log[before:])[-1] == first, "still fresh: reused"
            claims = claims_of(first)
            clock.advance(claims["exp"] - claims["iat"] - 1)  # inside the renewal margin
            assert texts(await client.call_tool("echo", {"text": "three"})) == ["three"]
            renewed = _tokens(menv.mcp.log[before:])[-1]
            assert renewed != first and claims_of(renewed)["aud"] == menv.mcp_url

    asyncio.run(run())
    assert len(menv.hop_audits(session.task_id)) == 2


def _tokens(log: list[dict[str, Any]]) -> list[str]:
    return [r["headers"]["authorization"][0].split(" ", 1)[1] for r in log if "authorization" in r["headers"]]


def test_RFC9728_resource_metadata_from_the_challenge_and_nonce_answered(menv: McpEnv) -> None:
    """``named``'s 401 names metadata no well-known rule would find, and it demands a DPoP nonce."""
    session = menv.session()
    before = len(menv.named.log)

    async def run() -> list[str]:
        async with connect(menv.named_url, session.mcp_auth()) as client:
            return texts(await client.call_tool("add", {"a": 40, "b": 2}))

    assert asyncio.run(run()) == ["42"]
    sent = menv.named.log[before:]
    assert [r["path"] for r in sent[:2]] == ["/mcp", NAMED_METADATA]
    assert not [r for r in sent if r["path"].startswith(METADATA)], "the named metadata is used, not a well-known one"
    authorized = [r for r in sent if "authorization" in r["headers"]]
    first, second = (claims_of(r["headers"]["dpop"][0]) for r in authorized[:2])
    assert "nonce" not in first and second["nonce"], "the use_dpop_nonce challenge was answered once with the nonce"
    assert all("nonce" in claims_of(r["headers"]["dpop"][0]) for r in authorized[1:])
    assert session.exchanges == 2


def _raw_call(http: httpx2.Client, url: str, a: int, b: int) -> httpx2.Response:
    return http.post(url, **_add_call(a, b))


def _add_call(a: int, b: int) -> dict[str, Any]:
    """A 2026-07-28 single-exchange ``tools/call`` written by hand (MCP §Transports: headers mirror the body)."""
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "add", "arguments": {"a": a, "b": b}, "_meta": meta},
    }
    headers = {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "add",
    }
    return {"json": body, "headers": headers}


def test_sync_httpx2_client(menv: McpEnv) -> None:
    """The sync auth flow: same discovery, one exchange, the token reused."""
    session = menv.session()
    before = len(menv.mcp.log)
    with httpx2.Client(auth=session.mcp_auth(), trust_env=False, timeout=10.0) as http:
        first, second = _raw_call(http, menv.mcp_url, 1, 2), _raw_call(http, menv.mcp_url, 3, 4)
    assert [r.status_code for r in (first, second)] == [200, 200], first.text
    assert [r.json()["result"]["structuredContent"]["result"] for r in (first, second)] == [3, 7]
    assert [r["path"] for r in menv.mcp.log[before:]] == ["/mcp", METADATA + "/mcp", "/mcp", "/mcp"]
    assert len(set(_tokens(menv.mcp.log[before:]))) == 1 and session.exchanges == 2


def test_concurrent_first_requests_share_one_hop_exchange(menv: McpEnv) -> None:
    """Discovery runs without the session's lock; the token fetch under it: five first calls, one exchange."""
    session = menv.session()

    async def run() -> list[Any]:
        async with httpx2.AsyncClient(auth=session.mcp_auth(), trust_env=False, timeout=10.0) as http:
            calls = (http.post(menv.mcp_url, **_add_call(i, i)) for i in range(5))
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(run())
    assert [getattr(r, "status_code", repr(r)) for r in results] == [200] * 5
    assert sorted(r.json()["result"]["structuredContent"]["result"] for r in results) == [0, 2, 4, 6, 8]
    assert session.exchanges == 2 and len(menv.hop_audits(session.task_id)) == 1


def test_RFC6750_revoked_hop_token_is_not_retried_and_is_forgotten(menv: McpEnv) -> None:
    """A 401 ``invalid_token`` goes back to the caller after one attempt; the next request gets a new token."""
    session = menv.session()
    with httpx2.Client(auth=session.mcp_auth(), trust_env=False, timeout=10.0) as http:
        assert _raw_call(http, menv.mcp_url, 1, 1).status_code == 200
        old = _tokens(menv.mcp.log)[-1]
        form = {"token": old, "client_assertion": menv.sts.svid(AGENT), "client_assertion_type": JWT_BEARER}
        with httpx.Client(trust_env=False, timeout=10.0) as raw:
            assert raw.post(menv.sts.url + "/revoke", data=form).status_code == 200
            wait_until(lambda: _refuses(raw, menv.mcp_url, session, old), timeout=5.0, what="the server to refuse the token")
        before = len(menv.mcp.log)
        refused = _raw_call(http, menv.mcp_url, 2, 2)
        assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["www-authenticate"]
        assert len(menv.mcp.log) == before + 1, "one attempt, no retry loop"
        assert session.hops.get(menv.mcp_url) is None, "the refused token was forgotten"
        again = _raw_call(http, menv.mcp_url, 2, 2)  # positive control: a new hop token
        assert again.status_code == 200, again.text
    assert _tokens(menv.mcp.log)[-1] != old
    assert len(menv.hop_audits(session.task_id)) == 2


def _refuses(raw: httpx.Client, url: str, session: TaskSession, token: str) -> bool:
    """A bare ``tools/list`` with ``token`` and a fresh proof: ``True`` once the server answers 401 ``invalid_token``."""
    proof = session.key.proof("POST", url, access_token=token)
    headers = {"Authorization": f"DPoP {token}", "DPoP": proof, "Accept": "application/json, text/event-stream"}
    response = raw.post(url, headers=headers, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    if response.status_code != 401:
        return False
    assert response.json()["error"] == "invalid_token"
    return True


# -- discovery refuses metadata that names another AS or another resource (no token passthrough) --------
@dataclass
class Stub:
    documents: dict[str, Any]
    named: str | None = None


def _refused(menv: McpEnv, make: Callable[[str], Stub]) -> tuple[list[dict[str, Any]], TaskSession, BaseException]:
    """Run one tools call through a stub built by ``make(origin)``; returns its log, the session, the error."""
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    stub = make(origin)
    log: list[dict[str, Any]] = []
    with serve_app(stub_app(log, stub.documents, named=stub.named), port, log):
        session = menv.session(audiences=[menv.mcp_url, origin + "/mcp", origin])

        async def run() -> None:
            async with connect(origin + "/mcp", session.mcp_auth()) as client:
                await client.call_tool("echo", {"text": "secret"})

        with pytest.raises(BaseException) as caught:
            asyncio.run(run())
    return log, session, _root_cause(caught.value)


def _root_cause(exc: BaseException) -> BaseException:
    """The SDK surfaces a transport failure inside exception groups: the first leaf."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _no_token(log: list[dict[str, Any]], session: TaskSession) -> None:
    assert not [r for r in log if "authorization" in r["headers"] or "dpop" in r["headers"]], "a token reached the stub"
    assert session.exchanges == 0, "no token was even requested"


def test_AUX_03_metadata_naming_another_authorization_server_is_refused(menv: McpEnv) -> None:
    log, session, error = _refused(
        menv,
        lambda origin: Stub(
            {METADATA + "/mcp": {"resource": origin + "/mcp", "authorization_servers": ["http://127.0.0.1:1"]}}
        ),
    )
    assert isinstance(error, DiscoveryError) and "authorization server" in str(error)
    assert [r["path"] for r in log] == ["/mcp", METADATA + "/mcp"]
    _no_token(log, session)


def test_AUX_03_metadata_naming_another_resource_is_refused(menv: McpEnv) -> None:
    """An impostor whose metadata claims to be the real MCP server must not obtain that server's token."""
    log, session, error = _refused(
        menv, lambda origin: Stub({METADATA + "/mcp": {"resource": menv.mcp_url, "authorization_servers": [menv.sts.url]}})
    )
    assert isinstance(error, DiscoveryError) and "another resource" in str(error)
    _no_token(log, session)


def test_AUX_03_metadata_for_a_sibling_path_is_refused_after_the_root_fallback(menv: McpEnv) -> None:
    """No path-suffixed metadata: the root one is tried next, and a ``resource`` of another path is refused."""
    log, session, error = _refused(
        menv, lambda origin: Stub({METADATA: {"resource": origin + "/other", "authorization_servers": [menv.sts.url]}})
    )
    assert isinstance(error, DiscoveryError) and "another resource" in str(error)
    assert [r["path"] for r in log] == ["/mcp", METADATA + "/mcp", METADATA]
    _no_token(log, session)


def test_MCP_08_challenge_naming_metadata_on_another_origin_is_not_fetched(menv: McpEnv) -> None:
    """The 401 names the real server's metadata: not fetched (another origin); the stub's own well-known
    URLs are tried and it has none, so nothing is sent with a token anywhere."""
    before = len(menv.mcp.log)
    log, session, error = _refused(menv, lambda origin: Stub({}, named=menv.mcp.url + METADATA + "/mcp"))
    assert isinstance(error, DiscoveryError) and "serves no protected resource metadata" in str(error)
    assert [r["path"] for r in log] == ["/mcp", METADATA + "/mcp", METADATA]
    assert len(menv.mcp.log) == before, "the other origin was not contacted"
    _no_token(log, session)


def test_AUX_03_positive_control_a_stub_whose_metadata_matches_gets_asked_with_a_token(menv: McpEnv) -> None:
    """Same stub, honest metadata: the agent does exchange and send a token (the stub still says 401)."""
    log, session, error = _refused(
        menv, lambda origin: Stub({METADATA + "/mcp": {"resource": origin + "/mcp", "authorization_servers": [menv.sts.url]}})
    )
    assert not isinstance(error, DiscoveryError), repr(error)
    assert session.exchanges == 2
    stub_url = f"http://127.0.0.1:{log[0]['headers']['host'][0].rsplit(':', 1)[1]}/mcp"
    audiences = {claims_of(token)["aud"] for token in _tokens(log)}
    assert audiences == {stub_url}, "a token for the stub itself, and only that"


# -- session.complete() ends every MCP session ----------------------------------------------------------
def test_complete_ends_the_mcp_session_locally_and_at_the_server(menv: McpEnv) -> None:
    session = menv.session()
    other = menv.session()
    seen: dict[str, Any] = {}

    async def run() -> None:
        async with connect(menv.mcp_url, session.mcp_auth()) as client:
            assert texts(await client.call_tool("echo", {"text": "before"})) == ["before"]
            seen["token"] = _tokens(menv.mcp.log)[-1]
            assert (await session.acomplete())["state"] == "completed"
            seen["sent"] = len(menv.mcp.log)
            await client.call_tool("echo", {"text": "after"})

    # The auth flow's error ends the SDK's transport: the pending call is cancelled and the
    # Client's context raises it in an exception group (as for the SDK's own OAuth errors).
    with pytest.raises(BaseExceptionGroup) as caught:
        asyncio.run(run())
    assert isinstance(_root_cause(caught.value), SessionEnded), repr(caught.value)
    assert len(menv.mcp.log) == seen["sent"], "refused locally: nothing reached the server"
    assert len(session.hops) == 0, "hop tokens dropped"
    with pytest.raises(SessionEnded):
        session.mcp_auth()
    token = seen["token"]

    with httpx.Client(trust_env=False, timeout=10.0) as raw:
        wait_until(lambda: _refuses(raw, menv.mcp_url, session, token), timeout=5.0, what="the server to refuse the token")

    async def control() -> list[str]:
        async with connect(menv.mcp_url, other.mcp_auth()) as client:
            return texts(await client.call_tool("echo", {"text": "other task"}))

    assert asyncio.run(control()) == ["other task"]
