"""Log redaction for the gateway: no log record may carry a vaulted secret, in any encoding.

HTTP clients log request URLs (with query injection the URL holds the secret) and raw
upstream headers, before the gateway scrubs them: httpx at INFO, httpcore at DEBUG,
aiohttp (the upstream client) on errors. A filter on those loggers rewrites any record
that contains a registered secret; the gateway also hands it to ``tether.logs`` so the
root handler (every other logger: uvicorn, tether's own) redacts the same secrets.
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
        self._secrets: dict[str, frozenset[bytes]] = {}
        self._lock = threading.Lock()

    def register(self, secret: str) -> None:
        forms = frozenset(encodings(secret, Injection(mode="query")))
        with self._lock:
            if secret in self._secrets:
                return
            self._secrets[secret] = forms
            self._needles = sorted(set(self._needles) | forms, key=len, reverse=True)

    def unregister(self, secret: str) -> None:
        """Stop looking for ``secret``: a short-lived upstream access token that is dead (expired or
        revoked); without this the needles would grow with every token a busy gateway fetched."""
        with self._lock:
            if self._secrets.pop(secret, None) is None:
                return
            kept: set[bytes] = set().union(*self._secrets.values())
            self._needles = sorted(kept, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """``text`` without any registered secret (``text`` itself when none occurs); ``tether.logs`` uses it too."""
        needles = self._needles
        if not needles:
            return text
        data = text.encode("utf-8", errors="replace")
        if not any(needle in data for needle in needles):
            return text
        for needle in needles:
            data = data.replace(needle, REDACTED)
        return data.decode("utf-8", errors="replace")

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._needles:
            return True
        message = record.getMessage()
        clean = self.redact(message)
        if clean is not message:
            record.msg, record.args = clean, None
        return True

    def install(self) -> None:
        """Attach to the HTTP clients' loggers and their children (logger filters do not inherit)."""
        roots = ("httpx", "httpcore", "aiohttp")
        names = [*roots, *(n for n in logging.root.manager.loggerDict if n.startswith(tuple(r + "." for r in roots)))]
        for name in names:
            logger = logging.getLogger(name)
            if self not in logger.filters:
                logger.addFilter(self)
