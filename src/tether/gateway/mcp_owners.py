"""Which task owns each SDK transport session of an MCP route, and how many one task may hold.

The session-based MCP streamable HTTP protocol (before 2026-07-28, "Session Management") keeps
server state per ``Mcp-Session-Id``; the SDK's ``StreamableHTTPSessionManager`` caps them per
route (``max_sessions``) but not per caller, so one agent opening sessions could take every
slot and every other agent's ``initialize`` would be answered 503 (review finding F4). Here the
gateway remembers, from the response that names a new session, which task opened it; a task
already holding ``quota`` live sessions is refused a new one (429 ``too_many_requests``) before
the SDK sees the request, and when a task ends its sessions are terminated (F3) so they stop
holding a slot until the idle timeout.

The SDK exposes no public view of its open sessions: ``live`` reads the manager's
``_server_instances`` (mcp 2.3.0, pinned in constraints.txt); a session the SDK discarded
(DELETE, idle timeout, crash) is dropped from here the next time its task is counted or swept.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

from tether.errors import TooManyRequests

__all__ = ["SDK_SESSIONS_PER_TASK", "SdkSessionOwners"]

log = logging.getLogger("tether.gateway")

#: SDK sessions one task may hold open on one route; the SDK's own cap is this times the
#: route's ``max_sessions``, so that many tasks can each hold their full quota
SDK_SESSIONS_PER_TASK = 8


class SdkSessionOwners:
    """Task → the SDK session ids it opened on one route (plus those being opened right now)."""

    def __init__(self, manager: StreamableHTTPSessionManager, route: str, quota: int = SDK_SESSIONS_PER_TASK) -> None:
        self.manager = manager
        self.route = route
        self.quota = quota
        self._by_task: dict[str, set[str]] = {}
        self._opening: dict[str, int] = {}

    def live(self, task: str) -> set[str]:
        """The task's sessions the SDK still holds (forgetting those it discarded)."""
        open_now = self.manager._server_instances
        held = {sid for sid in self._by_task.get(task, ()) if sid in open_now}
        if held:
            self._by_task[task] = held
        else:
            self._by_task.pop(task, None)
        return held

    def reserve(self, task: str) -> None:
        """Admit one session-opening request of ``task``, or raise ``TooManyRequests`` at its quota.

        Requests being opened count too, so concurrent ``initialize``s cannot overshoot; each
        ``reserve`` is paired with a ``release`` once the request is answered."""
        if len(self.live(task)) + self._opening.get(task, 0) >= self.quota:
            raise TooManyRequests(
                f"this task already holds {self.quota} MCP sessions on route `{self.route}`; end one (DELETE) or retry later",
                retry_after=5,
            )
        self._opening[task] = self._opening.get(task, 0) + 1

    def release(self, task: str) -> None:
        left = self._opening.get(task, 0) - 1
        if left > 0:
            self._opening[task] = left
        else:
            self._opening.pop(task, None)

    def bind(self, task: str, session_id: str) -> None:
        """The SDK named a new session in its answer to ``task``'s request."""
        self._by_task.setdefault(task, set()).add(session_id)

    async def end_tasks(self, ended: Collection[str]) -> int:
        """Terminate every SDK session of a task in ``ended`` (its GET stream ends, its id answers 404);
        called by the upstream sessions' sweeper."""
        stopped = 0
        for task in [t for t in self._by_task if t not in ended]:
            self.live(task)  # forget sessions the SDK already discarded (DELETE, idle timeout)
        for task in [t for t in self._by_task if t in ended]:
            for sid in self._by_task.pop(task, set()):
                transport = self.manager._server_instances.get(sid)
                if transport is None or transport.is_terminated:
                    continue
                await transport.terminate()
                stopped += 1
        if stopped:
            log.info("MCP route %s: %d SDK session(s) of ended tasks terminated", self.route, stopped)
        return stopped
