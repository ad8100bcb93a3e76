"""A log line that repeats with every request, written at most once per interval.

During an outage each refused request would otherwise log its own line, and refusals are cheap
(the circuit answers in milliseconds): an unauthenticated flood would turn the log into a lever
on the disk. The first occurrence of a streak is logged at once; later ones are counted, and the
next line (no sooner than ``interval`` later) says how many were not logged. The count of every
refusal is in the metrics (``tether_refusals``), not in the log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

__all__ = ["LogThrottle"]


class LogThrottle:
    """``emit`` logs the first ``burst`` calls, then at most ``burst`` lines per ``interval`` seconds
    (clock injected)."""

    def __init__(
        self,
        log: logging.Logger,
        level: int,
        *,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        burst: int = 1,
    ) -> None:
        self.log = log
        self.level = level
        self.interval = interval
        self.burst = max(1, burst)
        self._clock = clock
        self._last: float | None = None  # when the current window began
        self._sent = 0  # lines logged in it
        self._skipped = 0
        self._lock = threading.Lock()  # the gateway and the STS may render errors from worker threads too

    def emit(self, message: str, *, extra: Mapping[str, object] | None = None) -> bool:
        """Log ``message`` (with ``extra`` fields) unless a line went out less than ``interval`` ago;
        True when it was logged."""
        now = self._clock()
        with self._lock:
            if self._last is not None and now - self._last < self.interval:
                if self._sent >= self.burst:
                    self._skipped += 1
                    return False
            else:
                self._last, self._sent = now, 0
            self._sent += 1
            skipped, self._skipped = self._skipped, 0
        if skipped:
            self.log.log(self.level, "%s (%d more like it since the last line, not logged)", message, skipped, extra=extra)
        else:
            self.log.log(self.level, "%s (repeats are logged at most every %.0f s)", message, self.interval, extra=extra)
        return True
