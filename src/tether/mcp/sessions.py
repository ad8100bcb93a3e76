"""Which caller an MCP session belongs to: a session id is never authentication (MCP-10).

MCP streamable HTTP before 2026-07-28 keeps server state per ``Mcp-Session-Id`` (the GET stream
that carries server-to-client requests, subscriptions, pending elicitations). Every request is
verified on its own, but a session id is only a name: a second agent holding a valid token for
the same server could name the first one's session and read its stream. The MCP security best
practices ("Session Hijacking") say to bind the session to the user; tether binds it to the
principal that opened it — the subject, the agent and the task — and answers any other caller,
or an id it never issued, as the transport answers an unknown session (404, MCP 2025-11-25
"Session Management" item 3), so the client starts a new one. Bounded: the oldest bindings
go first (the SDK's own session cap is the same ``DEFAULT_MAX_SESSIONS``).
"""

from __future__ import annotations

from tether.lru import LruCache
from tether.resource.principal import Principal

__all__ = ["DEFAULT_MAX_SESSIONS", "SessionOwners", "owner_of"]

#: sessions remembered (the mcp SDK's ``StreamableHTTPSessionManager`` default cap)
DEFAULT_MAX_SESSIONS = 10_000

Owner = tuple[str, str, str]


def owner_of(principal: Principal) -> Owner:
    """Who a session belongs to: the user, the agent acting for them, and the task (one session per task)."""
    return (principal.subject, principal.agent, principal.task or "")


class SessionOwners:
    def __init__(self, capacity: int = DEFAULT_MAX_SESSIONS) -> None:
        self._owners: LruCache[str, Owner] = LruCache(capacity)

    def bind(self, session_id: str, principal: Principal) -> None:
        """Called when the server names a session in a response to ``principal``'s request."""
        self._owners.put(session_id, owner_of(principal))

    def allows(self, session_id: str, principal: Principal) -> bool:
        """True only for the session's own caller; an id tether never saw issued is nobody's."""
        return self._owners.get(session_id) == owner_of(principal)

    def forget(self, session_id: str) -> None:
        self._owners.pop(session_id)

    def __len__(self) -> int:
        return len(self._owners)
