"""Log redaction for the gateway: no log record may carry a vaulted secret, in any encoding.

HTTP clients log request URLs (with query injection the URL holds the secret) and raw
upstream headers, before the gateway scrubs them: httpx at INFO, httpcore at DEBUG,
aiohttp (the upstream client) on errors. A filter on those loggers rewrites any record
that contains a registered secret.
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
        """Attach to the HTTP clients' loggers and their children (logger filters do not inherit)."""
        roots = ("httpx", "httpcore", "aiohttp")
        names = [*roots, *(n for n in logging.root.manager.loggerDict if n.startswith(tuple(r + "." for r in roots)))]
        for name in names:
            logger = logging.getLogger(name)
            if self not in logger.filters:
                logger.addFilter(self)
