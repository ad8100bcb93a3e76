"""Which caller an MCP session belongs to: a session id is never authentication (MCP-10).

MCP streamable HTTP before 2026-07-28 keeps server state per ``Mcp-Session-Id`` (the GET stream
that carries server-to-client requests, subscriptions, pending elicitations). Every request is
verified on its own, but a session id is only a name: a second agent holding a valid token for
the same server could name the first one's session and read its stream. The MCP security best
practices ("Session Hijacking") say to bind the session to the user; tether binds it to the
principal that opened it — the subject, the agent and the task — and answers any other caller,
or an id it never issued, as the transport answers an unknown session (404, MCP 2025-11-25
"Session Management" item 3), so the client starts a new one.

Bounded without letting one caller push others out (review finding F4): an owner holds at most
``per_owner`` sessions and all owners together ``capacity``; a new session beyond either is
refused (429 ``too_many_requests``) — another owner's binding is never evicted. A binding
leaves when its session is deleted, when its task ends (the revocation feed lists it), or when
it has been idle — no request on it, none still open — for ``idle_seconds`` (the SDK's own
default session idle timeout, after which the server has forgotten the session anyway).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from tether.errors import TooManyRequests
from tether.resource.principal import Principal

__all__ = [
    "DEFAULT_IDLE_SECONDS",
    "DEFAULT_MAX_SESSIONS",
    "DEFAULT_SESSIONS_PER_OWNER",
    "SessionOwners",
    "owner_of",
]

#: sessions remembered (the mcp SDK's ``StreamableHTTPSessionManager`` default cap)
DEFAULT_MAX_SESSIONS = 10_000
#: sessions one owner (subject, agent, task) may hold at once
DEFAULT_SESSIONS_PER_OWNER = 8
#: a binding unused this long is dropped (the mcp SDK's default session idle timeout, 30 minutes)
DEFAULT_IDLE_SECONDS = 1800.0

Owner = tuple[str, str, str]


def owner_of(principal: Principal) -> Owner:
    """Who a session belongs to: the user, the agent acting for them, and the task (one session per task)."""
    return (principal.subject, principal.agent, principal.task or "")


@dataclass
class _Binding:
    owner: Owner
    last_used: float
    #: requests on this session still being answered (an open GET stream keeps it alive)
    open: int = 0


class SessionOwners:
    def __init__(
        self,
        capacity: int = DEFAULT_MAX_SESSIONS,
        *,
        per_owner: int = DEFAULT_SESSIONS_PER_OWNER,
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.per_owner = per_owner
        self.idle_seconds = idle_seconds
        self.clock = clock
        self._bindings: dict[str, _Binding] = {}
        self._by_owner: dict[Owner, set[str]] = {}
        #: session-opening requests admitted and not yet answered, per owner
        self._opening: dict[Owner, int] = {}

    def admit(self, principal: Principal, ended_tasks: Collection[str] = ()) -> None:
        """Reserve room for a session ``principal`` is about to open (an ``initialize``), or raise
        ``TooManyRequests``; pair it with ``release`` once the request is answered."""
        self._prune(ended_tasks)
        owner = owner_of(principal)
        held = len(self._by_owner.get(owner, ())) + self._opening.get(owner, 0)
        if held >= self.per_owner:
            raise TooManyRequests(
                f"this task already holds {held} MCP sessions; end one (DELETE) or retry later", retry_after=5
            )
        if len(self._bindings) + sum(self._opening.values()) >= self.capacity:
            raise TooManyRequests("the MCP server holds its maximum number of sessions; retry later", retry_after=5)
        self._opening[owner] = self._opening.get(owner, 0) + 1

    def release(self, principal: Principal) -> None:
        owner = owner_of(principal)
        left = self._opening.get(owner, 0) - 1
        if left > 0:
            self._opening[owner] = left
        else:
            self._opening.pop(owner, None)

    def bind(self, session_id: str, principal: Principal) -> None:
        """Called when the server names a session in a response to ``principal``'s request."""
        owner = owner_of(principal)
        current = self._bindings.get(session_id)
        if current is not None and current.owner != owner:  # never re-bound to someone else
            return
        if current is None:
            self._bindings[session_id] = _Binding(owner, self.clock())
            self._by_owner.setdefault(owner, set()).add(session_id)
        else:
            current.last_used = self.clock()

    def allows(self, session_id: str, principal: Principal) -> bool:
        """True only for the session's own caller; an id tether never saw issued is nobody's."""
        binding = self._bindings.get(session_id)
        if binding is None or binding.owner != owner_of(principal):
            return False
        binding.last_used = self.clock()
        return True

    def opened(self, session_id: str) -> None:
        """A request on the session started being answered (it stays alive while one is open)."""
        binding = self._bindings.get(session_id)
        if binding is not None:
            binding.open += 1

    def closed(self, session_id: str) -> None:
        binding = self._bindings.get(session_id)
        if binding is not None:
            binding.open = max(0, binding.open - 1)
            binding.last_used = self.clock()

    def forget(self, session_id: str) -> None:
        binding = self._bindings.pop(session_id, None)
        if binding is None:
            return
        ids = self._by_owner.get(binding.owner)
        if ids is not None:
            ids.discard(session_id)
            if not ids:
                del self._by_owner[binding.owner]

    def _prune(self, ended_tasks: Collection[str]) -> None:
        now = self.clock()
        stale = [
            sid
            for sid, b in self._bindings.items()
            if (b.owner[2] and b.owner[2] in ended_tasks) or (b.open == 0 and now - b.last_used > self.idle_seconds)
        ]
        for sid in stale:
            self.forget(sid)

    def __len__(self) -> int:
        return len(self._bindings)
