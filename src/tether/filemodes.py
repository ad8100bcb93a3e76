"""Files that decide what tether does must be writable by their owner only.

The configuration, the policy directory and its policy files steer every decision the
STS makes; whoever can write them can grant anything. ``tether init`` creates them with
explicit modes (never the umask's), and tether refuses to load one that its group or
other users can write, as it already refuses a master key others can read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["OWNER_DIR", "OWNER_FILE", "file_signature", "others_can_write", "write_private"]

OWNER_FILE = 0o600
OWNER_DIR = 0o700


def others_can_write(path: Path) -> bool:
    """True if the group or other users may write ``path`` (symlinks followed to what is read)."""
    return bool(path.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def file_signature(*paths: Path) -> tuple[tuple[int, int, int], ...]:
    """(mtime, size, inode) of each path: whether a file watched for rotation changed, a rename
    into place included (``OSError`` if one cannot be read)."""
    stats = [path.stat() for path in paths]
    return tuple((st.st_mtime_ns, st.st_size, st.st_ino) for st in stats)


def write_private(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 whatever the umask (never overwrites)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, OWNER_FILE)
    os.fchmod(fd, OWNER_FILE)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
