"""What every detector shares: the protocol, the finding builder, the bounds (pure)."""

from __future__ import annotations

from typing import Protocol

from tether.monitor.events import Event, Finding
from tether.monitor.settings import DetectorSettings

__all__ = ["DEDUPE_SECONDS", "MAX_AGENTS", "Detector", "DetectorBase", "agent_of", "claimed_task", "is_proven"]

MAX_AGENTS = 10_000
#: one alert per detector and subject per this many seconds, for detectors without a window
DEDUPE_SECONDS = 60.0


class Detector(Protocol):
    name: str

    def observe(self, event: Event) -> list[Finding]: ...


def agent_of(event: Event) -> str | None:
    """Who acted: the record's principal (the token's client), else the gateway's ``agent``."""
    return event.principal or event.text("agent")


def is_proven(event: Event) -> bool:
    """Whether the record names who acted because the caller proved it (RFC 9449 §4.3 item 12).

    A refusal is attributed (``principal``, or the gateway's ``agent``) only once the
    caller proved possession of the token's key with a fresh proof. A replayed proof
    proves nothing (RFC 9449 §11.1): whoever captured it can send it again; nor does a
    spent single-use workload JWT presented again. So a record marked ``replay`` or
    ``spent``, or one naming a ``claimed_task`` / ``claimed_principal`` (named by the
    credential, not proven by the caller), is unproven whatever else it carries.
    """
    detail = event.detail
    return (
        agent_of(event) is not None
        and detail.get("replay") is not True
        and detail.get("spent") is not True
        and "claimed_task" not in detail
        and "claimed_principal" not in detail
    )


def claimed_task(event: Event) -> str | None:
    """The task a record is about: the one proven (``task``), else the one the credential named."""
    return event.task or event.text("claimed_task")


class DetectorBase:
    def __init__(self, settings: DetectorSettings) -> None:
        self.name = settings.name
        self.severity = settings.severity
        self.settings = settings

    def _finding(self, event: Event, *, agent: str | None, reason: str, every: float, subject: str | None = None,
                 task: str | None = None, **evidence: object) -> Finding:  # fmt: skip
        return Finding(
            detector=self.name,
            severity=self.severity,
            agent=agent,
            task=task or event.task,
            reason=reason,
            ts=event.ts,
            seq=event.seq,
            window=every,
            subject=subject or agent or event.task or "-",
            evidence=evidence,
            proven=is_proven(event),
        )
