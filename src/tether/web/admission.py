"""Admission control: beyond ``limit`` requests in flight, answer 503 at once instead of queueing.

Under overload a server that accepts everything makes every caller wait; one that
refuses the excess immediately (``503 temporarily_unavailable`` with ``Retry-After``)
keeps latency bounded for the requests it does serve, and clients back off. Health
checks are never refused, so a load balancer can tell "busy" from "down". A long-lived
stream is admitted like any request (authenticating it is work), but gives its slot back
once its response starts: its lifetime is bounded by its own caps, not by this limit.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tether.errors import TemporarilyUnavailable
from tether.metrics import REFUSALS
from tether.web.errors import error_response

__all__ = ["AdmissionLimit"]


class AdmissionLimit:
    """``exempt`` names exact paths never refused (health, metrics); ``streams`` exact paths, and
    ``stream_suffixes`` path endings (``/approvals/{id}/events``), whose slot is released when the
    response starts; nothing else is either."""

    def __init__(self, app: ASGIApp, *, limit: int, exempt: frozenset[str], streams: frozenset[str] = frozenset(),
                 stream_suffixes: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.app = app
        self.limit = limit
        self.exempt = exempt
        self.streams = streams
        self.stream_suffixes = stream_suffixes
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            REFUSALS.labels(endpoint="admission", error="temporarily_unavailable").inc()
            refusal = TemporarilyUnavailable("the server is at capacity; retry shortly", debug="admission limit")
            await error_response(refusal)(scope, receive, send)
            return
        self.in_flight += 1
        held = True

        async def release_on_start(message: Message) -> None:
            nonlocal held
            if held and message["type"] == "http.response.start":
                held = False
                self.in_flight -= 1
            await send(message)

        try:
            path = scope["path"]
            streaming = path in self.streams or (bool(self.stream_suffixes) and path.endswith(self.stream_suffixes))
            await self.app(scope, receive, release_on_start if streaming else send)
        finally:
            if held:
                self.in_flight -= 1
