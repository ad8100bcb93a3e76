"""Revocation state at a resource server, kept current by the STS's server-sent-events feed.

The subscriber holds the revoked token ids and ended task ids the STS published,
each until the expiry of what it covers, so the set stays small. It resumes from its
cursor after any disconnect (``Last-Event-ID``), and it **fails closed**: when it has
not heard from the STS — an entry or a heartbeat — for longer than ``stale_after``
seconds, every check raises ``TemporarilyUnavailable`` instead of trusting state that
may be missing a revocation (issue 3; SECURITY §4 "Store outage"). It asks the STS for
heartbeats three times per ``stale_after`` (the STS allows 0.2–2 s), so a healthy feed
never looks stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from tether.clock import Clock, SystemClock
from tether.errors import InvalidToken, TemporarilyUnavailable, after_end

__all__ = ["RevocationFeed", "parse_sse"]

log = logging.getLogger("tether.resource")


async def parse_sse(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str, str | None]]:
    """Yield ``(event, data, id)`` from a text/event-stream (WHATWG HTML §9.2.6)."""
    event, last_id = "message", None
    data: list[str] = []
    async for line in lines:
        if line == "":
            if data:
                yield event, "\n".join(data), last_id
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            last_id = value


class RevocationFeed:
    def __init__(
        self,
        sts_url: str,
        http: httpx.AsyncClient,
        *,
        stale_after: float = 10.0,
        clock: Clock | None = None,
        reconnect_delay: float = 0.2,
    ) -> None:
        self.url = sts_url.rstrip("/") + "/revocations/stream"
        self._http = http
        self._stale_after = stale_after
        self._clock = clock or SystemClock()
        self._reconnect_delay = reconnect_delay
        self.cursor = 0
        self.jtis: dict[str, int] = {}
        self.tasks: dict[str, int] = {}
        self.last_heard: float | None = None
        self.connects = 0
        self.policy_version: str | None = None
        #: called (awaited) when a heartbeat names a policy version other than the last one
        self.on_policy_version: Callable[[str], Awaitable[None]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._heard = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._heard = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="tether-revocation-feed")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait_synced(self, timeout: float = 10.0) -> None:
        """Wait for the first heartbeat (the backlog has been applied)."""
        await asyncio.wait_for(self._heard.wait(), timeout)

    # -- checks -------------------------------------------------------------------
    def fresh(self, now: float) -> bool:
        return self.last_heard is not None and now - self.last_heard <= self._stale_after

    def check(self, *, jti: str, task: str | None, now: float) -> None:
        """Refuse a revoked token or ended task; refuse everything while the view is stale."""
        if not self.fresh(now):
            raise TemporarilyUnavailable(
                "revocation state is stale; refusing until the STS is reachable",
                debug=f"last heard {self.last_heard}, now {now}",
            )
        if jti in self.jtis or (task is not None and task in self.tasks):
            raise after_end(InvalidToken("token has been revoked", debug=f"revoked: jti {jti} task {task}"))

    # -- feed ---------------------------------------------------------------------
    def apply(self, entry: dict[str, Any]) -> None:
        kind, value, exp, seq = entry.get("kind"), entry.get("value"), entry.get("exp"), entry.get("seq")
        if not isinstance(value, str) or not isinstance(exp, int) or not isinstance(seq, int):
            return
        (self.jtis if kind == "jti" else self.tasks)[value] = exp
        self.cursor = max(self.cursor, seq)

    def _prune(self, now: float) -> None:
        for table in (self.jtis, self.tasks):
            for key in [k for k, exp in table.items() if exp < now - 60]:
                del table[key]

    async def _policy_heartbeat(self, version: object) -> None:
        if isinstance(version, str) and version != self.policy_version and self.on_policy_version is not None:
            try:
                await self.on_policy_version(version)
                self.policy_version = version
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("policy set %s could not be fetched: %s", version, exc)

    async def _run(self) -> None:
        while True:
            try:
                await self._consume()
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("revocation feed %s disconnected: %s", self.url, exc)
            await asyncio.sleep(self._reconnect_delay)

    async def _consume(self) -> None:
        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(self.cursor)}
        timeout = httpx.Timeout(5.0, read=self._stale_after)
        params = {"heartbeat": f"{min(2.0, self._stale_after / 3):.3f}"}
        async with self._http.stream("GET", self.url, headers=headers, params=params, timeout=timeout) as response:
            if response.status_code != 200:
                raise ValueError(f"feed answered {response.status_code}")
            self.connects += 1
            async for event, data, _ in parse_sse(response.aiter_lines()):
                payload = json.loads(data)
                if event == "revocation" and isinstance(payload, dict):
                    self.apply(payload)
                    self.last_heard = max(self.last_heard or 0.0, self._clock.now()) if self._heard.is_set() else None
                elif event == "heartbeat" and isinstance(payload, dict):
                    now = self._clock.now()
                    self.last_heard = now
                    self._prune(now)
                    await self._policy_heartbeat(payload.get("policy_version"))
                    self._heard.set()
