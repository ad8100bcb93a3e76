"""``McpAuth``: the official MCP client SDK (``httpx2``) through tether, one hop token per MCP server.

    async with httpx2.AsyncClient(auth=session.mcp_auth()) as http:
        async with Client(streamable_http_client(url, http_client=http)) as mcp:
            await mcp.call_tool("search", {"q": "x"})

MCP authorization (spec 2025-11-25 and 2026-07-28, §Authorization): a request the agent has
no audience for goes out once without a token; the server's 401 names its RFC 9728
metadata (``WWW-Authenticate ... resource_metadata``, §5.1; fetched only on the server's own
origin), else the client tries the path-suffixed well-known URL and then the root one
(§3.1). The metadata is accepted only
when its ``resource`` is the MCP URL or a prefix of it on the same origin (§3.3) and its
``authorization_servers`` names this STS: a server that names another AS or another
resource gets no token (MCP "token passthrough" and audience rules). The hop token comes
from the session's ``token_flow`` (one exchange per audience, renewed near expiry) and every
request carries a fresh DPoP proof, retried once on a nonce challenge (RFC 9449 §8, §9):
the same flows ``DPoPAuth`` runs on ``httpx``, carried over ``httpx2`` by ``Httpx2Steps``.

A ``tools/call`` a server holds for a human's approval (a JSON-RPC error whose ``data.error``
is ``approval_required``, from ``tether.mcp.protect`` or the gateway) is retried once: the
auth asks the STS for a token for exactly that call (RFC 9396 ``authorization_details``,
``TaskSession.call_token_flow``), waits for the approval up to ``approval_timeout`` seconds,
and sends the same request again with it. That token serves that call only: later calls use
the ordinary hop token. If the approval does not come in time (or is denied), the server's
``approval_required`` answer stands and ``last_approval`` says why (with the ``approval_id``);
calling the tool again with the same arguments waits on the same approval.

This module is the only one in ``tether.agent`` that imports ``httpx2``, which comes with the
``mcp`` extra; ``TaskSession.mcp_auth`` imports it on first use.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import anyio
import httpx
import httpx2

from tether.agent.auth import DiscoveryError, SessionEnded, TokenProvider, _Held, proof_key, url_matches
from tether.agent.exchange import RESUMED, ApprovalDenied, ApprovalPending, ExchangeError, Flow, Pause, Steps, send_flow
from tether.agent.x509 import RotatingPools, X509Source
from tether.lru import LruCache
from tether.rules.approval import tool_call_context

__all__ = [
    "APPROVAL_REQUIRED",
    "CallTokenProvider",
    "Httpx2Steps",
    "Httpx2X509Transport",
    "McpAuth",
    "McpTokenProvider",
    "ToolCallRequest",
    "held_for_approval",
    "metadata_urls",
    "resource_metadata_of",
    "tool_call_of",
]

log = logging.getLogger("tether.agent")

METADATA_PATH = "/.well-known/oauth-protected-resource"
#: the headers a flow sets on the caller's request (RFC 9449 §7.1)
_AUTH_HEADERS = ("authorization", "dpop")
#: framing of a body already decoded by httpx2: not copied (httpx would decode it again)
_FRAMING = ("content-encoding", "content-length", "transfer-encoding")
#: ``resource_metadata=`` as an auth-param of a challenge (RFC 9110 §11.2), quoted or a token
_RESOURCE_METADATA = re.compile(r'(?:^|[\s,])resource_metadata\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]+))', re.IGNORECASE)


class McpTokenProvider(TokenProvider, Protocol):
    def forget(self, audience: str) -> None:
        """Drop the cached hop token for ``audience`` (its server refused it)."""
        ...


@runtime_checkable
class CallTokenProvider(Protocol):
    """A provider that can ask for a token for exactly one tool call (a ``TaskSession``; the
    gateway's hop provider cannot: its upstream's refusal goes back to the agent as it is)."""

    def call_token_flow(
        self,
        audience: str,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        approval_timeout: float | None = None,
        approval_id: str | None = None,
    ) -> Flow:
        """A flow returning a token for exactly one tool call (``TaskSession.call_token_flow``)."""
        ...


@dataclass(frozen=True)
class ToolCallRequest:
    """The ``tools/call`` a request carries: what a token for exactly this call is asked for."""

    request_id: str | int
    tool: str
    arguments: dict[str, Any]


def tool_call_of(body: bytes) -> ToolCallRequest | None:
    """The JSON-RPC ``tools/call`` request in ``body`` (a single message, MCP streamable HTTP), if it is one."""
    if not body or len(body) > MAX_PEEK_BYTES or body.lstrip()[:1] != b"{":
        return None
    try:
        message = json.loads(body)
    except ValueError:
        return None
    params = message.get("params") if isinstance(message, dict) else None
    if not isinstance(message, dict) or message.get("method") != "tools/call" or not isinstance(params, dict):
        return None
    request_id, tool, arguments = message.get("id"), params.get("name"), params.get("arguments", {})
    if isinstance(request_id, bool) or not isinstance(request_id, str | int) or not isinstance(tool, str):
        return None
    return ToolCallRequest(request_id, tool, arguments) if isinstance(arguments, dict) else None


def held_for_approval(response: httpx.Response, call: ToolCallRequest) -> bool:
    """Whether ``response`` answers ``call`` with a JSON-RPC ``approval_required`` error for that very
    call: same id, same tool, and (when the server names it) the ``tctx`` this agent computes."""
    body = _json(response)
    error = body.get("error") if isinstance(body, dict) else None
    data = error.get("data") if isinstance(error, dict) else None
    if not isinstance(data, dict) or data.get("error") != APPROVAL_REQUIRED or body.get("id") != call.request_id:
        return False
    if data.get("tool") != call.tool:
        return False
    named = data.get("tctx")
    return named is None or named == tool_call_context(call.tool, call.arguments)


def resource_metadata_of(challenges: list[str]) -> str | None:
    """The ``resource_metadata`` URL a 401's ``WWW-Authenticate`` names (RFC 9728 §5.1), if any."""
    for challenge in challenges:
        found = _RESOURCE_METADATA.search(challenge)
        if found:
            quoted, token = found.groups()
            return re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else token
    return None


