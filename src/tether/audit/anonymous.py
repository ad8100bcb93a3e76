"""Refusals nobody proved to own are counted, not each written: the audit chain is not an attacker's to fill.

A refusal of an authenticated party stays one record. One that no proven identity owns (a bad
token, a replayed proof, a guessed task id) costs a stranger one request, so in each interval
the first per key is written at once (the monitor sees it promptly) and the rest become one
summary record (``detail.aggregated``); past ``max_buckets`` keys, new ones share one overflow
bucket. A key is the client address, kind, error code, markers, and the ``claimed_task`` and
``claimed_principal`` of a verified credential: never text the caller chooses freely.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from tether.audit.chain import AuditEvent

__all__ = ["AnonymousRefusals", "refusal_key"]

Append = Callable[[AuditEvent, float], Awaitable[object]]
Key = tuple[str, ...]
_OVERFLOW: Key = ("*",)
_MARKERS = ("replay", "after_end", "spent")
#: named by a verified credential (not chosen freely), kept so alerts can name the party
_CLAIMED = ("claimed_task", "claimed_principal")


def refusal_key(event: AuditEvent, source: str | None) -> Key:
    """What makes two anonymous refusals "the same" for counting (nothing the caller picks freely)."""
    markers = "".join(m[0] for m in _MARKERS if event.detail.get(m) is True)
    claimed = [event.detail.get(k) for k in _CLAIMED]
    return (source or "", event.kind, event.error or "", markers, *(c if isinstance(c, str) else "" for c in claimed))


@dataclass
class _Bucket:
    window: int
    event: AuditEvent
    source: str | None
    count: int
    first: float
    last: float


class AnonymousRefusals:
    """Per process: one record per key and interval for unattributed refusals, plus a counted summary."""

    def __init__(self, append: Append, *, interval: float = 60.0, max_buckets: int = 1000) -> None:
        """``interval=0`` writes every refusal (an operator's forensic choice; the test suite's default)."""
        self._append = append
        self.interval = interval
        self.max_buckets = max(max_buckets, 1)
        self._buckets: dict[Key, _Bucket] = {}

    async def record(self, event: AuditEvent, *, source: str | None, now: float) -> None:
        """Append ``event`` now, or count it if an equal refusal was already written this interval."""
        if event.principal is not None or event.task is not None or self.interval <= 0:
            await self._append(event, now)
            return
        key = refusal_key(event, source)
        if key not in self._buckets and len(self._buckets) >= self.max_buckets:
            key = _OVERFLOW
        window = int(now // self.interval)
        bucket = self._buckets.get(key)
        if bucket is not None and bucket.window == window:
            bucket.count += 1
            bucket.last = now
            return
        if bucket is not None:
            await self._summarise(key, bucket, now)
        tagged = replace(event, detail={**event.detail, "source": source or "", "aggregate_window": self.interval})
        self._buckets[key] = _Bucket(window, tagged, source, 1, now, now)
        await self._append(tagged, now)

    async def flush(self, now: float, *, everything: bool = False) -> None:
        """Write the summaries of intervals that have ended (all of them with ``everything``)."""
        window = int(now // self.interval) if self.interval > 0 else 0
        for key, bucket in list(self._buckets.items()):
            if everything or bucket.window < window:
                await self._summarise(key, bucket, now)

    async def _summarise(self, key: Key, bucket: _Bucket, now: float) -> None:
        del self._buckets[key]
        if bucket.count <= 1:
            return
        detail = {
            "reason": "repeated refusals, counted",
            "source": bucket.source or "",
            "aggregated": bucket.count - 1,
            "first": bucket.first,
            "last": bucket.last,
            **({"overflow": True} if key == _OVERFLOW else {}),
            **{k: v for k, v in bucket.event.detail.items() if k in (*_MARKERS, *_CLAIMED)},
        }
        summary = AuditEvent(kind=bucket.event.kind, outcome="refused", error=bucket.event.error, detail=detail)
        await self._append(summary, now)
