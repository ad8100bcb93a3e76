"""One alert per detector, subject and window, however many records a burst spans (pure).

The key (``Finding.key``) is derived from the audit record alone — detector, agent or
task, and the fixed window its ``ts`` falls in — so a replica that restarts, or another
replica reading the same chain, computes the same key; the runner then claims it once
in the shared store. This local set only saves the store round trip for repeats.
"""

from __future__ import annotations

from tether.lru import LruCache
from tether.monitor.events import Finding

__all__ = ["Deduper"]


class Deduper:
    def __init__(self, capacity: int = 50_000) -> None:
        self._seen: LruCache[str, bool] = LruCache(capacity)

    def first(self, finding: Finding) -> bool:
        """True the first time a finding with this key is offered."""
        key = finding.key
        if self._seen.get(key):
            return False
        self._seen.put(key, True)
        return True
