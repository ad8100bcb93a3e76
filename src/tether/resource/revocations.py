"""Revocation state at a resource server or the gateway, kept current from the STS's feed.

The view holds revoked token ids and ended task ids until what they cover expires, resumes
from its cursor after a disconnect, and fails closed: once it has heard nothing (an entry or a
heartbeat) for ``stale_after`` seconds, every check raises ``TemporarilyUnavailable``. A
resource server follows the STS (``POST /revocations/stream``, a fresh RFC 7523 client
assertion per connection); the gateway follows its store in-process
(``RevocationFeed.from_store``). Failed connections back off, doubling to 2 s or per
``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

import httpx

from tether.agent.identity import IdentitySource
from tether.background import cancel
from tether.clock import Clock, SystemClock
from tether.errors import InvalidToken, TemporarilyUnavailable, TetherError, after_end
from tether.streams import lines_at_most
from tether.urns import JWT_BEARER

__all__ = [
    "MAX_EVENT_CHARS",
    "FeedDown",
    "FeedSource",
    "LoggedRevocation",
    "RevocationFeed",
    "RevocationLog",
    "StoreSource",
    "StsSource",
    "parse_sse",
]

log = logging.getLogger("tether.resource")

PAGE = 1000
MAX_BACKOFF = 2.0
#: the store source re-reads at least this often: another process's commit (SQLite) announces nothing here
STORE_POLL_SECONDS = 0.25

Event = tuple[str, dict[str, Any]]

#: the most one event (or one line) of a feed may hold: an entry or a heartbeat is a few hundred
#: characters; a feed, a federation peer's above all, that sends more is dropped, not buffered
MAX_EVENT_CHARS = 64 * 1024


async def parse_sse(
    lines: AsyncIterator[str], *, max_event: int = MAX_EVENT_CHARS
) -> AsyncIterator[tuple[str, str, str | None]]:
    """Yield ``(event, data, id)`` from a text/event-stream (WHATWG HTML §9.2.6); ``ValueError`` once
    one event's data passes ``max_event`` characters (a feed that never ends an event is not buffered)."""
    event, last_id = "message", None
    data: list[str] = []
    size = 0
    async for line in lines:
        if line == "":
            if data:
                yield event, "\n".join(data), last_id
            event, data, size = "message", [], 0
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            size += len(value) + 1
            if size > max_event:
                raise ValueError(f"an event's data exceeds {max_event} characters")
            data.append(value)
        elif name == "id":
            last_id = value


class FeedDown(Exception):
    """A source could not connect, was refused, or lost its connection."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FeedSource(Protocol):
    """Where the view's events come from: ``("open", {})`` once connected, then ``revocation``
    and ``heartbeat`` events, until the connection ends (or ``FeedDown``)."""

    name: str

    def events(self, cursor: int, heartbeat: float) -> AsyncGenerator[Event, None]: ...


class LoggedRevocation(Protocol):
    """One entry of the store's revocation log (``tether.store.records.Revocation``)."""

    @property
    def seq(self) -> int: ...

    def as_json(self) -> dict[str, Any]: ...


class RevocationLog(Protocol):
    """The part of the store the gateway's view reads (``tether.store.protocol.Store``).

    Its failures are ``TetherError`` (the store's ``StoreError``): the feed is then down and reconnects.
    """

    async def revocations_after(self, seq: int, *, now: float, limit: int) -> Sequence[LoggedRevocation]: ...

    def revocation_generation(self) -> int: ...

    async def wait_for_revocations(self, *, since: int, timeout: float) -> bool: ...


