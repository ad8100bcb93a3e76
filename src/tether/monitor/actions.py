"""What a finding makes the monitor do: ``alert``, ``webhook``, ``risk``, ``suspend``.

An alert is an ``alert.raised`` audit record (the chain is where alerts live), a counter and a
log warning; ``risk`` rides on that record (or on ``risk.raised``) and every replica adds it
to its board when it reads it; ``suspend`` ends the task through ``Store.end_task``, revoking
and publishing in one step; ``webhook`` queues the finding without waiting. The runner decides
which actions reach here: never ``risk`` or ``suspend`` on an unproven finding.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection

from tether.audit.chain import AuditEvent, AuditRecord
from tether.clock import Clock
from tether.metrics import ALERTS, REVOCATIONS
from tether.model import TaskState
from tether.monitor.events import MONITOR_PRINCIPAL, Finding, alert_event
from tether.monitor.webhook import WebhookSender
from tether.store.errors import NotFound, TaskNotActive
from tether.store.protocol import Store

__all__ = ["Actions"]

log = logging.getLogger("tether.monitor")


class Actions:
    def __init__(self, store: Store, clock: Clock, *, webhook: WebhookSender | None) -> None:
        self.store = store
        self.clock = clock
        self.webhook = webhook

    async def record(self, finding: Finding, actions: Collection[str], *, risk: int,
                     withheld: Collection[str] = ()) -> AuditRecord:  # fmt: skip
        """Append ``alert.raised`` (or ``risk.raised`` when only the risk action is configured)."""
        event = alert_event(finding, actions, risk=risk, withheld=withheld)
        record = await self.store.append_audit(event, now=self.clock.now())
        if event.kind == "alert.raised":
            ALERTS.labels(detector=finding.detector).inc()
            log.warning(
                "alert %s (%s) agent=%s task=%s: %s",
                finding.detector,
                finding.severity,
                finding.agent,
                finding.task,
                finding.reason,
            )
        return record

    async def suspend(self, finding: Finding, alert: AuditRecord | None) -> bool:
        """End the finding's task as suspended (revoking its tokens); False if it had already ended."""
        if finding.task is None:
            return False
        detail = {"reason": f"{finding.detector}: {finding.reason}"[:300], "detector": finding.detector,
                  "alert": alert.seq if alert is not None else None}  # fmt: skip
        event = AuditEvent(kind="task.suspended", outcome="ok", principal=MONITOR_PRINCIPAL, task=finding.task,
                           detail=detail)  # fmt: skip
        with contextlib.suppress(NotFound, TaskNotActive):
            await self.store.end_task(finding.task, TaskState.SUSPENDED, now=self.clock.now(), audit=event)
            REVOCATIONS.labels(kind="task").inc()
            log.warning("task %s suspended by the monitor: %s", finding.task, finding.detector)
            return True
        return False

    def notify(self, finding: Finding, alert: AuditRecord | None, actions: Collection[str]) -> bool:
        """Queue the webhook; never waits for the receiver."""
        if self.webhook is None:
            return False
        payload = {
            "type": "tether.alert",
            **finding.as_json(),
            "alert_seq": alert.seq if alert is not None else None,
            "actions": list(actions),
        }
        return self.webhook.submit(payload)