def metadata_urls(url: httpx.URL) -> list[str]:
    """The well-known metadata URLs for a resource URL: path-suffixed first, then the root (RFC 9728 §3.1)."""
    origin = _origin(url)
    path = url.path.rstrip("/")
    return [origin + METADATA_PATH + path, origin + METADATA_PATH] if path else [origin + METADATA_PATH]


def _origin(url: httpx.URL) -> str:
    return f"{url.scheme}://{url.netloc.decode('ascii')}"


def _where(url: httpx.URL) -> str:
    """A URL for a message or cache key: no userinfo, query or fragment (they can carry secrets)."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{url.scheme}://{host}{'' if url.port is None else f':{url.port}'}{url.path}"


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


#: a tools/call body larger than this is not parsed for the approval retry (servers cap arguments far lower)
MAX_PEEK_BYTES = 1024 * 1024
#: ``data.error`` of a JSON-RPC error for a tool call held for approval (``tether.mcp.protect``)
APPROVAL_REQUIRED = "approval_required"


class Httpx2Steps:
    """Drives one tether flow (``httpx`` requests and responses) from inside an ``httpx2`` auth flow.

    The flow sees ``stand_in``, an ``httpx`` copy of the caller's request without its body and
    without ``Authorization`` or ``DPoP`` (the flow owns those): when
    the flow yields it, the caller's real ``httpx2`` request goes out carrying the headers the
    flow set (``Authorization``, ``DPoP``). Requests the flow makes itself (metadata, token
    exchange) are copied into ``httpx2`` requests. A driver reads a response body only when
    ``wants_body`` says so: always for the flow's own requests, and for the caller's request
    only when it failed: an MCP answer can be an SSE stream that lasts (MCP §Transports), and
    the SDK reads it itself.
    """

    def __init__(self, flow: Callable[[httpx.Request], Flow], request: httpx2.Request, *, peek_json: bool = False) -> None:
        """``peek_json``: read the caller's JSON answers too (a tools/call's, to see a refusal for approval)."""
        self.real = request
        self.peek_json = peek_json
        #: seconds to sleep before ``resume()`` (a held exchange's wait), else None
        self.pause: float | None = None
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() not in _AUTH_HEADERS]
        self.stand_in = httpx.Request(request.method, str(request.url), headers=headers)
        self._sent: httpx.Request | None = None
        self._steps = Steps(flow(self.stand_in))
        self.request = self._outgoing()

    @property
    def result(self) -> Any:
        return self._steps.result

    def wants_body(self, response: httpx2.Response) -> bool:
        """Read this response's body before ``answer``: a response to the flow's own request, or an error
        (and with ``peek_json`` a JSON answer, which is one message, not a stream)."""
        if self._sent is not self.stand_in or response.status_code >= 400:
            return True
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        return self.peek_json and content_type == "application/json"

    def resume(self) -> None:
        """After sleeping ``pause``: let the flow go on."""
        self.pause = None
        self._steps.answer(RESUMED)
        self.request = self._outgoing()

    def answer(self, response: httpx2.Response) -> None:
        """Hand the response to the last request back to the flow (its body read if ``wants_body``)."""
        assert self._sent is not None, "answer() before a request was sent"
        content = response.content if self.wants_body(response) else b""
        headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _FRAMING]
        copy = httpx.Response(response.status_code, headers=headers, content=content, request=self._sent)
        self._steps.answer(copy)
        self.request = self._outgoing()

    def _outgoing(self) -> httpx2.Request | None:
        wanted = self._sent = self._steps.request
        if isinstance(wanted, Pause):  # nothing to send: the driver sleeps, then ``resume()``
            self.pause = wanted.seconds
            return None
        if wanted is None:
            return None
        if wanted is self.stand_in:
            for name in _AUTH_HEADERS:
                value = wanted.headers.get(name)
                if value is None:
                    self.real.headers.pop(name, None)
                else:
                    self.real.headers[name] = value
            return self.real
        headers = [(k, v) for k, v in wanted.headers.multi_items() if k.lower() not in ("content-length", "host")]
        return httpx2.Request(wanted.method, str(wanted.url), headers=headers, content=wanted.read())


class McpAuth(httpx2.Auth):
    """An ``httpx2.Auth`` (sync and async) for MCP servers, bound to one ``TaskSession``.

    ``audiences={url_prefix: audience}`` skips discovery for the URLs it covers, as for
    ``session.auth()``; with ``discover=False`` any other URL is refused. A discovered audience
    is remembered per MCP URL. Once ``close()``d (``session.complete()`` closes every auth it
    handed out) it refuses every request locally with ``SessionEnded``.
    """

    def __init__(
        self,
        provider: McpTokenProvider,
        *,
        audiences: Mapping[str, str] | None = None,
        discover: bool = True,
        approval_timeout: float = 0,
    ) -> None:
        self.provider = provider
        #: how long a tools/call held for approval waits for it before the server's refusal stands
        self.approval_timeout = approval_timeout
        #: why the last held tools/call was not retried (``ApprovalPending`` names the approval), else None
        self.last_approval: ExchangeError | None = None
        self._calls = provider if isinstance(provider, CallTokenProvider) else None
        #: (audience, tctx) -> the approval a held call waits on, resumed by the next try of that call
        self._waiting: LruCache[tuple[str, str], str] = LruCache(256)
        self.audiences = dict(audiences or {})
        self._longest_first = sorted(self.audiences.items(), key=lambda kv: -len(kv[0]))
        self.discover = discover
        self.closed = False
        self._discovered: LruCache[str, str] = LruCache(256)  # MCP URL -> the audience its metadata named

    def close(self) -> None:
        """Refuse every further request and forget what discovery learnt."""
        self.closed = True
        self._discovered = LruCache(256)

    def _check_open(self) -> None:
        if self.closed:
            raise SessionEnded("the task session has ended: this MCP auth authenticates no further requests")

    # -- flows (httpx requests and responses; see Httpx2Steps) ------------------------------------
    def _known(self, url: httpx.URL) -> str | None:
        for prefix, audience in self._longest_first:
            if url_matches(prefix, url):
                return audience
        return self._discovered.get(_where(url))

    def audience_flow(self, request: httpx.Request) -> Flow:
        """The audience for ``request``; ``None`` when the server answered it without a token (that answer stands).

        Unknown URLs are sent once without a token: the MCP server's 401 says where its metadata is."""
        audience = self._known(request.url)
        if audience is not None:
            return audience
        if not self.discover:
            raise DiscoveryError(f"no audience configured for {_where(request.url)}")
        response = yield request
        if response.status_code != 401:
            return None
        named = resource_metadata_of(response.headers.get_list("www-authenticate"))
        audience = yield from self.metadata_flow(request.url, named)
        self._discovered.put(_where(request.url), audience)
        return audience

    def metadata_flow(self, url: httpx.URL, named: str | None) -> Flow:
        """Fetch and check the RFC 9728 metadata: ``named`` (from the 401) first, then the well-known URLs.

        ``named`` is fetched only on the MCP server's own origin: a 401 must not make the agent
        fetch any URL it likes (SSRF, MCP-08); elsewhere it is ignored and the well-known URLs
        (§3.1) are tried, as when the challenge names none. The first 200 JSON object is the one
        checked: a document that fails the checks is refused, not skipped."""
        candidates = metadata_urls(url)
        if named is not None:
            try:
                target = url.join(named)
            except httpx.InvalidURL:
                target = None
            if target is not None and _same_origin(target, url) and not target.userinfo:
                candidates.insert(0, str(target.copy_with(fragment=None)))
        for candidate in candidates:
            response = yield httpx.Request("GET", candidate, headers={"Accept": "application/json"})
            document = _json(response)
            if response.status_code == 200 and isinstance(document, dict):
                return self._accept(document, url)
        raise DiscoveryError(f"{_where(url)} serves no protected resource metadata")

    def _accept(self, document: dict[str, Any], url: httpx.URL) -> str:
        """The metadata's ``resource``, if it covers ``url`` and trusts this STS (RFC 9728 §3.3, §7.3)."""
        resource = document.get("resource")
        if not isinstance(resource, str) or not _covers(resource, url):
            raise DiscoveryError(f"{_where(url)} metadata names another resource: {str(resource)[:200]!r}")
        servers = document.get("authorization_servers")
        named = [s.rstrip("/") for s in servers if isinstance(s, str)] if isinstance(servers, list) else []
        if self.provider.sts_url not in named:
            raise DiscoveryError(f"{_where(url)} does not name {self.provider.sts_url} as its authorization server")
        return resource

    def authorized_flow(
        self, request: httpx.Request, audience: str, unlock: Callable[[], None], call: ToolCallRequest | None = None
    ) -> Flow:
        """The hop token for ``audience`` (``unlock`` once it is in hand), then ``request`` with it and a proof.

        A 401 ``invalid_token`` (expired or revoked, RFC 6750 §3.1) is returned, not retried, and
        the token is forgotten: the next request asks the STS, which refuses an ended task. A
        ``call`` held for approval is retried once with a token for it (``approved_flow``)."""
        self._check_open()
        token = yield from self.provider.token_flow(audience)
        unlock()
        self._check_open()
        response = yield from send_flow(request, proof_key(self.provider, token), self.provider.nonces, access_token=token)
        if response.status_code == 401 and 'error="invalid_token"' in response.headers.get("www-authenticate", ""):
            self.provider.forget(audience)
        if call is not None and self._calls is not None and held_for_approval(response, call):
            response = yield from self.approved_flow(request, audience, call, token)
        return response

    def approved_flow(self, request: httpx.Request, audience: str, call: ToolCallRequest, hop_token: str) -> Flow:
        """A token for exactly ``call`` (waiting up to ``approval_timeout`` for a human's yes), then
        ``request`` once more with it. If none comes, ``request`` goes once more with the ordinary
        ``hop_token``, so that the caller gets the server's ``approval_required`` answer (an auth
        flow's result is the answer to its last request, here the STS's): a held call never runs.

        An approval this auth waited on before for the same call (same audience and ``tctx``) is
        resumed with its ``approval_id`` (RFC 8628 §3.4: a new request would be a new approval);
        one that has since expired or been used up is forgotten and the call asked for afresh, a
        denied one is forgotten and the refusal stands (asking again is the caller's decision)."""
        assert self._calls is not None
        waiting = (audience, tool_call_context(call.tool, call.arguments))
        approval_id = self._waiting.get(waiting)
        token: str | None = None
        while token is None:
            try:
                token = yield from self._calls.call_token_flow(
                    audience, call.tool, call.arguments, approval_timeout=self.approval_timeout, approval_id=approval_id
                )
            except ApprovalPending as exc:
                self._waiting.put(waiting, exc.approval_id)
                return (yield from self._not_approved(request, call, hop_token, exc))
            except ExchangeError as exc:  # denied, expired, used up, or refused outright
                self._waiting.pop(waiting)
                if approval_id is not None and not isinstance(exc, ApprovalDenied):
                    approval_id = None  # that approval is over: ask for this call afresh, once
                    continue
                return (yield from self._not_approved(request, call, hop_token, exc))
        self._waiting.pop(waiting)
        self.last_approval = None
        self._check_open()
        response = yield from send_flow(request, proof_key(self.provider, token), self.provider.nonces, access_token=token)
        return response

    def _not_approved(self, request: httpx.Request, call: ToolCallRequest, hop_token: str, why: ExchangeError) -> Flow:
        self.last_approval = why
        log.info("tool call %s not approved: %s", call.tool[:128], why.error)
        self._check_open()
        response = yield from send_flow(
            request, proof_key(self.provider, hop_token), self.provider.nonces, access_token=hop_token
        )
        return response

    # -- httpx2 drivers --------------------------------------------------------------------------
    def sync_auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        """Discovery without the provider's lock; the token fetch under it (one exchange per audience)."""
        self._check_open()
        request.read()
        audience = yield from _drive_sync(Httpx2Steps(self.audience_flow, request))
        if audience is None:
            return
        call = tool_call_of(request.content)
        lock = self.provider.lock.sync
        lock.acquire()
        held = _Held(lock)
        try:
            steps = Httpx2Steps(
                lambda r: self.authorized_flow(r, audience, held.release, call), request, peek_json=call is not None
            )
            yield from _drive_sync(steps)
        finally:
            held.release()

    async def async_auth_flow(self, request: httpx2.Request) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        """As ``sync_auth_flow``, under the provider's lock for this event loop."""
        self._check_open()
        await request.aread()
        steps = Httpx2Steps(self.audience_flow, request)
        while steps.request is not None:
            response = yield steps.request
            if steps.wants_body(response):
                await response.aread()
            steps.answer(response)
        audience = steps.result
        if audience is None:
            return
        call = tool_call_of(request.content)
        lock = self.provider.lock.for_loop()
        await lock.acquire()
        held = _Held(lock)
        try:
            steps = Httpx2Steps(
                lambda r: self.authorized_flow(r, audience, held.release, call), request, peek_json=call is not None
            )
            while steps.request is not None or steps.pause is not None:
                if steps.pause is not None:  # waiting for a human's approval: nothing is sent meanwhile
                    await anyio.sleep(steps.pause)
                    steps.resume()
                    continue
                assert steps.request is not None
                response = yield steps.request
                if steps.wants_body(response):
                    await response.aread()
                steps.answer(response)
        finally:
            held.release()


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