class StsSource:
    """The STS's SSE stream, authenticated with a fresh workload JWT on every connect."""

    def __init__(self, sts_url: str, http: httpx.AsyncClient, identity: IdentitySource, *, audience: str,
                 read_timeout: float) -> None:  # fmt: skip
        self.name = sts_url.rstrip("/") + "/revocations/stream"
        self._http = http
        self._identity = identity
        self._audience = audience
        self._timeout = httpx.Timeout(5.0, read=read_timeout)

    async def events(self, cursor: int, heartbeat: float) -> AsyncGenerator[Event, None]:
        try:
            assertion = self._identity.token(self._audience)
        except (OSError, ValueError, RuntimeError) as exc:  # ``IdentitySource.token``'s failures: retried
            raise FeedDown(f"no workload identity: {exc}") from exc
        form = {"client_assertion_type": JWT_BEARER, "client_assertion": assertion, "heartbeat": f"{heartbeat:.3f}"}
        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(cursor)}
        try:
            async with self._http.stream("POST", self.name, data=form, headers=headers, timeout=self._timeout) as response:
                if response.status_code != 200:
                    await response.aread()
                    refusal = f"refused: {response.status_code} {_error_code(response)}"
                    raise FeedDown(refusal, retry_after=_retry_after(response))
                yield "open", {}
                too_long = ValueError(f"a line exceeds {MAX_EVENT_CHARS} characters")
                lines = lines_at_most(response.aiter_bytes(), MAX_EVENT_CHARS, lambda: too_long)
                async for event, data, _ in parse_sse(lines):
                    payload = json.loads(data)
                    if isinstance(payload, dict):
                        yield event, payload
        except (httpx.HTTPError, ValueError) as exc:
            raise FeedDown(str(exc) or type(exc).__name__) from exc


def _error_code(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get("error", ""))[:64] if isinstance(body, dict) else ""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


class StoreSource:
    """The store itself, read in-process (the gateway): a heartbeat after every successful read."""

    def __init__(self, store: RevocationLog, clock: Clock) -> None:
        self.name = "the store"
        self._store = store
        self._clock = clock

    async def events(self, cursor: int, heartbeat: float) -> AsyncGenerator[Event, None]:
        store = self._store
        try:
            yield "open", {}
            while True:
                generation = store.revocation_generation()
                page = await store.revocations_after(cursor, now=self._clock.now(), limit=PAGE)
                for entry in page:
                    cursor = entry.seq
                    yield "revocation", entry.as_json()
                if len(page) == PAGE:
                    continue
                yield "heartbeat", {"cursor": cursor, "time": self._clock.now()}
                await store.wait_for_revocations(since=generation, timeout=min(heartbeat, STORE_POLL_SECONDS))
        except TetherError as exc:  # the store's StoreError
            raise FeedDown(str(exc)) from exc


