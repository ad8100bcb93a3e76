"""The mid-stream cut: an open MCP response ends when its caller's task ends or its token expires.

Every HTTP request to an MCP server is verified when it arrives, but a response can stay open
long after: the session GET stream (MCP streamable HTTP before 2026-07-28, "Listening for
Messages from the Server") or a long ``tools/call`` answered over SSE. RFC 7009 revocation and
tether's task end (completed, cancelled, suspended) must still take effect on it, so a watcher
checks the revocation feed and the token's expiry every ``interval`` seconds while the response
is open, and cancels the server's handling when either fails. Shared by ``tether.mcp.protect``
and the MCP gateway (``tether.gateway.mcp_serve``) so both cut the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from starlette.types import Message, Send

from tether.errors import InvalidToken, OAuthError
from tether.resource.principal import Principal
from tether.resource.verifier import Verifier

__all__ = ["DEFAULT_CUT_INTERVAL", "Tracked", "ended", "watch"]

#: seconds between two revocation checks of an open response stream
DEFAULT_CUT_INTERVAL = 0.2


def ended(verifier: Verifier, principal: Principal) -> OAuthError | None:
    """Why ``principal``'s credential no longer holds (revoked token, ended task, expiry), or None."""
    now = verifier.clock.now()
    try:
        if verifier.feed is not None:
            verifier.feed.check(jti=principal.jti, task=principal.task, now=now)
        if now >= principal.expires_at + verifier.settings.skew:
            raise InvalidToken("the access token expired while its stream was open")
    except OAuthError as exc:
        return exc
    return None


async def watch(
    verifier: Verifier, principal: Principal, cancel: anyio.CancelScope, cut: list[OAuthError], *,
    interval: float = DEFAULT_CUT_INTERVAL,
) -> None:  # fmt: skip
    """Check every ``interval`` seconds; on the first failure record why in ``cut`` and cancel ``cancel``."""
    while True:
        await anyio.sleep(interval)
        reason = ended(verifier, principal)
        if reason is not None:
            cut.append(reason)
            cancel.cancel()
            return


class Tracked:
    """The real ``send``, remembering whether the response started and ended (so a cut knows
    whether to answer an error or just end the body already under way)."""

    def __init__(self, send: Send, *, on_start: Callable[[Message], None] | None = None) -> None:
        self.send = send
        self.on_start = on_start
        self.started = False
        self.finished = False

    async def __call__(self, message: Message) -> None:
        if self.finished:
            return
        if message["type"] == "http.response.start":
            self.started = True
            if self.on_start is not None:
                self.on_start(message)
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self.send(message)

    async def end(self) -> None:
        """End a started body that is still open (an empty last chunk)."""
        if self.started and not self.finished:
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})
            self.finished = True