def _covers(resource: str, url: httpx.URL) -> bool:
    """``resource`` is ``url`` or a path prefix of it on the same origin, with no userinfo, query or fragment."""
    try:
        parsed = httpx.URL(resource)
    except httpx.InvalidURL:
        return False
    if parsed.userinfo or parsed.query or parsed.fragment or parsed.scheme not in ("http", "https"):
        return False
    return url_matches(resource, url)


def _drive_sync(steps: Httpx2Steps) -> Generator[httpx2.Request, httpx2.Response, Any]:
    while steps.request is not None or steps.pause is not None:
        if steps.pause is not None:  # waiting for a human's approval: nothing is sent meanwhile
            time.sleep(steps.pause)
            steps.resume()
            continue
        assert steps.request is not None
        response = yield steps.request
        if steps.wants_body(response):
            response.read()
        steps.answer(response)
    return steps.result


class Httpx2X509Transport(httpx2.AsyncBaseTransport):
    """``tether.agent.x509.AsyncX509Transport`` for ``httpx2`` (the MCP client SDK): presents the
    source's current X.509-SVID (RFC 8705), with a new connection pool after a rotation, so the
    STS exchanges and the MCP calls of an mTLS session carry the certificate its tokens are
    bound to. ``session.mcp_transport()`` makes one."""

    def __init__(self, source: X509Source, **options: Any) -> None:
        self.source = source
        self._pools = RotatingPools(source, lambda context: httpx2.AsyncHTTPTransport(verify=context, **options))

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return await self._pools.current().handle_async_request(request)

    async def aclose(self) -> None:
        for transport in self._pools.drain():
            await transport.aclose()
