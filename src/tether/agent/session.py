"""``Agent`` and ``TaskSession``: an agent's tokens for one task, all bound to one in-memory DPoP key.

    session = Agent(sts_url, identity).session(task_id)
    with httpx.Client(auth=session.auth()) as http:
        http.get("https://wiki.example/search?q=x")   # hop token for https://wiki.example

The session token is obtained on first use and renewed near expiry; hop tokens are cached per
audience in a bounded ``TokenCache`` that a renewed session empties. ``session.mcp_auth()`` is
the same for the MCP client SDK (``httpx2``, see ``tether.agent.mcp_auth``); ``complete()``
closes every MCP auth the session handed out.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING

import httpx

from tether.agent.auth import DPoPAuth, FlowLock, SessionEnded
from tether.agent.exchange import Flow, IssuedToken, Nonces, exchange_flow, run_async, run_sync, send_flow
from tether.agent.identity import IdentitySource
from tether.agent.proof import DPoPKey
from tether.agent.token_cache import TokenCache, margin
from tether.clock import Clock, SystemClock
from tether.urns import TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS, TOKEN_TYPE_JWT

if TYPE_CHECKING:
    from tether.agent.mcp_auth import McpAuth

__all__ = ["Agent", "TaskSession"]

#: audiences whose hop tokens a session keeps (a task names a handful)
MAX_HOPS = 256


class Agent:
    def __init__(
        self, sts_url: str, identity: IdentitySource, *, key: DPoPKey | None = None, clock: Clock | None = None
    ) -> None:
        self.sts_url = sts_url.rstrip("/")
        self.identity = identity
        self.key = key or DPoPKey()
        self.clock = clock or SystemClock()

    def session(self, task_id: str, *, scopes: Mapping[str, str] | None = None) -> TaskSession:
        """``scopes`` narrows what each audience's hop token asks for (least privilege)."""
        return TaskSession(self, task_id, scopes=scopes)


class TaskSession:
    def __init__(self, agent: Agent, task_id: str, *, scopes: Mapping[str, str] | None = None) -> None:
        self.agent = agent
        self.task_id = task_id
        self.key = agent.key
        self.sts_url = agent.sts_url
        self.nonces = Nonces()
        self.lock = FlowLock()
        self.scopes = dict(scopes or {})
        self._session: IssuedToken | None = None
        self.hops: TokenCache[str] = TokenCache(MAX_HOPS, clock=agent.clock)
        self.exchanges = 0
        self.ended = False
        self._mcp_auths: weakref.WeakSet[McpAuth] = weakref.WeakSet()

    @property
    def token_url(self) -> str:
        return self.sts_url + "/token"

    def session_flow(self) -> Flow:
        now = self.agent.clock.now()
        if self._session is not None and self._session.usable(now, margin(self._session, now)):
            return self._session.value
        form = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": self.agent.identity.token(self.sts_url),
            "subject_token_type": TOKEN_TYPE_JWT,
            "task": self.task_id,
        }
        self._session = yield from exchange_flow(self.token_url, form, self.key, self.nonces, clock=self.agent.clock)
        self.hops.clear()  # derived from the session just replaced
        self.exchanges += 1
        return self._session.value

    def token_flow(self, audience: str) -> Flow:
        cached = self.hops.get(audience)
        if cached is not None:
            return cached
        session = yield from self.session_flow()
        form = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": session,
            "subject_token_type": TOKEN_TYPE_ACCESS,
            "resource": audience,
        }
        if audience in self.scopes:
            form["scope"] = self.scopes[audience]
        issued: IssuedToken = yield from exchange_flow(self.token_url, form, self.key, self.nonces, clock=self.agent.clock)
        self.exchanges += 1
        self.hops.put(audience, issued)
        return issued.value

    def auth(self, *, audiences: Mapping[str, str] | None = None, discover: bool = True) -> DPoPAuth:
        """An ``httpx.Auth`` for sync and async clients (see ``DPoPAuth``)."""
        return DPoPAuth(self, audiences=audiences, discover=discover)

    def mcp_auth(self, *, audiences: Mapping[str, str] | None = None, discover: bool = True) -> McpAuth:
        """An ``httpx2.Auth`` for the MCP client SDK (see ``McpAuth``); needs the ``mcp`` extra."""
        from tether.agent.mcp_auth import McpAuth  # httpx2 comes with the mcp extra

        if self.ended:
            raise SessionEnded(f"task session {self.task_id} has ended")
        auth = McpAuth(self, audiences=audiences, discover=discover)
        self._mcp_auths.add(auth)
        return auth

    def forget(self, audience: str) -> None:
        """Drop the hop token for ``audience``: its server refused it (expired or revoked)."""
        self.hops.discard(audience)

    def token_for(self, audience: str, client: httpx.Client | None = None) -> str:
        with _client(client) as http:
            return str(run_sync(self.token_flow(audience), http))

    async def atoken_for(self, audience: str, client: httpx.AsyncClient | None = None) -> str:
        async with _aclient(client) as http:
            return str(await run_async(self.token_flow(audience), http))

    def complete_flow(self, action: str = "complete") -> Flow:
        """End the task with its own session token (the STS revokes everything derived from it)."""
        session = yield from self.session_flow()
        request = httpx.Request("POST", f"{self.sts_url}/tasks/{self.task_id}/{action}")
        response = yield from send_flow(request, self.key, self.nonces, access_token=session)
        response.raise_for_status()
        self.hops.clear()
        self.ended = True
        for auth in list(self._mcp_auths):
            auth.close()
        return response.json()

    def complete(self, client: httpx.Client | None = None) -> dict[str, object]:
        with _client(client) as http:
            result: dict[str, object] = run_sync(self.complete_flow(), http)
            return result

    async def acomplete(self, client: httpx.AsyncClient | None = None) -> dict[str, object]:
        """``complete()`` for async agents (an MCP client runs on an event loop)."""
        async with _aclient(client) as http:
            result: dict[str, object] = await run_async(self.complete_flow(), http)
            return result


class _client:
    def __init__(self, client: httpx.Client | None) -> None:
        self._given = client
        self._own: httpx.Client | None = None

    def __enter__(self) -> httpx.Client:
        if self._given is not None:
            return self._given
        self._own = httpx.Client(timeout=10.0, trust_env=False)
        return self._own

    def __exit__(self, *exc: object) -> None:
        if self._own is not None:
            self._own.close()


class _aclient:
    def __init__(self, client: httpx.AsyncClient | None) -> None:
        self._given = client
        self._own: httpx.AsyncClient | None = None

    async def __aenter__(self) -> httpx.AsyncClient:
        if self._given is not None:
            return self._given
        self._own = httpx.AsyncClient(timeout=10.0, trust_env=False)
        return self._own

    async def __aexit__(self, *exc: object) -> None:
        if self._own is not None:
            await self._own.aclose()
