"""What every detector shares: the protocol, the finding builder, the bounds (pure)."""

from __future__ import annotations

from typing import Protocol

from tether.monitor.events import Event, Finding
from tether.monitor.settings import DetectorSettings

__all__ = ["DEDUPE_SECONDS", "MAX_AGENTS", "Detector", "DetectorBase", "agent_of"]

MAX_AGENTS = 10_000
#: one alert per detector and subject per this many seconds, for detectors without a window
DEDUPE_SECONDS = 60.0


class Detector(Protocol):
    name: str

    def observe(self, event: Event) -> list[Finding]: ...


def agent_of(event: Event) -> str | None:
    """Who acted: the record's principal (the token's client), else the gateway's ``agent``."""
    return event.principal or event.text("agent")


class DetectorBase:
    def __init__(self, settings: DetectorSettings) -> None:
        self.name = settings.name
        self.severity = settings.severity
        self.settings = settings

    def _finding(self, event: Event, *, agent: str | None, reason: str, every: float, subject: str | None = None,
                 **evidence: object) -> Finding:  # fmt: skip
        return Finding(
            detector=self.name,
            severity=self.severity,
            agent=agent,
            task=event.task,
            reason=reason,
            ts=event.ts,
            seq=event.seq,
            window=every,
            subject=subject or agent or event.task or "-",
            evidence=evidence,
        )
