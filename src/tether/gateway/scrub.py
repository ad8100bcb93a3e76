"""Scrubbing a vaulted secret out of upstream responses, headers and streamed bodies alike.

An upstream that echoes the key it was sent (in an error message, a debug header, a
redirect URL) must not hand it to the agent. Every encoding the secret could take
(``inject.encodings``) is replaced, and a streamed body keeps back the last
``len(longest) - 1`` bytes of each chunk so an occurrence split across two chunks is
still caught.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["REDACTED", "Scrubber", "scrub_headers"]

REDACTED = b"[REDACTED]"


def _replace_all(data: bytes, needles: Sequence[bytes]) -> tuple[bytes, int]:
    hits = 0
    for needle in needles:
        if needle in data:
            hits += data.count(needle)
            data = data.replace(needle, REDACTED)
    return data, hits


class Scrubber:
    """Streaming replacement of every needle; ``hits`` counts the occurrences removed."""

    def __init__(self, needles: Sequence[bytes]) -> None:
        if any(needle in REDACTED for needle in needles):
            raise ValueError("a secret must not be a substring of the redaction marker")
        self._needles = sorted(needles, key=len, reverse=True)
        self._keep = max((len(n) for n in needles), default=1) - 1
        self._pending = b""
        self.hits = 0

    def feed(self, chunk: bytes) -> bytes:
        data, hits = _replace_all(self._pending + chunk, self._needles)
        self.hits += hits
        if self._keep and len(data) > self._keep:
            self._pending = data[-self._keep :]
            return data[: -self._keep]
        if self._keep:
            self._pending = data
            return b""
        return data

    def flush(self) -> bytes:
        data, hits = _replace_all(self._pending, self._needles)
        self.hits += hits
        self._pending = b""
        return data


def scrub_headers(headers: Iterable[tuple[str, str]], needles: Sequence[bytes]) -> tuple[list[tuple[str, str]], int]:
    out: list[tuple[str, str]] = []
    total = 0
    for name, value in headers:
        cleaned, hits = _replace_all(value.encode("latin-1", errors="replace"), needles)
        total += hits
        out.append((name, cleaned.decode("latin-1")))
    return out, total
