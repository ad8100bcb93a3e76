"""A policy directory watch gives its inotify instance back when closed or collected.

Instances are few per user (``fs.inotify.max_user_instances``, 128 by default); a process that
builds engines and drops them (tests, short-lived verifiers) used to keep every one until it
exited, and once they ran out every process of that user — a benchmark's STS included — fell
back to scanning the policy directory on every decision.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

from tether.policy.watch import DirectoryWatch


def _open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _native(directory: Path) -> DirectoryWatch:
    gc.collect()  # watches this process dropped give their instances back first
    watch = DirectoryWatch(directory)
    if not watch.native:  # other processes of this user hold them all
        pytest.skip("no inotify instance available on this machine right now")
    return watch


def test_a_dropped_watch_closes_its_inotify_descriptor(tmp_path: Path) -> None:
    watch = _native(tmp_path)
    fd = watch._fd
    assert _open(fd)
    del watch
    gc.collect()
    assert not _open(fd)


def test_close_is_idempotent_and_a_closed_watch_still_answers(tmp_path: Path) -> None:
    watch = _native(tmp_path)
    fd = watch._fd
    watch.close()
    watch.close()
    assert not _open(fd) and not watch.native
    assert watch.changed() is True  # first call
    assert watch.changed() is True  # no inotify: the caller compares fingerprints every time


def test_many_watches_created_and_dropped_stay_native(tmp_path: Path) -> None:
    # more than the default per-user limit of 128: without the release, the later ones are not native
    _native(tmp_path)
    for _ in range(300):
        watch = DirectoryWatch(tmp_path)
        assert watch.native
        del watch
