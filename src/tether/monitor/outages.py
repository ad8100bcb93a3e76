"""Known store outages, as the detectors see them (pure: no I/O, no clock).

A store outage leaves no records behind (a refusal that fails closed is not written when
the store that would hold it is down), and when it ends the agents' deferred work arrives at
once. The audit stream alone cannot tell that catch-up from an attack nor from an agent that
simply went idle, so the monitor tells the detectors: when its store reads or pings fail and
then succeed again it feeds them an ``outage_event`` naming the interval. ``Outages`` answers
which windows an outage touched, order-independently (records written before the outage may
be read after the event).

Only a real outage holds anything: one during which the store issued no token. The monitor
cannot tell its own slow reads (a pool busy with a flood, a slow Redis ping) from a dead
store, but the chain can: a ``token.issued`` record inside the interval proves the store was
serving, so that interval holds no window and a flood cannot hide itself behind the monitor's
failed pings. An outage no longer than ``2 * EDGE`` has no inside to prove it by, and holds
nothing either (a blip leaves no backlog worth hiding an alert for).
"""

from __future__ import annotations

from tether.monitor.events import Event

__all__ = ["OUTAGE_KIND", "Outages", "outage_event"]

#: the kind of the event the monitor feeds its detectors after an outage (never an audit record)
OUTAGE_KIND = "store.outage"
_KEPT = 16
#: seconds at each end of an outage where an issuance may still (or already) commit
EDGE = 1.0


def outage_event(*, since: float, until: float, failed: tuple[float, float] | None = None) -> Event:
    """The event telling the detectors the store was unavailable from ``since`` (its last answer)
    to ``until`` (its first answer again); ``failed`` is when the monitor saw its first and last
    failure, the stretch in which an issuance proves the store was serving after all."""
    detail: dict[str, float] = {"since": since, "until": until}
    if failed is not None:
        detail |= {"failed_from": failed[0], "failed_until": failed[1]}
    return Event(seq=0, ts=until, kind=OUTAGE_KIND, outcome="outage", principal=None, task=None, jti=None,
                 error=None, detail=detail, prev="", hash="")  # fmt: skip


class Outages:
    """The last few outages; a window is *touched* when it overlaps one or its ``recovery`` after it."""

    def __init__(self, recovery: float) -> None:
        self.recovery = recovery
        #: (since, until, first and last failure the monitor saw, tokens issued between them)
        self.spans: list[tuple[float, float, float, float, int]] = []

    def observe(self, event: Event) -> bool:
        """Remember ``event`` if it is an ``outage_event`` (True), else count it against the
        outages it falls inside if it is an issuance (False).

        Records written during an outage are read only after its event (the monitor's reads
        failed meanwhile), so each is counted before a window after the outage is judged.
        """
        if event.kind != OUTAGE_KIND or event.seq != 0:  # never a record of the chain
            if event.kind == "token.issued" and self.spans:
                self.spans = [(*span[:4], span[4] + (span[2] + EDGE < event.ts < span[3] - EDGE)) for span in self.spans]
            return False
        detail = event.detail
        since, until = detail.get("since"), detail.get("until")
        if not isinstance(since, int | float) or not isinstance(until, int | float) or until < since:
            return True
        first, last = detail.get("failed_from", since), detail.get("failed_until", until)
        if not isinstance(first, int | float) or not isinstance(last, int | float):
            first, last = since, until
        self.spans = [*self.spans, (float(since), float(until), float(first), float(last), 0)][-_KEPT:]
        return True

    def touches(self, start: float, end: float) -> bool:
        """Whether the window ``[start, end)`` was cut short by a real outage or falls in the
        recovery after one. Real: the monitor saw it fail for longer than ``2 * EDGE`` and no
        token was issued in that stretch (less ``EDGE`` at each end, where another replica may
        already, or still, be served)."""
        real = [(a, b) for a, b, first, last, served in self.spans if last - first > 2 * EDGE and not served]
        return any(end > since and start < until + self.recovery for since, until in real)