class RevocationFeed:
    def __init__(
        self,
        sts_url: str,
        http: httpx.AsyncClient,
        *,
        identity: IdentitySource,
        audience: str | None = None,
        stale_after: float = 10.0,
        clock: Clock | None = None,
        reconnect_delay: float = 0.2,
    ) -> None:
        """Follow the STS at ``sts_url``; ``audience`` of the client assertions defaults to it (the issuer)."""
        source = StsSource(sts_url, http, identity, audience=audience or sts_url.rstrip("/"), read_timeout=stale_after)
        self._setup(source, stale_after=stale_after, clock=clock, reconnect_delay=reconnect_delay)

    @classmethod
    def from_store(
        cls, store: RevocationLog, *, stale_after: float = 10.0, clock: Clock | None = None, reconnect_delay: float = 0.2
    ) -> RevocationFeed:
        """Follow the store in-process (for a component that holds it, such as the gateway)."""
        feed = cls.__new__(cls)
        feed._setup(StoreSource(store, clock or SystemClock()), stale_after=stale_after, clock=clock,
                    reconnect_delay=reconnect_delay)  # fmt: skip
        return feed

    def _setup(self, source: FeedSource, *, stale_after: float, clock: Clock | None, reconnect_delay: float) -> None:
        self.source = source
        self._stale_after = stale_after
        self._clock = clock or SystemClock()
        self._reconnect_delay = reconnect_delay
        self.cursor = 0
        self.jtis: dict[str, int] = {}
        self.tasks: dict[str, int] = {}
        self.last_heard: float | None = None
        self.connects = 0
        #: the policy version installed from the STS, and the one its heartbeats announce
        self.policy_version: str | None = None
        self.announced_version: str | None = None
        #: when the announced version was first seen while another one was installed
        self.policy_behind_since: float | None = None
        #: awaited with each entry before it counts as applied (the cursor moves past it only then);
        #: a ``TetherError`` from it (a store that cannot answer) reconnects from the cursor, so the
        #: entry comes again: what a federation follower does per entry is never skipped
        self.on_revocation: Callable[[dict[str, Any]], Awaitable[None]] | None = None
        #: called (awaited) when a heartbeat names a policy version other than the last one
        #: returns the version it installed (a replica that has not reloaded yet may serve an older one)
        self.on_policy_version: Callable[[str], Awaitable[str | None]] | None = None
        #: keep an entry at most this many seconds after it arrived, whatever ``exp`` it names:
        #: a federation peer chooses its entries' ``exp``, and no token it signed can outlive
        #: this horizon here (``None``: the entry's own ``exp``, for a feed from one's own STS)
        self.keep_at_most: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._heard = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._heard = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="tether-revocation-feed")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        await cancel(task)

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
        if self.keep_at_most is not None:
            exp = min(exp, int(self._clock.now() + self.keep_at_most))
        (self.jtis if kind == "jti" else self.tasks)[value] = exp
        self.cursor = max(self.cursor, seq)

    def _prune(self, now: float) -> None:
        for table in (self.jtis, self.tasks):
            for key in [k for k, exp in table.items() if exp < now - 60]:
                del table[key]

    async def _policy_heartbeat(self, version: object) -> None:
        """Fetch the announced policy set until the one installed is the one announced.

        What is recorded is the version installed, never merely the one announced: a fetch
        that reached a replica which had not reloaded yet installs the older set, and the next
        heartbeat asks again. ``policy_current`` fails closed once that has lasted ``stale_after``.
        """
        if not isinstance(version, str) or self.on_policy_version is None:
            return
        self.announced_version = version
        if version == self.policy_version:
            self.policy_behind_since = None
            return
        if self.policy_behind_since is None:
            self.policy_behind_since = self._clock.now()
        try:
            self.policy_version = await self.on_policy_version(version)
        except (httpx.HTTPError, ValueError, OSError, RuntimeError) as exc:  # retried at the next heartbeat
            log.warning("policy set %s could not be fetched: %s", version, exc)
        if self.policy_version == version:
            self.policy_behind_since = None
        elif self.policy_version is not None:
            log.warning("policy set %s announced but %s installed; asking again", version, self.policy_version)

    def policy_current(self, now: float) -> bool:
        """False once the installed policy set has lagged the announced one for ``stale_after`` seconds."""
        behind = self.policy_behind_since
        return behind is None or now - behind <= self._stale_after

    async def _run(self) -> None:
        delay = self._reconnect_delay
        while True:
            connects = self.connects
            try:
                await self._consume()
                wait = self._reconnect_delay
            except FeedDown as exc:
                log.warning("revocation feed %s: %s", self.source.name, exc)
                if self.connects != connects:  # it was connected: start the backoff over
                    delay = self._reconnect_delay
                wait = max(delay, exc.retry_after or 0.0)
                delay = min(delay * 2, MAX_BACKOFF)
            await asyncio.sleep(wait)

    async def _consume(self) -> None:
        heartbeat = min(2.0, self._stale_after / 3)
        async with contextlib.aclosing(self.source.events(self.cursor, heartbeat)) as events:
            async for event, payload in events:
                if event == "open":
                    self.connects += 1
                elif event == "revocation":
                    # marked before the hook runs, so whatever checks the view after the hook's
                    # store reads sees the entry (the federation exchange's check after linking);
                    # the cursor moves on only once the hook has done its part
                    cursor = self.cursor
                    self.apply(payload)
                    if self.on_revocation is not None:
                        try:
                            await self.on_revocation(payload)
                        except TetherError as exc:
                            self.cursor = cursor
                            raise FeedDown(f"entry {payload.get('seq')} not applied: {exc}") from exc
                    self.last_heard = max(self.last_heard or 0.0, self._clock.now()) if self._heard.is_set() else None
                elif event == "heartbeat":
                    now = self._clock.now()
                    # never moves back: a clock stepped back and forward again must not make a
                    # live feed look stale (nor a dead one fresh for longer than the step)
                    self.last_heard = max(self.last_heard or 0.0, now)
                    self._prune(now)
                    await self._policy_heartbeat(payload.get("policy_version"))
                    self._heard.set()
