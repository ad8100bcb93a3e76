"""Review (issue 20): the inotify descriptor a ``DirectoryWatch`` gives back when closed or collected
is closed once, and never under a number something else holds by then.

A descriptor number is reused by the next ``open`` of any thread; a finalizer that fired for a
number the watch had already closed would close another object's file. Each test puts another
file at exactly the number the watch gave up (``dup2``) and checks that collecting the watch
leaves it open.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether.policy.watch import DirectoryWatch


def _open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _inotify_fds() -> set[int]:
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:inotify":
                found.add(int(name))
        except OSError:
            continue
    return found


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[int]:
    """A plain file's descriptor, to be copied onto the numbers a watch gave up."""
    fd = os.open(tmp_path / "sentinel", os.O_RDONLY | os.O_CREAT, 0o600)
    yield fd
    os.close(fd)


def _native(directory: Path) -> DirectoryWatch:
    gc.collect()
    watch = DirectoryWatch(directory)
    if not watch.native:
        pytest.skip("no inotify instance available on this machine right now")
    return watch


def test_review_a_closed_then_collected_watch_leaves_the_reused_number_open(tmp_path: Path, sentinel: int) -> None:
    watch = _native(tmp_path)
    fd = watch._fd
    watch.close()
    os.dup2(sentinel, fd)  # another file now holds the number the watch gave back
    try:
        del watch
        gc.collect()
        assert _open(fd)
        assert os.fstat(fd).st_ino == os.fstat(sentinel).st_ino
    finally:
        os.close(fd)


def test_review_a_rewatched_link_closes_each_instance_once(tmp_path: Path, sentinel: int) -> None:
    # the configured path is a symlink swapped on deploy: each swap closes the instance and opens
    # another (usually under the same number); every finalizer but the live one's must be dead
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    link = tmp_path / "policies"
    link.symlink_to(tmp_path / "a")
    before = _inotify_fds()
    watch = _native(link)
    assert watch.changed() is True  # the first call
    held = {watch._fd}
    for target in ("b", "a", "b"):
        (tmp_path / "next").symlink_to(tmp_path / target)
        os.replace(tmp_path / "next", link)
        assert watch.changed() is True
        assert watch.native and os.path.realpath(link) == str(tmp_path / target)
        held.add(watch._fd)
    assert len(_inotify_fds() - before) == 1  # one instance open, the swapped-out ones given back
    watch.close()
    assert _inotify_fds() == before
    copies = [number for number in sorted(held) if not _open(number)]
    for number in copies:
        os.dup2(sentinel, number)  # other files now hold every number the watch ever held
    try:
        del watch
        gc.collect()
        assert all(_open(number) for number in copies)
    finally:
        for number in copies:
            os.close(number)
