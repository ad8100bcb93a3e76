"""Issue 12, finding 5: a checkpoint writer that cannot be made to forget, and checkpoints that chain.

The reviewer's attack: records 1-5 are covered by checkpoint record 6, records 7-9 are
appended. With the STS stopped, a database writer edits record 3, turns record 6 into an
ordinary record (so the newest checkpoint is gone) and re-hashes 3-9. A writer restarted
on that chain used to find no checkpoint to check against, and signed record 9.

Now the writer keeps the last checkpoint it signed in ``audit-checkpoint.state`` in its
data directory. Restarted on the same data directory, it refuses and raises the
critical ``audit_chain`` alert. With the file deleted too, it cannot know and signs; the
export then shows a stretch that no honest writer leaves (``Stretch.late`` above
``checkpoint_every``). Every negative case has a positive control on the same fixture:
the same steps without the rewrite sign, raise no alert and verify.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_checkpoint_forgery import chain_alerts, rewrite
from test_checkpoint_upkeep import BACKENDS, ISS, Chain, add, checkpoints, rows, run_chain, signing_key

from services import REDIS_URL, schema_dsn
from tether.audit.checkpoint import CHECKPOINT_TYP, checkpoint_claims, checkpoint_event
from tether.audit.coverage import Stretch
from tether.audit.export import verify_export
from tether.keys.keyring import KeyRing, SigningKey
from tether.store.protocol import Store
from tether.sts.checkpoints import STATE_FILE, AuditCheckpoints


def writer(data_dir: Path) -> AuditCheckpoints:
    """An STS's checkpoint writer: every 5 records, or 60 s with at least one new record."""
    return AuditCheckpoints(every=5, seconds=60, data_dir=data_dir)


async def signed_then_stopped(store: Store, data_dir: Path, ring: KeyRing, now: float) -> tuple[int, str]:
    """Records 1-5, checkpoint record 6 naming record 5, records 7-9 (read, not due); the STS stops."""
    first = writer(data_dir)
    await add(store, 5, now=now)
    signed = await first.tick(store, ring, issuer=ISS, now=now)
    assert signed is not None and (signed.seq, signed.detail["seq"], signed.detail["prev"]) == (6, 5, None)
    await add(store, 3, now=now)
    assert await first.tick(store, ring, issuer=ISS, now=now) is None
    return signed.seq, signed.hash


@contextlib.asynccontextmanager
async def later(chain: Chain) -> AsyncIterator[Store]:
    """The store as a process started a while later sees it. On PostgreSQL + Redis the claims taken
    before have expired by then; a fresh Redis prefix stands in for the 30 s a test does not wait."""
    if chain.schema is None:
        yield chain.store
        return
    from tether.store.postgres.store import PostgresRedisStore

    store = await PostgresRedisStore.open(schema_dsn(chain.schema), REDIS_URL, prefix=f"{chain.schema}-later", max_size=2)
    try:
        yield store
    finally:
        await store.aclose()


