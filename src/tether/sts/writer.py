"""Who claims the next audit checkpoint: a writer identity per data directory, held by one live process.

Replicas on one chain claim each next checkpoint with ``Store.first_use`` for ``CLAIM_SECONDS``
so that one of them signs it. A claim names its holder (``claim``): a restarted STS reclaims
at once the claim its previous process took and never used, instead of waiting it out, while
any other replica still honours a live claim. The holder is the data directory's writer
identity, kept in ``WRITER_FILE`` (``LocalState``), but only for the process holding an
exclusive ``flock`` on ``LOCK_FILE``: the kernel drops that lock when the process dies, however
it dies, so two live processes never share the identity (``tether serve --workers N`` shares
one data directory; the workers without the lock claim under a token of their own process).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import secrets
import weakref
from collections.abc import Callable
from pathlib import Path

from tether.localstate import LocalState
from tether.store.protocol import Store

__all__ = ["LOCK_FILE", "WRITER_FILE", "WriterIdentity", "claim"]

LOCK_FILE = "audit-checkpoint.lock"
WRITER_FILE = "audit-checkpoint.writer"
_KEY = "writer"


class WriterIdentity:
    """This process's name as a checkpoint writer: the data directory's while it holds the lock."""

    def __init__(self, data_dir: Path | None) -> None:
        self.data_dir = data_dir
        self.process = "p-" + secrets.token_hex(8)
        self._fd: int | None = None
        self._name: str | None = None
        self._closer: Callable[[], object] | None = None

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def holder(self) -> str:
        """The data directory's writer identity if this process holds (or can now take) the lock, else its own token."""
        if self._name is None and self.data_dir is not None:
            self._acquire(self.data_dir)
        return self._name or self.process

    def _acquire(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # held by a live process: another worker on this data directory
            return
        state = LocalState(data_dir / WRITER_FILE)
        name = state.get(_KEY)
        if not isinstance(name, str) or not name.startswith("w-"):
            name = "w-" + secrets.token_hex(16)
            state.put(_KEY, name)
        self._fd, self._name = fd, name
        self._closer = weakref.finalize(self, _close, fd)  # a dropped writer lets go, as a dead process does

    def release(self) -> None:
        """Drop the lock (as the kernel does when the process exits): the next process may take the identity."""
        if self._closer is not None:
            self._closer()
        self._fd = self._name = self._closer = None


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _by(key: str, holder: str) -> str:
    """The holder's mark for ``key``: a MAC of the key under the holder's name, never the name.

    The name is a secret of its data directory (an owner-only file): a reader of the store
    learns no replica's name and cannot forge another replica's mark for a later key. A writer
    of the store can still reset the claim row itself, as it always could: the claim keeps
    honest replicas from signing twice, it is no defence against the store.
    """
    mark = hmac.new(holder.encode(), key.encode(), hashlib.sha256).hexdigest()[:32]
    return f"{key}:by:{mark}"


async def claim(store: Store, key: str, *, holder: str, until: int, now: float) -> bool:
    """Claim ``key`` until ``until`` for ``holder``; True if it is now ``holder``'s, newly or from before.

    ``first_use`` decides between replicas; the holder is then marked in the single-use
    namespace (``Store.spend``), which ``spent`` reads back when the key is found taken. Should
    a process die between the two writes, its successor waits the claim out, as before.
    """
    if await store.first_use(key, until=until, now=now):
        await store.spend(_by(key, holder), until=until, now=now)
        return True
    return await store.spent(_by(key, holder), now=now)
