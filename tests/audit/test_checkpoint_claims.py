"""Checkpoint claims name their holder (``tether.sts.writer``): a restarted writer reclaims its own.

The writer identity of a data directory belongs to the one live process holding its lock;
a claim is reclaimable only by the holder it names, so another replica (or another worker
on the same directory) still honours it until it expires.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from test_checkpoint_upkeep import BACKENDS, ISS, add, checkpoints, run, signing_key

from tether.keys.keyring import KeyRing
from tether.store.protocol import Store
from tether.sts.checkpoints import CLAIM_SECONDS, AuditCheckpoints
from tether.sts.writer import LOCK_FILE, WRITER_FILE, WriterIdentity, claim

KEY = "audit-checkpoint:after:0"


def test_a_data_directory_keeps_one_writer_identity_across_processes(tmp_path: Path) -> None:
    first = WriterIdentity(tmp_path)
    name = first.holder()
    assert name.startswith("w-") and first.locked
    assert (tmp_path / LOCK_FILE).exists() and name in (tmp_path / WRITER_FILE).read_text()
    first.release()
    again = WriterIdentity(tmp_path)
    assert again.holder() == name  # the next process on the directory is the same writer
    again.release()


def test_a_live_writer_keeps_its_identity_from_another_process_on_the_same_directory(tmp_path: Path) -> None:
    live = WriterIdentity(tmp_path)
    name = live.holder()
    sibling = WriterIdentity(tmp_path)  # `tether serve --workers 2`: the lock is held
    assert sibling.holder() == sibling.process != name and not sibling.locked
    live.release()
    assert sibling.holder() == name  # once the holder is gone, the next claim takes the identity
    sibling.release()


def test_a_dropped_writer_lets_go_of_the_identity_as_a_dead_process_does(tmp_path: Path) -> None:
    name = WriterIdentity(tmp_path).holder()  # the object is dropped at once
    gc.collect()
    assert WriterIdentity(tmp_path).holder() == name


def test_without_a_data_directory_a_writer_is_only_its_process(tmp_path: Path) -> None:
    one, two = WriterIdentity(None), WriterIdentity(None)
    assert one.holder() == one.process != two.holder() and not one.locked
    assert WriterIdentity(tmp_path / "a").holder() != WriterIdentity(tmp_path / "b").holder()


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_claim_is_reclaimed_by_its_holder_only(kind: str, tmp_path: Path, now: float) -> None:
    async def body(store: Store) -> None:
        until = int(now) + CLAIM_SECONDS
        assert await claim(store, KEY, holder="w-a", until=until, now=now)
        assert await claim(store, KEY, holder="w-a", until=until, now=now + 1)  # the same holder again
        assert not await claim(store, KEY, holder="w-b", until=until, now=now + 1)  # another: refused
        assert not await claim(store, KEY, holder="p-b", until=until, now=now + 1)
        assert await claim(store, "audit-checkpoint:after:9", holder="w-b", until=until, now=now + 1)  # other keys free

    run(kind, tmp_path, body)


def test_a_claim_expires_for_every_other_holder(tmp_path: Path, now: float) -> None:
    """SQLite only: Redis expires the claim in real time, which a test does not wait for."""

    async def body(store: Store) -> None:
        assert await claim(store, KEY, holder="w-a", until=int(now) + CLAIM_SECONDS, now=now)
        assert not await claim(store, KEY, holder="w-b", until=int(now) + 2 * CLAIM_SECONDS, now=now + CLAIM_SECONDS - 1)
        assert await claim(store, KEY, holder="w-b", until=int(now) + 2 * CLAIM_SECONDS, now=now + CLAIM_SECONDS)

    run("sqlite", tmp_path, body)


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_restarted_writer_signs_at_its_first_tick_what_its_dead_process_claimed(
    kind: str, tmp_path: Path, now: float
) -> None:
    ring = KeyRing([signing_key()])
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"

    async def body(store: Store) -> None:
        await add(store, 5, now=now)
        crashed = WriterIdentity(mine)
        assert await claim(store, KEY, holder=crashed.holder(), until=int(now) + CLAIM_SECONDS, now=now)
        other = AuditCheckpoints(every=5, seconds=3600, data_dir=theirs)
        sibling = AuditCheckpoints(every=5, seconds=3600, data_dir=mine)  # the lock is still held
        for tick in (1, CLAIM_SECONDS // 2, CLAIM_SECONDS - 2):  # a live claim: neither steals it
            assert await other.tick(store, ring, issuer=ISS, now=now + tick) is None
            assert await sibling.tick(store, ring, issuer=ISS, now=now + tick) is None
        sibling.writer.release()
        crashed.release()  # the process died holding the claim
        restarted = AuditCheckpoints(every=5, seconds=3600, data_dir=mine)
        record = await restarted.tick(store, ring, issuer=ISS, now=now + 1)
        assert record is not None and record.detail["seq"] == 5
        assert await other.tick(store, ring, issuer=ISS, now=now + 2) is None  # nothing left to sign
        assert [r.seq for r in await checkpoints(store)] == [6]
        restarted.writer.release()

    run(kind, tmp_path, body)


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_claim_mark_in_the_store_does_not_reveal_its_holder(kind: str, tmp_path: Path, now: float) -> None:
    # a reader of the store must not learn a replica's writer name: with it, a writer of the
    # store alone could pre-mark that replica's claim of a later key (review finding)
    async def body(store: Store) -> None:
        until = int(now) + CLAIM_SECONDS
        assert await claim(store, KEY, holder="w-secret-name", until=until, now=now)
        assert not await store.spent(f"{KEY}:by:w-secret-name", now=now + 1)
        assert await claim(store, KEY, holder="w-secret-name", until=until, now=now + 1)  # control: still its own

    run(kind, tmp_path, body)
