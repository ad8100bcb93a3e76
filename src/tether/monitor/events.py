"""What the detectors read and what they report: audit events in, findings out (pure).

An ``Event`` is the part of an audit record the detectors need, taken from the record or its
JSON, so the same detectors run live and on an exported log. A ``Finding`` names the detector,
agent, task, one line and the evidence, never a token or proof. The refusal classifiers read
the ``error`` code and the typed markers (``replay``, ``after_end``), never the free-text
``reason``, which can hold values the caller chose.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from tether.audit.chain import AuditEvent, AuditRecord

__all__ = [
    "MONITOR_PRINCIPAL",
    "OWN_KINDS",
    "REFUSAL_ERRORS",
    "Event",
    "Finding",
    "alert_event",
    "as_event",
    "is_after_end",
    "is_counted_refusal",
    "is_refusal",
    "is_replay",
]

#: the principal the monitor writes its own records as (``task.suspended``)
MONITOR_PRINCIPAL = "monitor"
#: records the monitor itself writes; never fed back into the detectors
OWN_KINDS = frozenset({"alert.raised", "risk.raised"})

#: refusals that say "this caller tried something it may not" (policy denials, scope or
#: audience widening, bad proofs, bad or dead grants and tokens) — not malformed requests,
#: nonce challenges (never audited) or rate limits (already throttled)
REFUSAL_ERRORS = frozenset(
    {
        "access_denied",
        "invalid_scope",
        "invalid_target",
        "invalid_dpop_proof",
        "invalid_grant",
        "invalid_token",
        "insufficient_scope",
    }
)


@dataclass(frozen=True)
class Event(AuditRecord):
    """An audit record with the typed reads of ``detail`` the detectors use."""

    @property
    def reason(self) -> str:
        value = self.detail.get("reason")
        return value if isinstance(value, str) else ""

    def text(self, key: str) -> str | None:
        value = self.detail.get(key)
        return value if isinstance(value, str) and value else None

    def number(self, key: str) -> int | None:
        value = self.detail.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_event(record: AuditRecord | Mapping[str, Any]) -> Event:
    """The detectors' view of an audit record (or of its ``as_json()`` form)."""
    if isinstance(record, Event):
        return record
    if isinstance(record, AuditRecord):
        # an Event is the same frozen record with typed readers and no field of its own: its
        # fields are copied as they are (the monitor converts every record it tails, so the
        # dataclass ``__init__``, which re-checks nothing, is skipped)
        event: Event = object.__new__(Event)
        event.__dict__.update(record.__dict__)
        return event
    detail = record.get("detail")
    return Event(
        seq=int(record.get("seq") or 0),
        ts=float(record.get("ts") or 0.0),
        kind=str(record.get("kind") or ""),
        outcome=str(record.get("outcome") or ""),
        principal=_text(record.get("principal")),
        task=_text(record.get("task")),
        jti=_text(record.get("jti")),
        error=_text(record.get("error")),
        detail=detail if isinstance(detail, Mapping) else {},
        prev=str(record.get("prev") or ""),
        hash=str(record.get("hash") or ""),
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def is_refusal(event: Event) -> bool:
    """Any audited refusal (``token.refused``, ``gateway.refused``, ...) except policy-set refusals."""
    return event.outcome == "refused" and event.kind.endswith(".refused") and event.kind != "policy.refused"


def is_counted_refusal(event: Event) -> bool:
    """A refusal the agent's own conduct explains; never one its record marks ``blameless`` (an
    unpinned route, a tool its upstream changed, a stream cut by the task's end: the gateway
    does not count those toward its own suspension either)."""
    return is_refusal(event) and event.error in REFUSAL_ERRORS and event.detail.get("blameless") is not True


def is_replay(event: Event) -> bool:
    """A refusal because the DPoP proof was already used (RFC 9449 §11.1)."""
    if not is_refusal(event) or event.error != "invalid_dpop_proof":
        return False
    return event.detail.get("replay") is True


def is_after_end(event: Event) -> bool:
    """A refusal because the task had ended or the token (or its parent) was revoked."""
    if not is_refusal(event) or event.error not in ("invalid_grant", "invalid_token"):
        return False
    return event.detail.get("after_end") is True


@dataclass(frozen=True)
class Finding:
    """One detection. ``subject`` (an agent or a task) and ``window`` decide deduplication."""

    detector: str
    severity: str
    agent: str | None
    task: str | None
    reason: str
    ts: float
    seq: int
    window: float
    subject: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    #: False when the record it came from names nobody who proved it acted (``base.is_proven``):
    #: the runner then never suspends nor raises a risk score (``settings.PROVEN_ONLY``)
    proven: bool = True

    @property
    def key(self) -> str:
        """Same detector, same subject, same fixed window of the record's time → same key.

        Computed from the audit record alone, so every replica derives the same key for
        the same burst and one claim in the shared store decides who acts on it.
        """
        bucket = int(self.ts // self.window) if self.window > 0 else self.seq
        return f"{self.detector}\x00{self.subject}\x00{bucket}"

    def as_json(self) -> dict[str, Any]:
        """The finding as an alert's detail (its window and subject are the claim's business)."""
        named = ("detector", "severity", "agent", "task", "reason", "seq", "ts", "proven")
        return {**{name: getattr(self, name) for name in named}, "evidence": dict(self.evidence)}


def alert_event(finding: Finding, actions: Collection[str], *, risk: int, withheld: Collection[str] = ()) -> AuditEvent:
    """The ``alert.raised`` record of a finding (``risk.raised`` when only the risk action is taken).

    ``withheld`` lists the configured actions not taken because the finding is unproven.
    """
    detail: dict[str, Any] = {
        "detector": finding.detector,
        "severity": finding.severity,
        "reason": finding.reason,
        "agent": finding.agent,
        "evidence": dict(finding.evidence),
        "trigger": finding.seq,
        "actions": list(actions),
    }
    if risk:
        detail["risk"] = risk
    if not finding.proven:
        detail["unproven"] = True
        detail["withheld"] = list(withheld)
    kind = "alert.raised" if "alert" in actions else "risk.raised"
    return AuditEvent(kind=kind, outcome="alert", principal=MONITOR_PRINCIPAL, task=finding.task, detail=detail)
