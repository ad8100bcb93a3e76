"""The monitor: tail the audit chain, feed the detectors, act on what they find.

It starts at the chain's head and polls every ``monitor.interval`` seconds; its own records
(``alert.raised``, ``risk.raised``, the ``task.suspended`` it writes) only update the risk
board. Every replica runs the detectors, and a finding is acted on once: its key
(``Finding.key``) is claimed with the atomic ``Store.count``. On start, baselines are rebuilt
by replaying a bounded window before the head (``rebuild``) rather than persisted: the chain
is already the shared, durable record the detectors are pure functions of. A replay never acts.
When the store fails (a ping or a read) and then answers again, the detectors are told the
interval (``tether.monitor.outages``) before they read the catch-up that follows it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping, Sequence

from tether.background import FailureStreak, cancel
from tether.clock import Clock
from tether.config import Config
from tether.lru import LruCache
from tether.monitor.actions import Actions
from tether.monitor.cursor import head_seq, seq_before
from tether.monitor.dedupe import Deduper
from tether.monitor.detectors import Detector, build_detectors
from tether.monitor.events import MONITOR_PRINCIPAL, OWN_KINDS, Event, Finding, as_event
from tether.monitor.outages import outage_event
from tether.monitor.risk import RISK_BY_SEVERITY, RiskBoard
from tether.monitor.settings import HISTORY_RECORDS, HISTORY_SECONDS, PROVEN_ONLY, DetectorSettings
from tether.monitor.webhook import WebhookSender
from tether.store.errors import StoreError
from tether.store.protocol import TAIL_PAGE, Store

__all__ = ["Monitor", "build_monitor"]

log = logging.getLogger("tether.monitor")

_PAGE = TAIL_PAGE
_PAGES_PER_POLL = 200  # at most 20,000 records per poll; the rest on the next
_REBUILD_PAGE = 2 * TAIL_PAGE  # decoded off the event loop (SQLite: pages above TAIL_PAGE go to its worker thread)


class Monitor:
    def __init__(self, store: Store, clock: Clock, detectors: Sequence[DetectorSettings], *, interval: float,
                 risk_ttl: float, webhook: WebhookSender | None = None, history_records: int = HISTORY_RECORDS,
                 history_seconds: float = HISTORY_SECONDS) -> None:  # fmt: skip
        self.store = store
        self.clock = clock
        self.interval = interval
        self.risk_ttl = risk_ttl
        self.history_records = history_records
        self.history_seconds = history_seconds
        self.settings: Mapping[str, DetectorSettings] = {s.name: s for s in detectors}
        self.detectors: list[Detector] = build_detectors(detectors)
        self.board = RiskBoard()
        self.actions = Actions(store, clock, webhook=webhook)
        self.webhook = webhook
        self.cursor = 0
        self.findings = 0
        #: findings the start-up replay produced and dropped (``rebuild``)
        self.replayed = 0
        self._dedupe = Deduper()
        self._written: LruCache[int, bool] = LruCache(10_000)
        self._task: asyncio.Task[None] | None = None
        self._since = 0  # the risk board is rebuilt from the records after this seq
        self._history = 0  # the detectors are rebuilt from the records after this seq
        self._polling = asyncio.Lock()
        self._up_at = 0.0  # when the store last answered
        self._down_since: float | None = None  # the last answer before it failed (None: not failing)
        self._failed = (0.0, 0.0)  # when the monitor saw its first and its latest failure

    def risk(self, principal: str) -> int:
        """The principal's current score (``StsContext.risk``, Cedar ``context.risk``)."""
        return self.board.score(principal, now=self.clock.now())

    async def begin(self) -> None:
        """Place the cursor at the head of the chain (nothing appended from now on is missed) and the windows before it."""
        self.cursor = await head_seq(self.store)
        now = self._up_at = self.clock.now()
        self._since = await seq_before(self.store, now - self.risk_ttl, head=self.cursor)
        by_time = await seq_before(self.store, now - self.history_seconds, head=self.cursor)
        self._history = max(by_time, self.cursor - self.history_records, 0)

    async def start(self) -> None:
        """``begin``, then rebuild the detectors and the risk board and poll, in the background."""
        if self._task is not None:
            return
        await self.begin()
        if self.webhook is not None:
            self.webhook.start()
        self._task = asyncio.create_task(self._run(), name="tether-monitor")
        self._task.add_done_callback(_report_crash)

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        if self.webhook is not None:
            await self.webhook.stop()

    async def _run(self) -> None:
        try:
            await self.rebuild()
        except StoreError as exc:
            log.warning("monitor: detectors and risk board not rebuilt: %s", exc)
        interval = self.interval
        unavailable = FailureStreak(log, "monitor: audit log not read", "monitor: the audit log", base=interval, cap=interval)
        while True:
            try:
                await self.store.ping()  # reads may still work while issuance fails (PostgreSQL up, Redis down)
                await self.poll()
                unavailable.succeeded()
            except StoreError as exc:
                self.store_failed()
                unavailable.failed(exc)  # logged once per outage, not once per poll
            await asyncio.sleep(self.interval)

    @property
    def outage_since(self) -> float | None:
        """When the store last answered before the failure going on now (None: it answers)."""
        return self._down_since

    @property
    def last_failure(self) -> float | None:
        """When the monitor last saw the store fail in the outage going on now (None: it answers)."""
        return None if self._down_since is None else self._failed[1]

    def store_failed(self) -> None:
        """Note that the store did not answer: an outage since its last answer, until it answers again."""
        now = self.clock.now()
        if self._down_since is None:
            self._down_since, self._failed = self._up_at, (now, now)
        self._failed = (self._failed[0], now)

    async def rebuild(self) -> None:
        """Replay the windows before ``begin``: the detectors' history and the risk raised, never acting."""
        after = min(self._since, self._history)
        while after < self.cursor:
            page = await self.store.audit_records(after=after, limit=min(_REBUILD_PAGE, self.cursor - after))
            for record in page:
                if record.seq > self.cursor:
                    return
                event = as_event(record)
                if record.seq > self._since:
                    self._apply_risk(event)
                if record.seq > self._history and self._watched(event):
                    for detector in self.detectors:
                        self.replayed += len(detector.observe(event))
            if not page:
                return
            after = page[-1].seq
            await asyncio.sleep(0)

    async def poll(self) -> int:
        """Read and process what was appended since the last poll; returns the records read.

        Through ``Store.audit_tail``: the records this process wrote come from memory.
        """
        read = 0
        async with self._polling:
            for _ in range(_PAGES_PER_POLL):
                page = await self.store.audit_tail(after=self.cursor, limit=_PAGE)
                self._recovered()
                for record in page:
                    self.cursor = record.seq
                    await self._observe(as_event(record))
                read += len(page)
                if len(page) < _PAGE:
                    break
                await asyncio.sleep(0)  # let the requests in flight run between pages
        return read

    def _recovered(self) -> None:
        """The store answered: after an outage, tell the detectors before they read the catch-up."""
        self._up_at = self.clock.now()
        if self._down_since is None:
            return
        event = outage_event(since=self._down_since, until=self._up_at, failed=self._failed)
        self._down_since = None
        log.warning("monitor: store unavailable for %.1fs; the detectors hold the catch-up", event.ts - event.detail["since"])
        for detector in self.detectors:
            detector.observe(event)

    @staticmethod
    def _watched(event: Event) -> bool:
        """Whether the detectors read ``event``: never the monitor's own records."""
        return event.kind not in OWN_KINDS and event.principal != MONITOR_PRINCIPAL

    async def _observe(self, event: Event) -> None:
        if event.kind in OWN_KINDS and not self._written.get(event.seq):
            self._apply_risk(event)
        if not self._watched(event):
            return
        for detector in self.detectors:
            for finding in detector.observe(event):
                try:
                    await self._act(finding)
                except StoreError as exc:
                    log.error("monitor: %s finding for %s not acted on: %s", finding.detector, finding.subject, exc)

    def _apply_risk(self, event: Event) -> None:
        amount, agent = event.number("risk"), event.text("agent")
        if event.kind in OWN_KINDS and amount and agent:
            self.board.raise_score(agent, amount, until=event.ts + self.risk_ttl)

    async def _claim(self, finding: Finding) -> bool:
        """True on exactly one replica for each finding key (an atomic shared counter)."""
        now = self.clock.now()
        key = "monitor:" + hashlib.sha256(finding.key.encode()).hexdigest()[:40]
        return await self.store.count(key, until=int(now + finding.window) + 3600, now=now) == 1

    def _allowed(self, finding: Finding) -> tuple[str, ...]:
        """The configured actions, less ``PROVEN_ONLY`` ones for an unproven finding (then alerted instead).

        The one place that keeps a replayed proof or a claimed task from suspending a task
        or raising a risk score, whatever ``[monitor.detectors.*]`` says (``settings``).
        """
        configured = self.settings[finding.detector].actions
        if finding.proven:
            return configured
        allowed = tuple(a for a in configured if a not in PROVEN_ONLY)
        if allowed != configured and "alert" not in allowed:
            allowed = ("alert", *allowed)
        return allowed

    async def _act(self, finding: Finding) -> None:
        if not self._dedupe.first(finding) or not await self._claim(finding):
            return
        self.findings += 1
        actions = self._allowed(finding)
        risk = RISK_BY_SEVERITY.get(finding.severity, 0) if "risk" in actions else 0
        alert = None
        if "alert" in actions or risk:
            withheld = [a for a in self.settings[finding.detector].actions if a not in actions]
            alert = await self.actions.record(finding, actions, risk=risk, withheld=withheld)
            if risk and finding.agent:
                self._written.put(alert.seq, True)
                self.board.raise_score(finding.agent, risk, until=alert.ts + self.risk_ttl)
        if "suspend" in actions:
            await self.actions.suspend(finding, alert)
        if "webhook" in actions:
            self.actions.notify(finding, alert, actions)


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("monitor stopped: %r", task.exception())


def build_monitor(config: Config, store: Store, clock: Clock) -> Monitor:
    """The monitor configured by ``[monitor]`` and ``[monitor.detectors.*]``."""
    settings = config.monitor
    webhook = None
    if settings.webhook_url:
        webhook = WebhookSender(settings.webhook_url, timeout=float(settings.webhook_timeout), retries=settings.webhook_retries)
    return Monitor(store, clock, config.detectors, interval=float(settings.interval),
                   risk_ttl=float(settings.risk_ttl), webhook=webhook, history_records=settings.history_records,
                   history_seconds=float(settings.history_seconds))  # fmt: skip
