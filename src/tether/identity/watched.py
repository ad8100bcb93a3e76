"""A file parsed again whenever it changes, keeping the last good contents.

Trust bundles (JWKS and X.509) rotate in place while tether runs: spiffe-helper and SPIRE
rewrite them. Each read compares the file's (mtime, size, inode) with those of the version in
use and parses it again only when they differ; a file that cannot be read, or is caught half
written and does not parse, leaves the last good value in force (logged), so a rotation never
empties a trust store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from tether.filemodes import file_signature

__all__ = ["WatchedFile"]

log = logging.getLogger("tether.identity")
T = TypeVar("T")


class WatchedFile(Generic[T]):
    """``current()`` is ``parse(path's bytes)`` as of its last good version (``empty`` before one)."""

    def __init__(self, path: Path, parse: Callable[[bytes], T], empty: T, *, what: str, kept: str) -> None:
        self.path = path
        self._parse = parse
        self._value = empty
        self._seen: object = None
        self._what, self._kept = what, kept

    def current(self) -> T:
        try:
            seen = file_signature(self.path)
        except OSError:
            log.warning("%s %s cannot be read; keeping the last good %s", self._what, self.path, self._kept)
            return self._value
        if seen != self._seen:
            try:
                self._value = self._parse(self.path.read_bytes())
                self._seen = seen
            except (OSError, ValueError) as exc:
                log.warning("%s %s is invalid (%s); keeping the last good %s", self._what, self.path, exc, self._kept)
        return self._value
