"""A wake-up signal for revocation subscribers, safe across threads and event loops.

The store calls ``notify()`` after it commits a revocation. A subscriber reads the
``generation`` *before* it queries the feed and then waits for a newer one, so a
revocation committed between the query and the wait is never missed. Waiters are
resolved with ``call_soon_threadsafe`` on their own loop, so a notification from any
thread (a Redis listener, the SQLite thread) wakes them at once.
"""

from __future__ import annotations

import asyncio
import threading

__all__ = ["Notifier"]


class Notifier:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def generation(self) -> int:
        with self._lock:
            return self._generation

    def notify(self) -> None:
        with self._lock:
            self._generation += 1
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, future)

    async def wait(self, since: int, timeout: float) -> bool:
        """True as soon as the generation differs from ``since``; False after ``timeout``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._generation != since:
                return True
            self._waiters.append((loop, future))
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                self._waiters = [(lp, f) for lp, f in self._waiters if f is not future]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
