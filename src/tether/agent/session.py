"""``Agent`` and ``TaskSession``: an agent's tokens for one task, all bound to one in-memory DPoP key.

    session = Agent(sts_url, identity).session(task_id)
    with httpx.Client(auth=session.auth()) as http:
        http.get("https://wiki.example/search?q=x")   # hop token for https://wiki.example

The session token is obtained on first use and renewed near expiry; hop tokens are cached per
audience in a bounded ``TokenCache`` that a renewed session empties. ``session.mcp_auth()`` is
the same for the MCP client SDK (``httpx2``, see ``tether.agent.mcp_auth``); ``complete()``
closes every MCP auth the session handed out.

Over mutual TLS with an X.509-SVID instead of a DPoP key (RFC 8705):

    session = Agent(sts_url, x509=FileX509Identity(cert, key, bundle)).session(task_id)
    with session.client() as http:               # presents the SVID, rebuilt when it rotates
        http.get("https://wiki.example/search?q=x")

The session token comes from the client-credentials grant (RFC 6749 §4.4) with the SPIFFE ID as
``client_id``, the client authenticated by its certificate (RFC 8705 §2.1); hop exchanges go
over the same connection, and tokens without ``jkt`` are sent as ``Authorization: Bearer`` with
the certificate (§3). When the certificate rotates, the session and its hop tokens are dropped
and exchanged again: they are bound to the old certificate's thumbprint. ``dpop=True`` adds a
DPoP proof to every exchange as well, so tokens carry both bindings (both are then checked).

Held requests (issue 17): ``approval_timeout`` (seconds, default 0) is how long an exchange
the STS holds for a human's approval is polled before ``ApprovalPending`` is raised. A token
for one MCP tool call (``token_for_call``) is asked with RFC 9396 ``authorization_details``;
it carries ``tctx`` (and ``apr`` when a human approved it), serves that one call only, and is
never cached. ``session.mcp_auth()`` asks for one by itself when a server answers a
``tools/call`` with ``approval_required``.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx

from tether.agent.auth import DPoPAuth, FlowLock, SessionEnded
from tether.agent.exchange import Flow, IssuedToken, Nonces, exchange_flow, run_async, run_sync, send_flow
from tether.agent.identity import IdentitySource
from tether.agent.proof import DPoPKey
from tether.agent.token_cache import TokenCache, margin
from tether.agent.x509 import AsyncX509Transport, X509Source, X509Transport
from tether.clock import Clock, SystemClock
from tether.urns import CLIENT_CREDENTIALS, TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS, TOKEN_TYPE_JWT

if TYPE_CHECKING:
    from tether.agent.mcp_auth import McpAuth

__all__ = ["Agent", "TaskSession", "tool_call_details"]

#: audiences whose hop tokens a session keeps (a task names a handful)
MAX_HOPS = 256

#: RFC 6749 §4.4: the session exchange of a client authenticated by its certificate


def tool_call_details(tool: str, arguments: Mapping[str, Any]) -> str:
    """RFC 9396 ``authorization_details`` for one MCP tool call: ``[{"type": "tool_call", "tool", "arguments"}]``.

    The arguments go as given; the STS and the resource hash the RFC 8785 form of both, so the
    key order and number spelling of this JSON do not matter (``rules.approval.tool_call_context``)."""
    return json.dumps([{"type": "tool_call", "tool": tool, "arguments": dict(arguments)}], separators=(",", ":"))


class Agent:
    """A workload: its identity (a workload JWT source, or an X.509-SVID source for mTLS), its
    DPoP key and its clock. ``dpop`` (default: on without ``x509``, off with it) sends DPoP
    proofs on exchanges and calls; with ``x509`` as well, tokens are bound to both."""

    def __init__(
        self,
        sts_url: str,
        identity: IdentitySource | None = None,
        *,
        key: DPoPKey | None = None,
        clock: Clock | None = None,
        x509: X509Source | None = None,
        dpop: bool | None = None,
    ) -> None:
        if dpop is False and x509 is None:
            raise ValueError("without x509 every token is DPoP-bound (RFC 9449): dpop=False needs an X.509-SVID")
        self.sts_url = sts_url.rstrip("/")
        self.identity = identity
        self.x509 = x509
        self.dpop = dpop if dpop is not None else x509 is None
        self.key = key or DPoPKey()
        self.clock = clock or SystemClock()

    def session(self, task_id: str, *, scopes: Mapping[str, str] | None = None, approval_timeout: float = 0) -> TaskSession:
        """``scopes`` narrows what each audience's hop token asks for (least privilege);
        ``approval_timeout`` is how long a held exchange waits for its approval (0: not at all)."""
        return TaskSession(self, task_id, scopes=scopes, approval_timeout=approval_timeout)


class TaskSession:
    def __init__(
        self,
        agent: Agent,
        task_id: str,
        *,
        scopes: Mapping[str, str] | None = None,
        x509: X509Source | None = None,
        approval_timeout: float = 0,
    ) -> None:
        """``x509`` overrides the agent's X.509-SVID source for this session (mTLS mode);
        ``approval_timeout``: seconds a held exchange is polled before ``ApprovalPending``."""
        self.agent = agent
        self.task_id = task_id
        self.key = agent.key
        self.x509 = x509 if x509 is not None else agent.x509
        # a session given an SVID by an agent without one is certificate-bound only
        self.dpop = agent.dpop if (x509 is None or agent.x509 is not None) else False
        #: the certificate thumbprint the current session token is bound to (mTLS mode)
        self.bound_to: str | None = None
        self.sts_url = agent.sts_url
        self.nonces = Nonces()
        self.lock = FlowLock()
        self.scopes = dict(scopes or {})
        self.approval_timeout = approval_timeout
        self._session: IssuedToken | None = None
        self.hops: TokenCache[str] = TokenCache(MAX_HOPS, clock=agent.clock)
        self.exchanges = 0
        self.ended = False
        self._mcp_auths: weakref.WeakSet[McpAuth] = weakref.WeakSet()

    @property
    def token_url(self) -> str:
        return self.sts_url + "/token"

    @property
    def exchange_key(self) -> DPoPKey | None:
        """The key exchanges and calls prove possession of; ``None``: certificate binding only."""
        return self.key if self.dpop else None

    def proof_key(self, token: str) -> DPoPKey | None:
        """Every token of a session has the same binding: DPoP proofs unless ``dpop`` is off (mTLS)."""
        return self.exchange_key

    def _check_rotation(self) -> None:
        """Tokens bound to a rotated certificate would be refused with the new one (RFC 8705 §3):
        drop them, so the next request exchanges afresh with the certificate presented now."""
        if self.x509 is None or self._session is None:
            return
        if self.x509.current().thumbprint != self.bound_to:
            self._session = None
            self.hops.clear()

    def _session_form(self) -> dict[str, str]:
        if self.x509 is not None:
            credential = self.x509.current()
            self.bound_to = credential.thumbprint
            # RFC 6749 §4.4 with RFC 8705 §2 client authentication: no client secret, no assertion
            return {"grant_type": CLIENT_CREDENTIALS, "client_id": credential.spiffe_id, "task": self.task_id}
        if self.agent.identity is None:
            raise ValueError("no workload identity for the session exchange: give a JWT source or x509=")
        return {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": self.agent.identity.token(self.sts_url),
            "subject_token_type": TOKEN_TYPE_JWT,
            "task": self.task_id,
        }

    def session_flow(self) -> Flow:
        self._check_rotation()
        now = self.agent.clock.now()
        if self._session is not None and self._session.usable(now, margin(self._session, now)):
            return self._session.value
        form = self._session_form()  # built once: a held session exchange is polled with the same workload JWT
        self._session = yield from exchange_flow(
            self.token_url, form, self.exchange_key, self.nonces, clock=self.agent.clock, approval_timeout=self.approval_timeout
        )
        self.hops.clear()  # derived from the session just replaced
        self.exchanges += 1
        return self._session.value

    def _hop_form(self, session: str, audience: str) -> dict[str, str]:
        form = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": session,
            "subject_token_type": TOKEN_TYPE_ACCESS,
            "resource": audience,
        }
        if audience in self.scopes:
            form["scope"] = self.scopes[audience]
        return form

    def token_flow(self, audience: str) -> Flow:
        self._check_rotation()
        cached = self.hops.get(audience)
        if cached is not None:
            return cached
        session = yield from self.session_flow()
        issued: IssuedToken = yield from exchange_flow(
            self.token_url,
            self._hop_form(session, audience),
            self.exchange_key,
            self.nonces,
            clock=self.agent.clock,
            approval_timeout=self.approval_timeout,
        )
        self.exchanges += 1
        self.hops.put(audience, issued)
        return issued.value

    def call_token_flow(
        self,
        audience: str,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        approval_timeout: float | None = None,
        approval_id: str | None = None,
    ) -> Flow:
        """A hop token for ``audience`` for exactly one MCP tool call (RFC 9396 ``authorization_details``
        of type ``tool_call``): the STS decides on the call itself, and may hold it for a human's
        approval (polled for ``approval_timeout`` seconds, the session's by default; ``approval_id``
        resumes an earlier wait). Not cached: it serves one call (SECURITY APR-01)."""
        self._check_rotation()
        session = yield from self.session_flow()
        form = self._hop_form(session, audience)
        form["authorization_details"] = tool_call_details(tool, arguments)
        timeout = self.approval_timeout if approval_timeout is None else approval_timeout
        issued: IssuedToken = yield from exchange_flow(
            self.token_url,
            form,
            self.exchange_key,
            self.nonces,
            clock=self.agent.clock,
            approval_timeout=timeout,
            approval_id=approval_id,
        )
        self.exchanges += 1
        return issued.value

    def auth(self, *, audiences: Mapping[str, str] | None = None, discover: bool = True) -> DPoPAuth:
        """An ``httpx.Auth`` for sync and async clients (see ``DPoPAuth``). In mTLS mode the client
        must present the SVID: use ``client()``, or ``transport()`` in a client of your own."""
        return DPoPAuth(self, audiences=audiences, discover=discover)

    def transport(self, **options: Any) -> httpx.BaseTransport:
        """The transport requests of this session go through: presenting the current X.509-SVID
        (a new connection pool after a rotation) in mTLS mode, plain ``httpx`` otherwise."""
        if self.x509 is None:
            return httpx.HTTPTransport(**{"trust_env": False, **options})
        return X509Transport(self.x509, **options)

    def async_transport(self, **options: Any) -> httpx.AsyncBaseTransport:
        if self.x509 is None:
            return httpx.AsyncHTTPTransport(**{"trust_env": False, **options})
        return AsyncX509Transport(self.x509, **options)

    def client(self, *, audiences: Mapping[str, str] | None = None, discover: bool = True, **options: Any) -> httpx.Client:
        """An ``httpx.Client`` with this session's auth and transport (``options``: timeout, headers...)."""
        options.setdefault("timeout", 10.0)
        return httpx.Client(
            auth=self.auth(audiences=audiences, discover=discover), transport=self.transport(), trust_env=False, **options
        )

    def async_client(
        self, *, audiences: Mapping[str, str] | None = None, discover: bool = True, **options: Any
    ) -> httpx.AsyncClient:
        options.setdefault("timeout", 10.0)
        return httpx.AsyncClient(
            auth=self.auth(audiences=audiences, discover=discover),
            transport=self.async_transport(),
            trust_env=False,
            **options,
        )

    def mcp_auth(
        self, *, audiences: Mapping[str, str] | None = None, discover: bool = True, approval_timeout: float | None = None
    ) -> McpAuth:
        """An ``httpx2.Auth`` for the MCP client SDK (see ``McpAuth``); needs the ``mcp`` extra.
        ``approval_timeout``: how long a held tool call waits for its approval (the session's by default)."""
        from tether.agent.mcp_auth import McpAuth  # httpx2 comes with the mcp extra

        if self.ended:
            raise SessionEnded(f"task session {self.task_id} has ended")
        timeout = self.approval_timeout if approval_timeout is None else approval_timeout
        auth = McpAuth(self, audiences=audiences, discover=discover, approval_timeout=timeout)
        self._mcp_auths.add(auth)
        return auth

    def mcp_transport(self, **options: Any) -> Any:
        """An ``httpx2`` transport presenting this session's X.509-SVID and following its rotation
        (mTLS mode): ``httpx2.AsyncClient(auth=session.mcp_auth(), transport=session.mcp_transport())``."""
        from tether.agent.mcp_auth import Httpx2X509Transport  # httpx2 comes with the mcp extra

        if self.x509 is None:
            raise ValueError("mcp_transport() is for an mTLS session (x509=); a DPoP session needs no transport")
        return Httpx2X509Transport(self.x509, **options)

    def forget(self, audience: str) -> None:
        """Drop the hop token for ``audience``: its server refused it (expired or revoked)."""
        self.hops.discard(audience)

    def token_for(self, audience: str, client: httpx.Client | None = None) -> str:
        with _client(client, self) as http:
            return str(run_sync(self.token_flow(audience), http))

    async def atoken_for(self, audience: str, client: httpx.AsyncClient | None = None) -> str:
        async with _aclient(client, self) as http:
            return str(await run_async(self.token_flow(audience), http))

    def token_for_call(
        self,
        audience: str,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        approval_timeout: float | None = None,
        approval_id: str | None = None,
        client: httpx.Client | None = None,
    ) -> str:
        """A token for one call of ``tool`` with ``arguments`` at ``audience`` (``call_token_flow``);
        raises ``ApprovalPending`` (with the ``approval_id`` to resume), ``ApprovalDenied`` or ``ApprovalExpired``."""
        flow = self.call_token_flow(audience, tool, arguments, approval_timeout=approval_timeout, approval_id=approval_id)
        with _client(client, self) as http:
            return str(run_sync(flow, http))

    async def atoken_for_call(
        self,
        audience: str,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        approval_timeout: float | None = None,
        approval_id: str | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> str:
        """``token_for_call`` for async agents."""
        flow = self.call_token_flow(audience, tool, arguments, approval_timeout=approval_timeout, approval_id=approval_id)
        async with _aclient(client, self) as http:
            return str(await run_async(flow, http))

    def complete_flow(self, action: str = "complete") -> Flow:
        """End the task with its own session token (the STS revokes everything derived from it)."""
        session = yield from self.session_flow()
        request = httpx.Request("POST", f"{self.sts_url}/tasks/{self.task_id}/{action}")
        response = yield from send_flow(request, self.exchange_key, self.nonces, access_token=session)
        response.raise_for_status()
        self.hops.clear()
        self.ended = True
        for auth in list(self._mcp_auths):
            auth.close()
        return response.json()

    def complete(self, client: httpx.Client | None = None) -> dict[str, object]:
        with _client(client, self) as http:
            result: dict[str, object] = run_sync(self.complete_flow(), http)
            return result

    async def acomplete(self, client: httpx.AsyncClient | None = None) -> dict[str, object]:
        """``complete()`` for async agents (an MCP client runs on an event loop)."""
        async with _aclient(client, self) as http:
            result: dict[str, object] = await run_async(self.complete_flow(), http)
            return result


class _client:
    """The caller's client, or one of the session's own (presenting its SVID in mTLS mode)."""

    def __init__(self, client: httpx.Client | None, session: TaskSession) -> None:
        self._given = client
        self._session = session
        self._own: httpx.Client | None = None

    def __enter__(self) -> httpx.Client:
        if self._given is not None:
            return self._given
        transport = self._session.transport() if self._session.x509 is not None else None
        self._own = httpx.Client(timeout=10.0, trust_env=False, transport=transport)
        return self._own

    def __exit__(self, *exc: object) -> None:
        if self._own is not None:
            self._own.close()


class _aclient:
    def __init__(self, client: httpx.AsyncClient | None, session: TaskSession) -> None:
        self._given = client
        self._session = session
        self._own: httpx.AsyncClient | None = None

    async def __aenter__(self) -> httpx.AsyncClient:
        if self._given is not None:
            return self._given
        transport = self._session.async_transport() if self._session.x509 is not None else None
        self._own = httpx.AsyncClient(timeout=10.0, trust_env=False, transport=transport)
        return self._own

    async def __aexit__(self, *exc: object) -> None:
        if self._own is not None:
            await self._own.aclose()
