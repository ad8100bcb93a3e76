"""Log redaction for the gateway: no log record may carry a vaulted secret, in any encoding.

httpx logs every request URL at INFO — with query injection that URL holds the secret —
and httpcore logs raw upstream headers at DEBUG, before the gateway scrubs them. A
filter on those loggers rewrites any record that contains a registered secret.
"""

from __future__ import annotations

import logging
import threading

from tether.gateway.inject import Injection, encodings
from tether.gateway.scrub import REDACTED

__all__ = ["SecretRedactor"]


class SecretRedactor(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._needles: list[bytes] = []
        self._lock = threading.Lock()

    def register(self, secret: str) -> None:
        forms = encodings(secret, Injection(mode="query"))
        with self._lock:
            self._needles = sorted(set(self._needles) | set(forms), key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        needles = self._needles
        if not needles:
            return True
        message = record.getMessage().encode("utf-8", errors="replace")
        if any(needle in message for needle in needles):
            for needle in needles:
                message = message.replace(needle, REDACTED)
            record.msg, record.args = message.decode("utf-8", errors="replace"), None
        return True

    def install(self) -> None:
        """Attach to httpx, httpcore and every httpcore child logger (logger filters do not inherit)."""
        names = ["httpx", "httpcore"] + [n for n in logging.root.manager.loggerDict if n.startswith(("httpx.", "httpcore."))]
        for name in names:
            logger = logging.getLogger(name)
            if self not in logger.filters:
                logger.addFilter(self)