def verified(records: list[dict[str, Any]], key: SigningKey) -> Any:
    return verify_export(records, keys={key.kid: key.public}, issuer=ISS, every=5)


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("forged", [True, False], ids=["rewritten", "control"])
def test_a_restarted_writer_refuses_when_its_last_checkpoint_was_demoted(
    kind: str, forged: bool, tmp_path: Path, now: float, caplog: pytest.LogCaptureFixture
) -> None:
    key = signing_key()
    ring = KeyRing([key])

    async def body(chain: Chain) -> None:
        store = chain.store
        six = await signed_then_stopped(store, tmp_path / "data", ring, now)
        if forged:
            await rewrite(chain, 3, demote=6)
            assert verify_export(await rows(store), keys=None).records == 9  # a consistent chain, no checkpoint
        restarted = writer(tmp_path / "data")  # a new process on the same data directory
        written = await restarted.tick(store, ring, issuer=ISS, now=now + 60)
        if not forged:
            assert written is not None and (written.seq, written.detail["seq"]) == (10, 9)
            assert written.detail["prev"] == {"seq": six[0], "hash": six[1]}
            assert await chain_alerts(store) == []
            report = verified(await rows(store), key)
            assert (report.checkpoints, report.signed_through, report.unsigned, report.overdue) == (2, 9, 0, None)
            return
        assert written is None and await checkpoints(store) == []
        (alert,) = await chain_alerts(store)
        (demoted,) = chain.sql("SELECT hash FROM audit WHERE seq = 6")[0]
        assert alert.detail["severity"] == "critical" and alert.detail["actions"] == ["alert"]
        assert alert.detail["evidence"] == {"seq": 6, "hash": demoted, "trusted": 0}
        assert alert.detail["reason"] == ("audit record 6 is no longer the checkpoint this STS signed last "
                                          "(its hash differs); no checkpoint signed")  # fmt: skip
        # refused again later, without a second alert
        await add(store, 5, now=now)
        assert await restarted.tick(store, ring, issuer=ISS, now=now + 3600) is None
        assert len(await chain_alerts(store)) == 1 and await checkpoints(store) == []

    with caplog.at_level(logging.ERROR, logger="tether.sts"):
        run_chain(kind, tmp_path, body)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == (["audit chain: record 6 is no longer the checkpoint this STS signed last (its hash differs); "
                       "no checkpoint signed"] if forged else [])  # fmt: skip


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("forged", [True, False], ids=["rewritten", "control"])
def test_with_the_state_file_deleted_too_the_export_shows_an_overdue_stretch(
    kind: str, forged: bool, tmp_path: Path, now: float
) -> None:
    """A writer without its file cannot know and signs; ``verify_export`` with the JWKS shows what it covered."""
    key = signing_key()
    ring = KeyRing([key])

    async def body(chain: Chain) -> None:
        await signed_then_stopped(chain.store, tmp_path / "data", ring, now)
        if forged:
            await rewrite(chain, 3, demote=6)
        (tmp_path / "data" / STATE_FILE).unlink()
        async with later(chain) as store:
            written = await writer(tmp_path / "data").tick(store, ring, issuer=ISS, now=now + 60)
            assert written is not None and (written.seq, written.detail["seq"]) == (10, 9)
            assert await chain_alerts(store) == []
            report = verified(await rows(store), key)
        assert (report.signed_through, report.unsigned) == (9, 0)  # it looks signed ...
        if forged:  # ... but one checkpoint closes nine records appended a minute before it
            assert report.checkpoints == 1 and written.detail["prev"] is None
            assert report.overdue == report.longest == Stretch(first=1, last=9, checkpoint=10, records=9, late=9)
        else:
            assert report.checkpoints == 2 and report.overdue is None
            assert report.longest == Stretch(first=1, last=5, checkpoint=6, records=5, late=0)

    run_chain(kind, tmp_path, body)


