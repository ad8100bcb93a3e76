"""Calls in flight per route and task, so one task cannot hold a route's upstream connections.

A route's pool (``max_connections``) is shared by every task that calls it; without a cap one
task with many parallel (or deliberately slow) calls could take all of it. Each admitted
call holds a ``Slot`` from the moment it is admitted until its response has been sent, cut
or abandoned; a call over the route's ``max_in_flight_per_task`` is refused with 429
``too_many_requests`` and ``Retry-After``. The count lives in this gateway process, as the
connection pool it protects does; the event loop is single-threaded, so no lock is needed.
"""

from __future__ import annotations

from tether.gateway.admission import check_in_flight

__all__ = ["InFlight", "Slot"]


class Slot:
    """One admitted call's place; ``release`` is idempotent, so every exit path may call it."""

    def __init__(self, owner: InFlight, key: tuple[str, str]) -> None:
        self._owner = owner
        self._key = key
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._owner._release(self._key)


class InFlight:
    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}

    def count(self, route: str, task: str) -> int:
        return self._counts.get((route, task), 0)

    def acquire(self, route: str, task: str, limit: int) -> Slot:
        """A slot for one more call of ``task`` on ``route``, or ``TooManyRequests`` at ``limit``."""
        key = (route, task)
        held = self._counts.get(key, 0)
        check_in_flight(route, held, limit)
        self._counts[key] = held + 1
        return Slot(self, key)

    def _release(self, key: tuple[str, str]) -> None:
        held = self._counts.get(key, 0) - 1
        if held > 0:
            self._counts[key] = held
        else:
            self._counts.pop(key, None)
