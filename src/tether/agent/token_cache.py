"""Issued tokens an agent or service keeps for reuse: bounded, and never served or kept near expiry.

A token is reused while comfortably valid (a margin of a fifth of its remaining life, 1 to 30
seconds), so a proof signed now reaches the resource before ``exp``. Each entry records the
parent it was derived from; a lookup with another parent misses and replaces it, so a renewed
parent leaves no stale children. At most ``capacity`` entries (least recently used out
first), and every insertion sweeps out the ones near expiry.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

from tether.agent.exchange import IssuedToken
from tether.clock import Clock, SystemClock

__all__ = ["DEFAULT_CAPACITY", "TokenCache", "margin"]

K = TypeVar("K", bound=Hashable)

DEFAULT_CAPACITY = 1024


def margin(token: IssuedToken, now: float) -> float:
    """How long before ``expires_at`` a token stops being reused (1 to 30 s, a fifth of its remaining life)."""
    return min(30.0, max(1.0, (token.expires_at - now) / 5))


def _usable(token: IssuedToken, now: float) -> bool:
    return token.usable(now, margin(token, now))


class TokenCache(Generic[K]):
    def __init__(self, capacity: int = DEFAULT_CAPACITY, *, clock: Clock | None = None) -> None:
        if capacity < 1:
            raise ValueError("a token cache holds at least one entry")
        self.capacity = capacity
        self.clock = clock or SystemClock()
        self._entries: OrderedDict[K, tuple[str, IssuedToken]] = OrderedDict()

    def get(self, key: K, *, parent: str = "") -> str | None:
        """The cached token for ``key`` derived from ``parent``, if it is not near expiry."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if not _usable(entry[1], self.clock.now()):
            del self._entries[key]
            return None
        if entry[0] != parent:
            return None
        self._entries.move_to_end(key)
        return entry[1].value

    def put(self, key: K, token: IssuedToken, *, parent: str = "") -> None:
        now = self.clock.now()
        for stale in [k for k, (_, t) in self._entries.items() if not _usable(t, now)]:
            del self._entries[stale]
        self._entries[key] = (parent, token)
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def discard(self, key: K) -> None:
        """Forget ``key``'s token (its audience refused it)."""
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