@pytest.mark.parametrize("kind", BACKENDS)
def test_two_replicas_alternate_signing_across_restarts_without_alerts(kind: str, tmp_path: Path, now: float) -> None:
    """Each replica keeps its own file; a newer checkpoint by the other is fine: the chain leads back."""
    key = signing_key()
    ring = KeyRing([key])

    async def body(chain: Chain) -> None:
        store = chain.store
        a, b = writer(tmp_path / "a"), writer(tmp_path / "b")
        for step in range(3):
            for replica in (a, b):
                await add(store, 5, now=now)
                assert await replica.tick(store, ring, issuer=ISS, now=now + step) is not None
        a, b = writer(tmp_path / "a"), writer(tmp_path / "b")  # both restarted
        for replica in (b, a):
            await add(store, 5, now=now)
            assert await replica.tick(store, ring, issuer=ISS, now=now + 10) is not None
        assert await chain_alerts(store) == []
        signed = await checkpoints(store)
        assert [c.detail["prev"] for c in signed[1:]] == [{"seq": c.seq, "hash": c.hash} for c in signed[:-1]]
        report = verified(await rows(store), key)
        assert (report.checkpoints, report.unsigned, report.overdue) == (8, 0, None)
        # each file names the last checkpoint that replica signed, readable by its owner only
        for name, last in (("b", signed[-2]), ("a", signed[-1])):
            path = tmp_path / name / STATE_FILE
            saved = json.loads(path.read_text())["last_signed"]
            assert saved == {"checkpoint": {"seq": last.seq, "hash": last.hash},
                             "named": {"seq": last.detail["seq"], "hash": last.detail["hash"]}}  # fmt: skip
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    run_chain(kind, tmp_path, body)


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("names", ["nothing", "an-older-checkpoint", "its-checkpoint"])
def test_a_chain_of_checkpoints_that_does_not_lead_back_is_refused(kind: str, names: str, tmp_path: Path,
                                                                   now: float) -> None:  # fmt: skip
    """Another signer (a replica restored from an old backup, say) appends a checkpoint whose chain skips
    this replica's last one: this replica refuses. Naming this replica's checkpoint is the control."""
    key = signing_key()
    ring = KeyRing([key])

    async def body(chain: Chain) -> None:
        store = chain.store
        other, mine = writer(tmp_path / "other"), writer(tmp_path / "mine")
        await add(store, 5, now=now)
        first = await other.tick(store, ring, issuer=ISS, now=now)
        await add(store, 5, now=now)
        own = await mine.tick(store, ring, issuer=ISS, now=now)  # record 12, after record 6
        assert first is not None and own is not None and own.detail["prev"] == {"seq": 6, "hash": first.hash}
        await add(store, 5, now=now)
        head = (await store.audit_records(after=16, limit=1))[0]
        prev = {"nothing": None, "an-older-checkpoint": (6, first.hash), "its-checkpoint": (12, own.hash)}[names]
        claims = checkpoint_claims(issuer=ISS, seq=head.seq, hash=head.hash, iat=int(now), prev=prev)
        jws = ring.sign(claims, typ=CHECKPOINT_TYP)
        await store.append_audit(checkpoint_event(seq=head.seq, hash=head.hash, jws=jws, prev=prev), now=float(int(now)))
        await add(store, 5, now=now)
        written = await mine.tick(store, ring, issuer=ISS, now=now + 1)
        if names == "its-checkpoint":
            assert written is not None and written.detail["prev"]["seq"] == 18
            assert await chain_alerts(store) == []
            return
        assert written is None
        (alert,) = await chain_alerts(store)
        assert alert.detail["evidence"]["seq"] == 18
        assert (
            alert.detail["reason"]
            == {
                "nothing": "audit record 18 names no checkpoint before it: the chain of checkpoints does not lead back "
                "to record 12, the checkpoint this STS last checked; no checkpoint signed",
                "an-older-checkpoint": "audit record 18 names record 6 as the checkpoint before it: the chain of "
                "checkpoints skips record 12, the checkpoint this STS last checked; no checkpoint signed",
            }[names]
        )

    run_chain(kind, tmp_path, body)


@pytest.mark.parametrize("state", ["deleted", "kept"])
def test_a_new_audit_log_on_an_old_data_directory_is_refused_until_the_file_is_deleted(
    state: str, tmp_path: Path, now: float
) -> None:
    """The saved checkpoint is missing from the chain (a new database): one alert, then signing resumes
    only when the operator deletes the file, as the README says."""
    ring = KeyRing([signing_key()])

    async def old_log(chain: Chain) -> None:
        await add(chain.store, 5, now=now)
        assert await writer(tmp_path / "data").tick(chain.store, ring, issuer=ISS, now=now) is not None

    async def new_log(chain: Chain) -> None:
        store = chain.store
        if state == "deleted":
            (tmp_path / "data" / STATE_FILE).unlink()
        restarted = writer(tmp_path / "data")
        await add(store, 3, now=now)
        written = await restarted.tick(store, ring, issuer=ISS, now=now + 60)
        if state == "deleted":
            assert written is not None and written.detail["prev"] is None and await chain_alerts(store) == []
            return
        assert written is None
        await add(store, 5, now=now)  # record 6 now exists, and is not the one signed
        assert await restarted.tick(store, ring, issuer=ISS, now=now + 120) is None
        (alert,) = await chain_alerts(store)
        assert alert.detail["evidence"] == {"seq": 6, "hash": None, "trusted": 0}
        assert alert.detail["reason"] == ("audit record 6 is missing, and it is the checkpoint this STS signed "
                                          "last; no checkpoint signed")  # fmt: skip

    run_chain("sqlite", tmp_path / "old", old_log)
    run_chain("sqlite", tmp_path / "new", new_log)


@pytest.mark.parametrize("content", ['{"last_signed": {"checkpoint": 5}}', "[]", "{"], ids=["malformed", "list", "torn"])
def test_an_unreadable_state_file_stops_the_writer_from_starting(content: str, tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    path.write_text(content, encoding="utf-8")
    with pytest.raises(OSError, match=f"`{path}`"):
        writer(tmp_path)
    path.write_text(json.dumps({"last_signed": None}), encoding="utf-8")  # control: nothing signed yet
    assert writer(tmp_path).every == 5
