"""Noticing that a policy directory changed, for the price of one non-blocking read per decision.

On Linux an inotify watch (through libc, no extra dependency) reports changes and
``changed()`` drains it without blocking; elsewhere the directory fingerprint is compared on
every call. A configured path that is a symlink swapped on deploy is caught by also watching
its parent and re-resolving it, and every ``recheck`` seconds ``changed()`` answers True, so a
missed event costs at most that long.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import struct
import sys
import time
import weakref
from pathlib import Path

__all__ = ["DirectoryWatch"]

_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_IN_IGNORED = 0x00008000
_IN_DELETE_SELF = 0x00000400
_IN_MOVE_SELF = 0x00000800
_HEADER = struct.Struct("iIII")
_EVENTS = (
    0x00000002  # IN_MODIFY
    | 0x00000004  # IN_ATTRIB
    | 0x00000008  # IN_CLOSE_WRITE
    | 0x00000040  # IN_MOVED_FROM
    | 0x00000080  # IN_MOVED_TO
    | 0x00000100  # IN_CREATE
    | 0x00000200  # IN_DELETE
    | 0x00000400  # IN_DELETE_SELF
    | 0x00000800  # IN_MOVE_SELF
)


#: what changes in the link's parent directory matter: the link replaced, removed or re-pointed
_PARENT_EVENTS = 0x00000004 | 0x00000040 | 0x00000080 | 0x00000100 | 0x00000200 | 0x00000400 | 0x00000800


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name or "libc.so.6", use_errno=True)
    except OSError:
        return None


class DirectoryWatch:
    """``changed()`` is True the first time it is called and whenever the directory changed since."""

    def __init__(self, directory: Path, *, recheck: float = 5.0) -> None:
        self.directory = directory
        self.recheck = recheck
        self._fd = -1
        self._closer: weakref.finalize[[int], DirectoryWatch] | None = None
        self._first = True
        self._libc = _libc()
        self._resolved = os.path.realpath(directory)
        self._checked = time.monotonic()
        self._watch()

    def _watch(self) -> None:
        if self._libc is None:
            return
        self._resolved = os.path.realpath(self.directory)
        parent = os.path.dirname(os.path.abspath(self.directory))
        fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        watched = fd >= 0 and self._libc.inotify_add_watch(fd, os.fsencode(self._resolved), _EVENTS) >= 0
        if watched and self._libc.inotify_add_watch(fd, os.fsencode(parent), _PARENT_EVENTS) >= 0:
            self._fd = fd
            # an engine nobody closes (a test's STS, a verifier dropped) still gives its inotify
            # instance back when collected: instances are few per user (128 by default), and once
            # they run out every process of that user falls back to a directory scan per decision
            self._closer = weakref.finalize(self, _close_quietly, fd)
        elif fd >= 0:
            os.close(fd)

    @property
    def native(self) -> bool:
        return self._fd >= 0

    def changed(self) -> bool:
        if self._first:
            self._first = False
            return True
        if self._fd < 0:
            return True  # no inotify: let the caller compare fingerprints every time
        now = time.monotonic()
        if now - self._checked >= self.recheck:
            self._checked = now
            self._drain()
            if os.path.realpath(self.directory) != self._resolved:
                self.close()
                self._watch()
            return True
        return self._drain()

    def _drain(self) -> bool:
        """Read every queued event; True if there was one (re-watching if a watched directory went away)."""
        seen = False
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return seen
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                return True
            if not data:
                return seen
            seen = True
            if _lost(data) or os.path.realpath(self.directory) != self._resolved:
                self.close()  # the directory was removed, moved or the link re-pointed: watch again
                self._watch()
                return True

    def close(self) -> None:
        """Stop watching (a later ``changed()`` falls back to fingerprint comparison)."""
        if self._fd >= 0:
            if self._closer is not None:
                self._closer()  # closes the descriptor once; the finalizer is then dead
                self._closer = None
            else:
                _close_quietly(self._fd)
            self._fd = -1


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _lost(data: bytes) -> bool:
    offset = 0
    while offset + _HEADER.size <= len(data):
        _, mask, _, length = _HEADER.unpack_from(data, offset)
        if mask & (_IN_IGNORED | _IN_DELETE_SELF | _IN_MOVE_SELF):
            return True
        offset += _HEADER.size + length
    return False
