"""A circuit breaker for a store that can become unreachable: closed → open → half-open → closed.

Pure state machine, driven by an injected monotonic clock. While the store answers, the circuit
is *closed* and every operation goes through; the first connectivity failures (``threshold`` in a
row) *open* it, and operations are refused at once (503 ``temporarily_unavailable`` with
``Retry-After``, RFC 6749 §5.2 / RFC 9110 §10.2.3) instead of each waiting for a dead database.
While open, one probe at a time may run (*half-open*), never sooner than the current delay, which
doubles after each failed probe up to ``max_delay``; a probe that succeeds closes the circuit.
Only connectivity failures count: a statement the database refused answered, so it never opens.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable

__all__ = ["Circuit", "CircuitState"]


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Circuit:
    """The breaker's state; callers report outcomes, the prober asks when it may probe."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        threshold: int = 1,
        first_delay: float = 0.05,
        max_delay: float = 1.0,
        factor: float = 2.0,
    ) -> None:
        """Open after ``threshold`` consecutive connectivity failures; probe ``first_delay`` seconds
        after opening, then after each failed probe ``factor`` times longer, at most ``max_delay``."""
        if threshold < 1 or not 0 < first_delay <= max_delay or factor < 1:
            raise ValueError("circuit settings: threshold >= 1, 0 < first_delay <= max_delay, factor >= 1")
        self.threshold, self.first_delay, self.max_delay, self.factor = threshold, first_delay, max_delay, factor
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._delay = self.first_delay
        self._next_probe = 0.0
        self._opened_at = 0.0
        #: times the circuit opened and failed probes, for logs and metrics
        self.openings = 0
        self.failed_probes = 0

    @property
    def state(self) -> CircuitState:
        return self._state

    def allows(self) -> bool:
        """May an operation go to the store now? Only while closed: a half-open circuit is probing."""
        return self._state is CircuitState.CLOSED

    def succeeded(self) -> None:
        """An operation reached the store and it answered (even with an SQL error)."""
        if self._state is CircuitState.CLOSED:
            self._failures = 0

    def failed(self) -> bool:
        """An operation could not reach the store. True when this failure opened the circuit."""
        if self._state is not CircuitState.CLOSED:
            return False  # already open: in-flight operations that started before change nothing
        self._failures += 1
        if self._failures < self.threshold:
            return False
        self._state = CircuitState.OPEN
        self._opened_at = self._clock()
        self._delay = self.first_delay
        self._next_probe = self._opened_at + self._delay
        self.openings += 1
        return True

    def probe_in(self) -> float:
        """Seconds until a probe may start (0 when due); ``inf`` unless open (closed, or a probe runs)."""
        if self._state is not CircuitState.OPEN:
            return math.inf
        return max(0.0, self._next_probe - self._clock())

    def start_probe(self) -> bool:
        """Claim the one probe: open and due becomes half-open. False if not open, not due, or one runs."""
        if self._state is not CircuitState.OPEN or self._clock() < self._next_probe:
            return False
        self._state = CircuitState.HALF_OPEN
        return True

    def probe_succeeded(self) -> float:
        """The store answered the probe: close. Returns how long the circuit was open (seconds)."""
        if self._state is not CircuitState.HALF_OPEN:
            raise RuntimeError(f"no probe is running (circuit {self._state.value})")
        self._state = CircuitState.CLOSED
        self._failures = 0
        return self._clock() - self._opened_at

    def probe_failed(self) -> None:
        """The store did not answer the probe: open again, next probe after a longer delay (capped)."""
        if self._state is not CircuitState.HALF_OPEN:
            raise RuntimeError(f"no probe is running (circuit {self._state.value})")
        self._state = CircuitState.OPEN
        self.failed_probes += 1
        self._delay = min(self._delay * self.factor, self.max_delay)
        self._next_probe = self._clock() + self._delay

    def open_for(self) -> float:
        """Seconds since the circuit opened; 0 while closed."""
        return 0.0 if self._state is CircuitState.CLOSED else self._clock() - self._opened_at
