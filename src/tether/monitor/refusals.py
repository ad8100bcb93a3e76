"""The refusal detectors: bursts, DPoP replays, use after the end (pure, like every detector).

They read each refusal's ``error`` and typed markers (classifiers in ``tether.monitor.events``).
``refusal_burst`` and ``use_after_end`` count proven refusals only, so a stranger naming a task
is pinned on nobody. ``dpop_replay`` counts exactly the unproven ones, by the task the replayed
credential names (``claimed_task``); its findings are only ever alerted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from tether.lru import LruCache
from tether.monitor.base import DEDUPE_SECONDS, MAX_AGENTS, DetectorBase, agent_of, claimed_task, is_proven
from tether.monitor.events import Event, Finding, is_after_end, is_counted_refusal, is_replay
from tether.monitor.settings import DetectorSettings

__all__ = ["DpopReplay", "RefusalBurst", "UseAfterEnd"]


class RefusalBurst(DetectorBase):
    """At least ``threshold`` refusals by one agent within ``window`` seconds.

    Counted: policy denials, scope and audience widening, invalid proofs, dead grants and
    tokens (``events.REFUSAL_ERRORS``). "Within" is the half-open interval
    ``(ts - window, ts]``: refusals exactly ``window`` seconds apart are two windows.
    """

    def __init__(self, settings: DetectorSettings) -> None:
        super().__init__(settings)
        self.window = max(settings.param("window"), 1e-3)
        self.threshold = max(int(settings.param("threshold")), 1)
        self.agents: LruCache[str, deque[tuple[float, int, str]]] = LruCache(MAX_AGENTS)
        self.quiet_until: LruCache[str, float] = LruCache(MAX_AGENTS)

    def observe(self, event: Event) -> list[Finding]:
        agent = agent_of(event)
        if agent is None or not is_proven(event) or not is_counted_refusal(event):
            return []
        recent = self.agents.get(agent)
        if recent is None:
            recent = deque(maxlen=self.threshold)
            self.agents.put(agent, recent)
        recent.append((event.ts, event.seq, event.error or ""))
        if len(recent) < self.threshold or event.ts - recent[0][0] >= self.window:
            return []
        if event.ts < (self.quiet_until.get(agent) or float("-inf")):
            return []
        self.quiet_until.put(agent, event.ts + self.window)
        return [
            self._finding(
                event,
                agent=agent,
                every=self.window,
                reason=f"{len(recent)} refusals within {self.window:g}s (latest: {event.error})",
                count=len(recent),
                threshold=self.threshold,
                window=self.window,
                errors=sorted({error for _, _, error in recent}),
                seqs=[seq for _, seq, _ in recent],
            )
        ]


class _Counting(DetectorBase):
    """Fires on every matching refusal once ``threshold`` of them were seen for the subject."""

    def __init__(self, settings: DetectorSettings, *, matches: Callable[[Event], bool], what: str) -> None:
        super().__init__(settings)
        self.matches = matches
        self.what = what
        self.threshold = max(int(settings.param("threshold")), 1)
        self.counts: LruCache[str, int] = LruCache(MAX_AGENTS)

    def subject_of(self, event: Event) -> str | None:
        """Whom the refusal counts against; None: nobody (not counted)."""
        raise NotImplementedError

    def observe(self, event: Event) -> list[Finding]:
        subject = self.subject_of(event) if self.matches(event) else None
        if subject is None:
            return []
        count = (self.counts.get(subject) or 0) + 1
        self.counts.put(subject, count)
        if count < self.threshold:
            return []
        proven = is_proven(event)
        claims = {} if proven else {"claimed_task": claimed_task(event),
                                    "claimed_principal": event.text("claimed_principal") or agent_of(event)}  # fmt: skip
        return [
            self._finding(
                event,
                agent=agent_of(event) if proven else None,
                subject=subject,
                task=claimed_task(event),
                every=DEDUPE_SECONDS,
                reason=f"{self.what} ({event.kind}: {event.reason[:120] or event.error})",
                count=count,
                threshold=self.threshold,
                error=event.error,
                seqs=[event.seq],
                **claims,
            )
        ]


class DpopReplay(_Counting):
    """A DPoP proof presented again after it was accepted once (RFC 9449 §11.1).

    A replay proves nothing about who sent it, so it is counted by the task the replayed
    token names (``claimed_task``), or else the principal it names, and its finding is
    unproven.
    """

    def __init__(self, settings: DetectorSettings) -> None:
        super().__init__(settings, matches=is_replay, what="dpop proof replayed")

    def subject_of(self, event: Event) -> str | None:
        return claimed_task(event) or event.text("claimed_principal") or agent_of(event)


class UseAfterEnd(_Counting):
    """A token presented after its task ended or after it (or its parent) was revoked."""

    def __init__(self, settings: DetectorSettings) -> None:
        super().__init__(settings, matches=is_after_end, what="token used after its task ended or was revoked")

    def subject_of(self, event: Event) -> str | None:
        # never act on a refusal no authenticated caller is tied to: its task is only what
        # the request named (the STS records no task for those, see sts.exchange)
        return (event.task or agent_of(event)) if is_proven(event) else None
