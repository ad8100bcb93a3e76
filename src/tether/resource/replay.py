"""An in-process DPoP replay cache for a single resource-server process (RFC 9449 §11.1).

Bounded: entries expire with the proof's acceptance window, and when the cache is full the
oldest go first, but never one still inside its window, so a flood of proofs makes new proofs
wait for room (refused) rather than opening a replay gap. Several replicas of one service
share a Redis cache instead.
"""

from __future__ import annotations

import heapq
import threading

__all__ = ["MemoryReplayCache"]


class MemoryReplayCache:
    def __init__(self, max_entries: int = 1_000_000) -> None:
        self._seen: dict[str, int] = {}
        self._expiry: list[tuple[int, str]] = []
        self._max = max_entries
        self._lock = threading.Lock()

    def _purge(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            until, key = heapq.heappop(self._expiry)
            if self._seen.get(key) == until:
                del self._seen[key]

    async def first_use(self, key: str, *, until: int, now: float) -> bool:
        with self._lock:
            self._purge(now)
            previous = self._seen.get(key)
            if previous is not None and previous > now:
                return False
            if len(self._seen) >= self._max:
                return False
            self._seen[key] = until
            heapq.heappush(self._expiry, (until, key))
            return True

    def __len__(self) -> int:
        return len(self._seen)
