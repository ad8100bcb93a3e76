"""Relaying an upstream answer to the agent within the call's deadline, and closing the call after.

The deadline (``max_call_seconds``) covers reading from the upstream and writing to the agent
alike, so neither a trickling upstream nor an agent that stops reading holds the connection
past it. Cut mid-stream, the response is left without its final chunk, so the agent sees an
aborted response rather than a short one that looks whole (RFC 9112 §7.1); cut before anything
was sent, it is 504 ``gateway_timeout``. ``on_close`` runs exactly once, after the upstream side
is closed, however the call ended: it frees the in-flight slot and writes the result record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from starlette.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from tether.gateway.proxy import Forwarded, GatewayTimeout
from tether.web.errors import error_response

__all__ = ["Relayed", "merge_headers"]


def merge_headers(headers: list[tuple[str, str]]) -> dict[str, str]:
    """Starlette takes a mapping: repeated upstream headers are joined (RFC 9110 §5.3)."""
    merged: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        merged[key] = f"{merged[key]}, {value}" if key in merged else value
    return merged


class Relayed(StreamingResponse):
    """The response to an allowed call: the upstream's status, scrubbed headers and body."""

    def __init__(self, forwarded: Forwarded, on_close: Callable[[], Awaitable[None]]) -> None:
        super().__init__(forwarded.body, status_code=forwarded.status, headers=merge_headers(forwarded.headers))
        self.forwarded = forwarded
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        deadline = asyncio.timeout_at(self.forwarded.deadline)
        try:
            async with deadline:
                if self.forwarded.content is None:
                    await super().__call__(scope, receive, watched)
                else:  # read whole: sent with its length, without the streaming machinery
                    whole = Response(self.forwarded.content, status_code=self.status_code, headers=dict(self.headers))
                    await whole(scope, receive, watched)
        except TimeoutError:
            if not deadline.expired():
                raise
            self.forwarded.stop("deadline")
            if not started:
                await error_response(GatewayTimeout("upstream did not answer in time"), resource=True)(scope, receive, send)
        finally:
            try:
                await self.forwarded.aclose()
            finally:
                await self.on_close()
