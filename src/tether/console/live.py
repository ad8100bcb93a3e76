"""``/tasks/{id}/events``: a task page's live updates as Server-Sent Events (WHATWG HTML §9.2).

The console may run in another process than the STS that ends a task, so the stream polls the
store (``get_task``, ``task_tokens``) about once a second, waking earlier when this process's
store announces a revocation (``wait_for_revocations``). It sends ``event: task`` with
``{"state", "revoked", "live"}`` whenever the task's state or its revoked tokens change (once at
the start), and a comment line every ``HEARTBEAT`` seconds so proxies keep the connection.

Bounded: at most ``MAX_STREAMS`` streams per process (one more is a 503 page) and
``MAX_STREAMS_PER_HUMAN`` per principal (one more is a 429 page: one human, however many
sessions or tabs, cannot take every slot and leave the other operators without live views), each ends after
``[console] session_idle`` seconds or when its session would time out (a stream is not activity:
it never refreshes the session's last-seen time, so an open tab cannot keep an idle session
alive), when the session is logged out on any replica (the logout mark is re-read each loop:
WEB-01) and when the client goes away. Only the session checks of
``page("view")`` let a stream start; it carries token ids and states, never a token value.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from tether.console import lineage
from tether.console.pages.tasks import TREE_LIMIT, load_task
from tether.console.web import Human, config, context, error_page, page, session_cookie
from tether.rules.console_session import logout_key
from tether.store.errors import StoreError
from tether.web.forms import Form

__all__ = ["HEARTBEAT", "MAX_STREAMS", "MAX_STREAMS_PER_HUMAN", "MIN_GAP", "POLL", "ROUTES", "task_events"]

log = logging.getLogger("tether.console")

MAX_STREAMS = 32
MAX_STREAMS_PER_HUMAN = 8
POLL = 1.0
#: the shortest time between two reads of one stream, however many revocations arrive
MIN_GAP = 0.25
HEARTBEAT = 15.0


class _Slots:
    """This process's open streams (one counter per app)."""

    def __init__(self) -> None:
        self.open = 0
        self.by_human: dict[str, int] = {}

    def take(self, principal: str) -> None:
        self.open += 1
        self.by_human[principal] = self.by_human.get(principal, 0) + 1

    def give(self, principal: str) -> None:
        self.open -= 1
        left = self.by_human.get(principal, 1) - 1
        if left > 0:
            self.by_human[principal] = left
        else:
            self.by_human.pop(principal, None)


def _slots(request: Request) -> _Slots:
    state = request.app.state
    slots: _Slots | None = getattr(state, "console_streams", None)
    if slots is None:
        slots = _Slots()
        state.console_streams = slots
    return slots


class _Stream(StreamingResponse):
    """A streaming response that gives its slot back however it ends (even if it never started)."""

    def __init__(self, body: AsyncIterator[str], slots: _Slots, principal: str) -> None:
        super().__init__(body, media_type="text/event-stream",
                         headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})  # fmt: skip
        self._slots, self._principal = slots, principal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slots.give(self._principal)


def _event(data: dict[str, Any]) -> str:
    return "event: task\ndata: " + json.dumps(data, separators=(",", ":"), sort_keys=True) + "\n\n"


@page("view")
async def task_events(request: Request, human: Human, form: Form | None) -> Response:
    """GET ``/tasks/{id}/events``: ``text/event-stream`` of the task's state and revoked token ids."""
    ctx, cfg = context(request), config(request)
    task = await load_task(request)  # 404 page for an unknown task, before a slot is taken
    slots = _slots(request)
    if slots.open >= MAX_STREAMS:
        return error_page(request, 503, "too many live views are open on this console; reload later", human=human)
    if slots.by_human.get(human.principal, 0) >= MAX_STREAMS_PER_HUMAN:
        return error_page(request, 429, "you have too many live views open; close some task pages", human=human)
    slots.take(human.principal)
    store, task_id, session = ctx.store, task.id, human.session
    # the session's own end by its idle and absolute timeouts (WEB-01): a stream is not activity
    session_ends = min(session.seen + cfg.console.session_idle, session.iat + cfg.console.session_max)
    loop = asyncio.get_running_loop()
    ends = loop.time() + max(0.0, min(float(cfg.console.session_idle), session_ends - ctx.now()))

    async def events() -> AsyncIterator[str]:
        last: tuple[str, tuple[str, ...], int] | None = None
        beat = loop.time() + HEARTBEAT
        yield "retry: 5000\n\n"
        while loop.time() < ends and ctx.now() < session_ends:
            try:
                if await request.is_disconnected() or await store.spent(logout_key(session.sid), now=ctx.now()):
                    return
                generation = store.revocation_generation()
                current = await store.get_task(task_id)
                if current is None:
                    return
                tokens = await store.task_tokens(task_id, limit=TREE_LIMIT)
            except StoreError:
                log.debug("console stream: store read failed; ending the stream")
                return
            summary = lineage.summarize(lineage.build_forest(tokens, now=ctx.now()))
            snapshot = (current.effective_state(ctx.now()).value, summary.revoked, summary.live)
            if snapshot != last:
                last = snapshot
                yield _event({"state": snapshot[0], "revoked": list(snapshot[1]), "live": snapshot[2]})
            if loop.time() >= beat:
                beat = loop.time() + HEARTBEAT
                yield ": heartbeat\n\n"
            woke = loop.time()
            try:
                await store.wait_for_revocations(since=generation, timeout=max(0.0, min(POLL, ends - loop.time())))
            except StoreError:
                await asyncio.sleep(POLL)
            # a burst of revocations wakes each stream at most every MIN_GAP seconds, not once per revocation
            await asyncio.sleep(max(0.0, MIN_GAP - (loop.time() - woke)))

    response = _Stream(events(), slots, human.principal)
    # the cookie goes back unchanged: an open page must not keep an idle session alive (WEB-01),
    # and a cookie set here stops ``page`` from re-sealing it with a new last-seen time
    session_cookie(response, ctx.console_key, session, max_age=cfg.console.session_max)
    return response


ROUTES: list[BaseRoute] = [Route("/tasks/{task_id}/events", task_events, methods=["GET"])]
