"""Crafted audit records for the detector tests, in the shape the STS and the gateway write them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tether.monitor.detectors import Detector, build_detectors
from tether.monitor.events import Event, Finding, as_event
from tether.monitor.settings import DetectorSettings, parse_detectors

AGENT = "spiffe://tether.local/agent/research"
OTHER = "spiffe://tether.local/agent/other"
SVC_B = "spiffe://tether.local/svc/b"
WIKI = "https://wiki.example"
DOCS = "https://docs.example"
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def settings(name: str, **table: Any) -> DetectorSettings:
    return next(s for s in parse_detectors({name: table}) if s.name == name)


def detector(name: str, **table: Any) -> Detector:
    (built,) = build_detectors([settings(name, **table)])
    return built


class Log:
    """A growing audit log: each helper appends one record and returns its event."""

    def __init__(self, start: float = T0) -> None:
        self.seq = 0
        self.ts = start

    def record(self, kind: str, *, outcome: str = "ok", principal: str | None = AGENT, task: str | None = "t1",
               error: str | None = None, at: float | None = None, **detail: Any) -> Event:  # fmt: skip
        self.seq += 1
        if at is not None:
            self.ts = at
        return as_event({"seq": self.seq, "ts": self.ts, "kind": kind, "outcome": outcome, "principal": principal,
                         "task": task, "jti": None, "error": error, "detail": detail})  # fmt: skip

    def issued(self, aud: str = WIKI, *, depth: int = 0, agent: str = AGENT, principal: str | None = None,
               **kw: Any) -> Event:  # fmt: skip
        acts = [SVC_B] * depth
        return self.record("token.issued", principal=principal or agent, aud=aud, depth=depth, act=acts,
                           agent=agent, token_kind="hop", **kw)  # fmt: skip

    def refused(self, error: str = "access_denied", reason: str = "denied by policy", *, kind: str = "token.refused",
                **kw: Any) -> Event:  # fmt: skip
        return self.record(kind, outcome="refused", error=error, reason=reason, **kw)

    def call(self, path: str = "/v1/items", *, route: str = "crm", principal: str = AGENT, **kw: Any) -> Event:
        return self.record("gateway.call", principal=principal, route=route, path=path, method="GET", agent=principal,
                           status=200, **kw)  # fmt: skip


def feed(det: Detector, events: Iterable[Event]) -> list[Finding]:
    out: list[Finding] = []
    for event in events:
        out.extend(det.observe(event))
    return out
