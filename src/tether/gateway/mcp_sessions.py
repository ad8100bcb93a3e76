"""Upstream MCP servers held for agent sessions: started on first use, reused, stopped when done.

A stdio upstream is a process per agent session — per (route, task, caller key ``jkt``) — so
two agents (or two tasks of one agent) never share a server's state, files or credentials
(MCP security best practices, "session hijacking" / confused deputy). At most
``route.max_sessions`` run per route, and one task holds at most ``per_task(route)`` of them
(DPoP keys are free, so a task with many keys must not take every slot: review finding F5);
one more is refused with ``too_many_requests``, never by stopping someone else's. A session's
process is stopped after ``session_idle_seconds`` unused, at once when its task ends (the
gateway's revocation feed lists the task: completed, cancelled, suspended or expired), when it
fails, and at gateway shutdown.

An HTTP upstream is one connection per route shared by every caller, with the route's vaulted
secret injected (never the agent's token: MCP authorization spec, "token passthrough"); it is
reconnected when the vaulted secret changes. A ``credential = "hop"`` route is per agent
session like stdio: its own connection, whose requests carry a token the gateway minted for
the upstream's audience from this agent's token (``mcp_hop``), made sure of before each use
and stopped with the task like a stdio process.

Each session remembers the upstream's tool list (name → RFC 8785 digest, ``catalogue.tool_digest``)
from when it started, re-listed every ``relist_seconds`` and whenever the agent lists tools, so
a tool whose definition drifts from its pin is noticed within that time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tether.errors import TooManyRequests
from tether.gateway.mcp_hop import HopCredentials, HopTokens
from tether.gateway.mcp_routes import McpRoute
from tether.gateway.proxy import BadGateway, GatewayTimeout
from tether.mcp.catalogue import tool_digest
from tether.mcp.upstream import Upstream, UpstreamError, connect
from tether.resource.principal import Principal
from tether.resource.revocations import RevocationFeed

__all__ = ["STDIO_SESSIONS_PER_TASK", "SessionKey", "UpstreamSession", "UpstreamSessions", "per_task"]

log = logging.getLogger("tether.gateway")

#: (route, task, caller jkt); a shared HTTP upstream's session is (route, "", "")
SessionKey = tuple[str, str, str]

SecretSource = Callable[[McpRoute], Awaitable[str | None]]

#: stdio upstream sessions (one per DPoP key) one task may run on one route
STDIO_SESSIONS_PER_TASK = 2


def per_task(route: McpRoute) -> int:
    """How many stdio upstreams one task may run on ``route``: ``STDIO_SESSIONS_PER_TASK``, and never
    more than half the route's slots (a route of one slot: that one), so one task cannot fill it."""
    return max(1, min(STDIO_SESSIONS_PER_TASK, route.max_sessions // 2))


@dataclass
class UpstreamSession:
    key: SessionKey
    route: McpRoute
    upstream: Upstream
    #: the vaulted secret it was connected with (HTTP upstreams)
    secret: str | None = None
    #: the hop tokens its connection carries (``credential = "hop"`` routes)
    hop: HopTokens | None = None
    #: the upstream's tools when last listed: name → digest, and name → definition
    digests: dict[str, str] = field(default_factory=dict)
    definitions: dict[str, dict[str, Any]] = field(default_factory=dict)
    listed_at: float = 0.0
    last_used: float = field(default_factory=time.monotonic)
    busy: int = 0
    closed: bool = False

    @property
    def task(self) -> str:
        return self.key[1]

    def remember(self, tools: list[dict[str, Any]]) -> None:
        self.definitions = {str(t["name"]): t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)}
        self.digests = {name: tool_digest(tool) for name, tool in self.definitions.items()}
        self.listed_at = time.monotonic()


class UpstreamSessions:
    """Every upstream session of the gateway's MCP routes, and the sweeper that ends them."""

    def __init__(self, feed: RevocationFeed, secrets: SecretSource, *, relist_seconds: float = 30.0,
                 sweep_seconds: float = 0.25, hop: HopCredentials | None = None) -> None:  # fmt: skip
        self.feed = feed
        self.secrets = secrets
        self.hop = hop
        self.relist_seconds = relist_seconds
        self.sweep_seconds = sweep_seconds
        self.sessions: dict[SessionKey, UpstreamSession] = {}
        self._starting: dict[SessionKey, asyncio.Task[UpstreamSession]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Task[None]] = set()
        #: run after each sweep (the MCP endpoints end the SDK sessions of ended tasks there)
        self.on_sweep: list[Callable[[], Awaitable[None]]] = []

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep(), name="tether-mcp-sessions")

    async def aclose(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        for starting in list(self._starting.values()):
            starting.cancel()
        await asyncio.gather(*(self.close(key, "gateway shutdown") for key in list(self.sessions)))
        await asyncio.gather(*self._stopping, return_exceptions=True)  # stops the sweeper had begun

    # -- use ---------------------------------------------------------------------------------
    def key_of(self, route: McpRoute, principal: Principal) -> SessionKey:
        if not route.per_agent:
            return (route.name, "", "")
        assert principal.task is not None  # the route refuses calls bound to no task
        return (route.name, principal.task, principal.binding)

    async def get(self, route: McpRoute, principal: Principal, incoming: str | None = None) -> UpstreamSession:
        """The caller's upstream session, started (and its tools listed) on first use.

        ``incoming`` is the agent's verified token for the route: a hop route's session
        delegates it (never forwards it) and refreshes its own token from it first."""
        key = self.key_of(route, principal)
        session = self.sessions.get(key)
        if session is not None and session.hop is not None:
            await session.hop.ready(incoming)
        if session is not None and not route.per_agent:
            secret = await self.secrets(route)
            if secret != session.secret:  # the vaulted secret was rotated: reconnect with the new one
                await self.close(key, "secret rotated")
                session = None
        if session is not None and not session.upstream.alive:  # it exited or dropped: start over
            await self.close(key, "upstream gone")
            session = None
        if session is not None:
            session.last_used = time.monotonic()
            if time.monotonic() - session.listed_at > self.relist_seconds:
                await self.relist(session)
            return session
        starting = self._starting.get(key)
        if starting is None:
            if route.per_agent:
                mine = sum(1 for k in {*self.sessions, *self._starting} if k[0] == route.name and k[1] == key[1])
                if mine >= per_task(route):
                    own = TooManyRequests(
                        f"this task already runs {mine} upstream session(s) on MCP route `{route.name}` (one per DPoP "
                        "key); reuse one",
                        retry_after=5,
                    )
                    own.audit.update(sessions_full=True)
                    raise own
                running = sum(1 for k in {*self.sessions, *self._starting} if k[0] == route.name)
                if running >= route.max_sessions:
                    full = TooManyRequests(
                        f"MCP route `{route.name}` runs its maximum of {route.max_sessions} upstream sessions; retry later",
                        retry_after=5,
                    )
                    full.audit.update(sessions_full=True, blameless=True)  # others' sessions: not this task's burst
                    raise full
            starting = asyncio.create_task(self._open(key, route, incoming))
            self._starting[key] = starting
            starting.add_done_callback(lambda _: self._starting.pop(key, None))
        return await asyncio.shield(starting)

    async def _open(self, key: SessionKey, route: McpRoute, incoming: str | None = None) -> UpstreamSession:
        secret = None if route.stdio else await self.secrets(route)
        hop = None
        if route.hop:
            if self.hop is None:  # never: the gateway refuses to start without an identity
                raise BadGateway("the gateway has no workload identity for this upstream", debug=f"route {route.name}")
            hop = self.hop.tokens(route)
            await hop.ready(incoming)  # an STS refusal is the caller's answer, before any connection
        try:
            upstream = await asyncio.wait_for(
                connect(route, secret=secret, auth=hop.auth() if hop is not None else None), route.timeout
            )
        except BaseException as exc:
            if hop is not None:
                hop.close()
            if isinstance(exc, TimeoutError):
                raise GatewayTimeout("the MCP upstream did not start in time", debug=f"route {route.name}") from exc
            if isinstance(exc, UpstreamError | OSError):
                log.error("MCP route %s: upstream could not be started: %s", route.name, exc)
                raise BadGateway("the MCP upstream could not be reached", debug=str(exc)[:300]) from exc
            raise
        session = UpstreamSession(key, route, upstream, secret=secret, hop=hop)
        try:
            await self.relist(session)
        except BaseException:
            with contextlib.suppress(Exception):
                await upstream.aclose()
            if hop is not None:
                hop.close()
            raise
        self.sessions[key] = session
        if route.stdio:
            log.info("MCP route %s: upstream pid %s started for task %s", route.name, upstream.pid, key[1])
        return session

    async def relist(self, session: UpstreamSession) -> Mapping[str, str]:
        """List the upstream's tools now (and remember them): name → digest."""
        try:
            tools = await asyncio.wait_for(session.upstream.list_tools(), session.route.timeout)
        except TimeoutError as exc:
            await self.close(session.key, "tools/list timed out")
            raise GatewayTimeout("the MCP upstream did not list its tools in time") from exc
        except (UpstreamError, OSError) as exc:
            await self.close(session.key, "tools/list failed")
            raise BadGateway("the MCP upstream failed to list its tools", debug=str(exc)[:300]) from exc
        session.remember(tools)
        return session.digests

    async def close(self, key: SessionKey, reason: str) -> None:
        session = self.sessions.pop(key, None)
        if session is None or session.closed:
            return
        session.closed = True
        if session.hop is not None:
            session.hop.close()
        if session.route.stdio:
            log.info("MCP route %s: upstream pid %s stopped (%s)", session.route.name, session.upstream.pid, reason)
        # a stop runs to its end even if the sweeper that began it is cancelled (shutdown waits for it)
        stopping = asyncio.create_task(self._stop(session))
        self._stopping.add(stopping)
        stopping.add_done_callback(self._stopping.discard)
        await asyncio.shield(stopping)

    async def _stop(self, session: UpstreamSession) -> None:
        try:
            await session.upstream.aclose()
        except Exception as exc:  # noqa: BLE001 - best effort: the session is gone either way
            log.warning("MCP route %s: upstream did not close cleanly: %s", session.route.name, exc)

    # -- the sweeper -----------------------------------------------------------------------
    def due(self, session: UpstreamSession, now: float) -> str | None:
        """Why ``session`` should stop now, or None: its task ended, its upstream died, or it is idle too long."""
        if session.route.per_agent and session.task in self.feed.tasks:
            return "task ended"
        if not session.upstream.alive:
            return "upstream gone"
        if session.busy == 0 and now - session.last_used > session.route.session_idle_seconds:
            return "idle"
        return None

    async def sweep_once(self) -> None:
        now = time.monotonic()
        due = [(key, reason) for key, session in list(self.sessions.items()) if (reason := self.due(session, now))]
        await asyncio.gather(*(self.close(key, reason) for key, reason in due))  # a slow stop holds up no other
        for hook in self.on_sweep:
            await hook()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_seconds)
            try:
                await self.sweep_once()
            except Exception:  # the sweeper must outlive one bad close
                log.exception("MCP session sweep failed")
