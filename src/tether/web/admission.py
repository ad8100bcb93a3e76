"""Admission control: beyond ``limit`` requests in flight, answer 503 at once instead of queueing.

Under overload a server that accepts everything makes every caller wait; one that
refuses the excess immediately (``503 temporarily_unavailable`` with ``Retry-After``)
keeps latency bounded for the requests it does serve, and clients back off. Health
checks are never refused, so a load balancer can tell "busy" from "down". A long-lived
stream is admitted like any request (authenticating it is work), but gives its slot back
once its response starts: its lifetime is bounded by its own caps, not by this limit.

A request is work once its body has arrived, not before: with ``prebuffer`` the body (up to that
many bytes) is read before a slot is taken, within ``body_seconds``, and handed to the endpoint
unchanged. Otherwise ``limit`` clients that send headers and part of a body, then stall, would
hold every slot for as long as they liked and lock every other client out (a slow-body attack;
uvicorn has no body deadline). A body that does not arrive in time is refused, 400
``invalid_request``, and the connection closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tether.errors import InvalidRequest, TemporarilyUnavailable
from tether.metrics import REFUSALS
from tether.web.errors import error_response

__all__ = ["AdmissionLimit"]

T = TypeVar("T")


class AdmissionLimit:
    """``exempt`` names exact paths never refused (health, metrics); ``streams`` exact paths, and
    ``stream_suffixes`` path endings (``/approvals/{id}/events``), whose slot is released when the
    response starts; nothing else is either."""

    def __init__(self, app: ASGIApp, *, limit: int, exempt: frozenset[str], streams: frozenset[str] = frozenset(),
                 stream_suffixes: tuple[str, ...] = (), prebuffer: int = 0, body_seconds: float = 10.0) -> None:  # fmt: skip
        self.app = app
        self.limit = limit
        self.prebuffer = prebuffer
        self._deadlines = _Deadlines(body_seconds)
        self.exempt = exempt
        self.streams = streams
        self.stream_suffixes = stream_suffixes
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        if self.prebuffer and scope["method"] not in ("GET", "HEAD"):
            received = await self._deadlines.run(_buffer(receive, self.prebuffer))
            if received is None:
                REFUSALS.labels(endpoint="admission", error="invalid_request").inc()
                late = InvalidRequest("the request body did not arrive in time", debug="body deadline")
                response = error_response(late)
                response.headers["Connection"] = "close"
                await response(scope, receive, send)
                return
            receive = _replay(received, receive)
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


class _Deadlines:
    """Cancels a body read that outlives its deadline: one timer for every read in flight.

    ``asyncio.timeout`` per request costs a timer handle each (about 6 µs on uvloop, a percent
    of a hop); this keeps the reads waiting in a dict and looks at them every ``tick`` seconds,
    so a read is cut between ``seconds`` and ``seconds + tick`` after it began."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.tick = min(1.0, seconds)
        self._waiting: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    async def run(self, read: Awaitable[T]) -> T | None:
        """``await read``, or None when the deadline cut it."""
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        self._waiting[task] = loop.time() + self.seconds
        if self._timer is None or self._timer_loop is not loop:  # (a new loop: the old one's timer is gone)
            self._timer, self._timer_loop = loop.call_later(self.tick, self._reap, loop), loop
        try:
            return await read
        except asyncio.CancelledError:
            if task not in self._expired:
                raise  # cancelled by someone else (the client left, shutdown)
            self._expired.discard(task)
            task.uncancel()
            return None
        finally:
            self._waiting.pop(task, None)

    def _reap(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for task, due in list(self._waiting.items()):
            if due <= now and task not in self._expired:
                self._expired.add(task)
                task.cancel("request body deadline")
        self._timer = loop.call_later(self.tick, self._reap, loop) if self._waiting else None


async def _buffer(receive: Receive, limit: int) -> list[Message]:
    """The messages of a request body, read until it ends, the client leaves, or past ``limit`` bytes."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages  # http.disconnect: the endpoint meets it as it would have
        size += len(message.get("body", b""))
        if not message.get("more_body", False) or size > limit:
            return messages  # whole, or too large: the endpoint refuses it after reading past its own limit


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` giving ``messages`` first, in order, then the real channel."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
