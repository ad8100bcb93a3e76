"""The approval detectors: denied approvals and bursts of expired ones (pure, like every detector).

A held request (``rules.approval``) ends in one of three audited ways besides approval, and two
of them say something (SECURITY APR-03):

* ``approval.denied`` — a human looked at exactly what the agent asked for and said no. That is
  a signal about the **agent**: ``approval_denied`` alerts and, by default, raises the agent's
  risk by its severity (``low``: +10 for ``risk_ttl``), modestly on purpose — one refusal by a
  cautious approver must not lock an agent out, while a run of them (8 within ``risk_ttl`` at the
  default) reaches the starter ``deny-high-risk`` threshold. The denial record's principal is the
  approver, so the agent is taken from the approval's ``approval.requested`` record (its
  principal is the agent whose authenticated request was held), remembered per approval id; a
  denial whose request the detector never saw names no agent and is unproven (no risk).
* ``approval.expired`` — nobody answered. That proves nothing about the agent (it asked, as
  policy told it to), so it never raises the agent's risk nor suspends its task: a *burst* of
  expiries for the same approver groups is a signal about the **approvers** (not reached, too
  few, the webhook broken), and ``approval_expiry_burst`` only alerts. Its findings name no
  agent and are unproven, and ``monitor.settings`` refuses ``risk``/``suspend`` for it.
"""

from __future__ import annotations

import dataclasses
from collections import deque

from tether.lru import LruCache
from tether.monitor.base import DEDUPE_SECONDS, MAX_AGENTS, DetectorBase, agent_of, is_proven
from tether.monitor.events import Event, Finding
from tether.monitor.settings import DetectorSettings

__all__ = ["DENIED", "EXPIRED", "REQUESTED", "ApprovalDenied", "ApprovalExpiryBurst", "approver_groups"]

REQUESTED, DENIED, EXPIRED = "approval.requested", "approval.denied", "approval.expired"
_MAX_GROUPS, _MAX_EXAMPLES = 10, 10


def approver_groups(event: Event) -> tuple[str, ...]:
    """The approver groups an approval record names (``detail.groups``), bounded and sorted."""
    raw = event.detail.get("groups")
    if not isinstance(raw, list):
        return ()
    return tuple(sorted({g[:64] for g in raw if isinstance(g, str) and g}))[:_MAX_GROUPS]


class ApprovalDenied(DetectorBase):
    """``threshold`` denied approvals of one agent's requests within ``window`` seconds (default: each one)."""

    def __init__(self, settings: DetectorSettings) -> None:
        super().__init__(settings)
        self.window = max(settings.param("window"), 1e-3)
        self.threshold = max(int(settings.param("threshold")), 1)
        #: approval id → the agent whose held request it is (from ``approval.requested``)
        self.requesters: LruCache[str, str] = LruCache(MAX_AGENTS)
        self.recent: LruCache[str, deque[tuple[float, int]]] = LruCache(MAX_AGENTS)

    def observe(self, event: Event) -> list[Finding]:
        approval = event.text("approval")
        if event.kind == REQUESTED and approval is not None:
            agent = agent_of(event)
            if agent is not None and is_proven(event):
                self.requesters.put(approval[:100], agent)
            return []
        if event.kind != DENIED:
            return []
        agent = self.requesters.get(approval[:100]) if approval else None
        subject = agent or (f"task:{event.task}" if event.task else None)
        if subject is None:
            return []
        recent = self.recent.get(subject)
        if recent is None:
            recent = deque(maxlen=self.threshold)
            self.recent.put(subject, recent)
        recent.append((event.ts, event.seq))
        if len(recent) < self.threshold or event.ts - recent[0][0] >= self.window:
            return []
        who = f"agent `{agent}`" if agent else f"task `{event.task}` (its request was not seen)"
        finding = self._finding(
            event,
            agent=agent,
            subject=subject,
            every=DEDUPE_SECONDS,
            reason=f"{len(recent)} approval(s) of requests by {who} denied within {self.window:g}s"
            + (f" (latest: {approval[:40]}, by {event.principal})" if approval else ""),
            count=len(recent),
            threshold=self.threshold,
            window=self.window,
            approval=approval,
            decided_by=event.principal,
            groups=list(approver_groups(event)),
            aud=event.text("aud"),
            tool=event.text("tool"),
            seqs=[seq for _, seq in recent],
        )
        # proven only through the request record: the denial's own principal is the approver
        return [dataclasses.replace(finding, proven=agent is not None)]


class ApprovalExpiryBurst(DetectorBase):
    """``threshold`` held requests for the same approver groups expiring unanswered within ``window`` seconds."""

    def __init__(self, settings: DetectorSettings) -> None:
        super().__init__(settings)
        self.window = max(settings.param("window"), 1e-3)
        self.threshold = max(int(settings.param("threshold")), 1)
        self.recent: LruCache[str, deque[tuple[float, int, str, str]]] = LruCache(MAX_AGENTS)
        self.quiet_until: LruCache[str, float] = LruCache(MAX_AGENTS)

    def observe(self, event: Event) -> list[Finding]:
        if event.kind != EXPIRED:
            return []
        groups = approver_groups(event)
        subject = "approvers:" + (",".join(groups) or "?")
        recent = self.recent.get(subject)
        if recent is None:
            recent = deque(maxlen=self.threshold)
            self.recent.put(subject, recent)
        recent.append((event.ts, event.seq, (event.task or "")[:100], (event.text("approval") or "")[:100]))
        if len(recent) < self.threshold or event.ts - recent[0][0] >= self.window:
            return []
        if event.ts < (self.quiet_until.get(subject) or float("-inf")):
            return []
        self.quiet_until.put(subject, event.ts + self.window)
        return [
            Finding(
                detector=self.name,
                severity=self.severity,
                agent=None,  # an expiry proves nothing about the agent: never its risk, never its task
                task=None,
                reason=f"{len(recent)} requests held for {', '.join(groups) or 'approval'} expired unanswered within "
                f"{self.window:g}s: are the approvers reached?",
                ts=event.ts,
                seq=event.seq,
                window=self.window,
                subject=subject,
                evidence={
                    "count": len(recent),
                    "threshold": self.threshold,
                    "window": self.window,
                    "groups": list(groups),
                    "tasks": sorted({t for _, _, t, _ in recent if t})[:_MAX_EXAMPLES],
                    "approvals": [a for _, _, _, a in recent if a][:_MAX_EXAMPLES],
                    "seqs": [seq for _, seq, _, _ in recent],
                },
                proven=False,
            )
        ]
