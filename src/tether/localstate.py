"""High-water marks kept outside the store, where a database writer cannot rewind them.

Data in the store is not trusted because it is in the store: a writer without the master
key cannot forge what is sealed, but it can put back a whole old row — a signing key from
before its retirement, a vault value from before its rotation, an audit tail from before a
checkpoint — whose seal is genuine. Each process that opens such values remembers the
newest it has seen in a small JSON file in its data directory (mode 0600, replaced
atomically) and refuses anything older, across restarts.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

__all__ = ["LocalState"]


class LocalState:
    """One JSON object in ``path``; ``get``/``put`` of JSON values by key, each ``put`` written through."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._values: dict[str, Any] = self._read()

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise OSError(f"`{self.path}` is not readable local state: {exc}") from exc
        if not isinstance(data, dict):
            raise OSError(f"`{self.path}` is not readable local state")
        return data

    def get(self, key: str) -> Any:
        with self._lock:
            return self._values.get(key)

    def put(self, key: str, value: Any) -> None:
        """Record ``value`` under ``key`` and write the file (atomically: a crash leaves the old or the new)."""
        with self._lock:
            self._values[key] = value
            text = json.dumps(self._values, sort_keys=True)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # a temporary name of its own: `tether serve --workers N` shares one data directory
            fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".", suffix=".tmp")
            tmp = Path(name)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)  # mkstemp made it owner-only (0600)
            _sync_directory(self.path.parent)


def _sync_directory(directory: Path) -> None:
    """Make the rename durable: without it a power loss can bring the previous file back,
    rewinding the mark this state exists to keep (best effort where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
