"""The gateway's audit records, call metrics and suspensions.

Every call is recorded before it is made and its result after; every refusal is recorded and
counted. A refusal nobody proved to own is counted instead of written each time
(``tether.audit.anonymous``), its summaries written as their intervals end. A burst of
refusals or a cap hit suspends the task, which revokes its tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from tether.audit.anonymous import AnonymousRefusals
from tether.audit.chain import AuditEvent
from tether.clock import Clock
from tether.config import Config
from tether.errors import OAuthError
from tether.gateway.admission import suspension
from tether.gateway.proxy import BadGateway, Forwarded, GatewayTimeout
from tether.gateway.records import Call, call_event, refusal_event, result_event
from tether.gateway.routes import GatewayRoute
from tether.metrics import GATEWAY_CALLS, GATEWAY_SECONDS, REVOCATIONS
from tether.model import TaskState
from tether.resource.principal import Principal
from tether.store.errors import NotFound, StoreError, TaskNotActive
from tether.store.protocol import Store

__all__ = ["GatewayAudit"]

log = logging.getLogger("tether.gateway")


class GatewayAudit:
    """Writes to the store from ``start`` until the gateway closes it (``store`` is None then)."""

    def __init__(self, config: Config, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.settings = config.gateway
        self.store: Store | None = None

    def start(self, store: Store) -> None:
        self.store = store
        audit = self.config.audit
        self.anonymous = AnonymousRefusals(self._append, interval=audit.refusal_interval, max_buckets=audit.refusal_buckets)
        self._counting = asyncio.create_task(self._count_refusals())

    async def stop(self) -> None:
        self._counting.cancel()
        with contextlib.suppress(StoreError):  # counted refusals of the last interval, best effort
            await self.anonymous.flush(self.clock.now(), everything=True)

    async def call(self, call: Call) -> int:
        """Record an admitted call before anything is sent: one the store cannot record is not made."""
        assert self.store is not None
        return (await self.store.append_audit(call_event(call), now=self.clock.now())).seq

    async def result(self, call: Call, forwarded: Forwarded) -> None:
        """Count the call and record its result (best effort: the call has happened)."""
        route = call.route
        _observe(route, forwarded.status, call.started)
        if forwarded.scrubbed:
            log.warning("route %s: upstream echoed the secret %d time(s); scrubbed", route.name, forwarded.scrubbed)
        if forwarded.cut == "deadline":
            log.warning("route %s: call cut at its deadline of %gs", route.name, route.max_call_seconds)
        if self.store is None:
            return
        event = result_event(call, forwarded, (time.perf_counter() - call.started) * 1000)
        try:
            await self.store.append_audit(event, now=self.clock.now())
        except StoreError as exc:
            log.error("gateway call result could not be audited: %s", exc)

    async def refused(
        self, route: GatewayRoute, principal: Principal | None, exc: Exception, *, method: str, path: str, status: int,
        started: float, source: str | None,
    ) -> None:  # fmt: skip
        """Count and record a refusal; one of a verified task may suspend it."""
        _observe(route, status, started)
        if self.store is None:
            return
        ms = (time.perf_counter() - started) * 1000
        event = refusal_event(route, principal, exc, method=method, path=path, status=status, ms=ms)
        await self.record_refusal(event, route.name, principal, exc, source=source)

    async def record_refusal(
        self, event: AuditEvent, route: str, principal: Principal | None, exc: Exception, *, source: str | None
    ) -> None:
        """Write (or count, when nobody proved to own it) a refusal record of any route kind
        (``gateway.refused``, ``mcp.refused``); one of a verified task may suspend it."""
        if self.store is None:
            return
        with contextlib.suppress(StoreError):
            await self.anonymous.record(event, source=source, now=self.clock.now())
            if principal is not None and principal.task is not None:
                await self._maybe_suspend(route, principal.task, exc)

    async def append(self, event: AuditEvent) -> int:
        """Record ``event`` now; its ``seq``. A store failure is raised: what it records must not happen."""
        assert self.store is not None
        return (await self.store.append_audit(event, now=self.clock.now())).seq

    async def append_quietly(self, event: AuditEvent) -> None:
        """Record ``event`` (best effort: what it records has happened)."""
        if self.store is None:
            return
        try:
            await self.store.append_audit(event, now=self.clock.now())
        except StoreError as exc:
            log.error("gateway %s record could not be audited: %s", event.kind, exc)

    async def _maybe_suspend(self, route: str, task: str, exc: Exception) -> None:
        assert self.store is not None
        now = self.clock.now()
        cap_hit = isinstance(exc, OAuthError) and bool(exc.audit.get("cap_hit"))
        limit = self.settings.suspend_after_refusals
        window = self.settings.refusal_window
        refusals = None  # an upstream's failure is not the task's: not counted toward a burst
        blameless = isinstance(exc, OAuthError) and bool(exc.audit.get("blameless"))  # nor one marked so
        if limit > 0 and not isinstance(exc, BadGateway | GatewayTimeout) and not blameless:
            refusals = await self.store.count(f"gw:refusals:{task}", until=int(now) + window, now=now)
        reason = suspension(cap_hit=cap_hit, refusals=refusals, limit=limit, window=window,
                            on_cap=self.settings.suspend_on_cap)  # fmt: skip
        if reason is None:
            return
        event = AuditEvent(kind="task.suspended", outcome="ok", principal=f"gateway:{route}", task=task,
                           detail={"reason": reason, "route": route})  # fmt: skip
        with contextlib.suppress(NotFound, TaskNotActive):
            await self.store.end_task(task, TaskState.SUSPENDED, now=now, audit=event)
            REVOCATIONS.labels(kind="task").inc()
            log.warning("task %s suspended by the gateway: %s", task, reason)

    async def _append(self, event: AuditEvent, now: float) -> None:
        assert self.store is not None
        await self.store.append_audit(event, now=now)

    async def _count_refusals(self) -> None:
        """Write the counted summaries of unattributed refusals as their intervals end."""
        while True:
            await asyncio.sleep(5)
            with contextlib.suppress(StoreError):
                await self.anonymous.flush(self.clock.now())


def _observe(route: GatewayRoute, status: int, started: float) -> None:
    GATEWAY_CALLS.labels(route=route.name, status=str(status)).inc()
    GATEWAY_SECONDS.labels(route=route.name).observe(time.perf_counter() - started)
