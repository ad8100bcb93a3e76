"""Issue 12, finding 5: the checkpoint writer never vouches for a rewritten chain.

An attacker with write access to the database rewrites one audit record directly in
SQLite or PostgreSQL. Then they re-hash every record after it, and PostgreSQL's head row,
so the chain is consistent from that point on and new appends link to the forgery. The
writer must re-link what it is about to sign, refuse, and raise a chain alert
(``alert.raised``, detector ``audit_chain``) with an error in the log. Each negative case has a
positive control on the same fixture, without the rewrite, where the checkpoint is signed
and the whole log verifies.

Tests where a second writer takes over after a refusal are SQLite only. Redis expires the
first writer's claim in real time, and a test does not wait for that.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest
from test_checkpoint_upkeep import BACKENDS, ISS, Chain, add, checkpoints, rows, run_chain, signing_key

from tether.audit.chain import AuditEvent, AuditRecord, link
from tether.audit.checkpoint import CHECKPOINT_KIND, CHECKPOINT_TYP, checkpoint_claims, checkpoint_event
from tether.audit.export import verify_export
from tether.audit.relink import CHAIN_DETECTOR
from tether.keys.keyring import KeyRing
from tether.monitor.events import MONITOR_PRINCIPAL
from tether.store.protocol import Store
from tether.sts.checkpoints import CLAIM_SECONDS, AuditCheckpoints

Original = list[tuple[Any, ...]]


def relinked(records: list[AuditRecord], prev: str, *, forge: int | None = None,
             demote: int | None = None) -> list[AuditRecord]:  # fmt: skip
    """``records`` linked again from ``prev``, the one at seq ``forge`` edited, the checkpoint
    record at seq ``demote`` turned into an ordinary record."""
    out = []
    for record in records:
        detail = {**record.detail, "forged": True} if record.seq == forge else record.detail
        kind = record.kind
        if record.seq == demote:
            kind, detail = "token.refused", {"reason": "nothing to see"}
        event = AuditEvent(kind=kind, outcome=record.outcome, principal=record.principal, task=record.task,
                           jti=record.jti, error=record.error, detail=detail)  # fmt: skip
        out.append(link(event, seq=record.seq, ts=record.ts, prev=prev))
        prev = out[-1].hash
    return out


def store_rows(chain: Chain, records: list[AuditRecord]) -> None:
    """Write ``records`` over the stored ones (and move PostgreSQL's head row if the last is the head)."""
    chain.sql_many("UPDATE audit SET kind = ?, detail = ?, prev = ?, hash = ? WHERE seq = ?",
                   [(r.kind, r.detail_json, r.prev, r.hash, r.seq) for r in records])  # fmt: skip
    if chain.schema is not None:
        chain.sql("UPDATE audit_head SET hash = ? WHERE seq = ?", (records[-1].hash, records[-1].seq))


async def rewrite(chain: Chain, seq: int, *, demote: int | None = None) -> Original:
    """Edit record ``seq`` (and demote checkpoint record ``demote``) and re-hash it and every record
    after it; returns the original rows."""
    original = chain.sql("SELECT seq, kind, detail, prev, hash FROM audit WHERE seq >= ? ORDER BY seq", (seq,))
    records = await chain.store.audit_records(after=seq - 1, limit=10_000)
    store_rows(chain, relinked(records, records[0].prev, forge=seq, demote=demote))
    return original


async def restore(chain: Chain, original: Original) -> None:
    """Put the rewritten rows back, and link the records appended since then to them."""
    chain.sql_many("UPDATE audit SET kind = ?, detail = ?, prev = ?, hash = ? WHERE seq = ?",
                   [(kind, detail, prev, digest, seq) for seq, kind, detail, prev, digest in original])  # fmt: skip
    last_seq, last_hash = original[-1][0], original[-1][4]
    store_rows(chain, relinked(await chain.store.audit_records(after=last_seq, limit=10_000), last_hash))


async def first_checkpoint(store: Store, writer: AuditCheckpoints, ring: KeyRing, now: float) -> None:
    """Five records and the writer's checkpoint of them (record 6, naming record 5)."""
    await add(store, 5, now=now)
    assert await writer.tick(store, ring, issuer=ISS, now=now) is not None


async def rewritten_after_reading(chain: Chain, writer: AuditCheckpoints, ring: KeyRing, now: float, *,
                                  forged: bool = True) -> Original:  # fmt: skip
    """Checkpoint 6 names record 5, the writer reads records 7-9, record 8 is rewritten (and the tail
    re-hashed), then records 10 and 11 are appended on the forged head; returns the original rows."""
    await first_checkpoint(chain.store, writer, ring, now)
    await add(chain.store, 3, now=now)
    assert await writer.tick(chain.store, ring, issuer=ISS, now=now) is None  # reads 7-9, not due
    original = await rewrite(chain, 8) if forged else []  # after the last checkpoint: only what was read tells
    await add(chain.store, 2, now=now)  # appended after the forged head: the chain is consistent
    assert verify_export(await rows(chain.store), keys=None).records == 11
    return original


async def chain_alerts(store: Store) -> list[AuditRecord]:
    found = await store.audit_records(after=0, limit=100_000)
    return [r for r in found if r.kind == "alert.raised" and r.detail["detector"] == CHAIN_DETECTOR]


async def head(store: Store) -> tuple[int, str]:
    last = (await store.audit_records(after=0, limit=100_000))[-1]
    return last.seq, last.hash


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("forged", [True, False], ids=["rewritten", "control"])
def test_a_rewrite_of_records_the_writer_read_is_refused_with_an_alert(
    kind: str, forged: bool, tmp_path: Any, now: float, caplog: pytest.LogCaptureFixture
) -> None:
    key = signing_key()
    ring = KeyRing([key])

    async def body(chain: Chain) -> None:
        store = chain.store
        writer = AuditCheckpoints(every=5, seconds=3600)
        await rewritten_after_reading(chain, writer, ring, now, forged=forged)
        written = await writer.tick(store, ring, issuer=ISS, now=now + 2)
        if not forged:
            assert written is not None and written.detail["seq"] == 11
            assert await chain_alerts(store) == []
            report = verify_export(await rows(store), keys={key.kid: key.public}, issuer=ISS)
            assert (report.checkpoints, report.signed_through, report.unsigned) == (2, 11, 0)
            return
        assert written is None and [c.seq for c in await checkpoints(store)] == [6]
        (alert,) = await chain_alerts(store)
        (forged_hash,) = chain.sql("SELECT hash FROM audit WHERE seq = 8")[0]
        assert alert.principal == MONITOR_PRINCIPAL and alert.outcome == "alert" and alert.task is None
        assert alert.detail["severity"] == "critical" and alert.detail["actions"] == ["alert"]
        assert alert.detail["evidence"] == {"seq": 8, "hash": forged_hash, "trusted": 5}
        assert "changed after this STS read it" in alert.detail["reason"]
        # refused again later, without a second alert
        await add(store, 5, now=now)
        assert await writer.tick(store, ring, issuer=ISS, now=now + 3600) is None
        assert len(await chain_alerts(store)) == 1 and len(await checkpoints(store)) == 1

    with caplog.at_level(logging.ERROR, logger="tether.sts"):
        run_chain(kind, tmp_path, body)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == (["audit chain: record 8 changed after this STS read it (its hash differs); no checkpoint signed"]
                      if forged else [])  # fmt: skip


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("forged", [True, False], ids=["rewritten", "control"])
@pytest.mark.parametrize("tail", [2, 900], ids=["short", "pages"])
def test_a_restarted_writer_refuses_a_rewrite_under_the_last_checkpoint(kind: str, forged: bool, tail: int,
                                                                        tmp_path: Any, now: float) -> None:  # fmt: skip
    """A fresh process has read nothing: the signed checkpoint is what it checks against (found pages back)."""
    key = signing_key()
    ring = KeyRing([key])

    async def body(chain: Chain) -> None:
        store = chain.store
        assert await AuditCheckpoints(every=3, seconds=3600).tick(store, ring, issuer=ISS, now=now) is None
        await add(store, 3, now=now)
        assert (await AuditCheckpoints(every=3, seconds=3600).tick(store, ring, issuer=ISS, now=now)) is not None
        await add(store, tail, now=now)
        if forged:
            await rewrite(chain, 2)  # the checkpoint record (4) is re-hashed too; its signed claim is not
        restarted = AuditCheckpoints(every=1000, seconds=60)
        assert await restarted.tick(store, ring, issuer=ISS, now=now + 1) is None  # not due yet
        written = await restarted.tick(store, ring, issuer=ISS, now=now + 60)
        if not forged:
            assert written is not None and written.detail["seq"] == 4 + tail
            report = verify_export(await rows(store), keys={key.kid: key.public}, issuer=ISS)
            assert (report.checkpoints, report.signed_through, report.unsigned) == (2, 4 + tail, 0)
            return
        assert written is None and len(await checkpoints(store)) == 1
        (alert,) = await chain_alerts(store)
        assert alert.detail["evidence"]["seq"] == 3 and alert.detail["evidence"]["trusted"] == 3
        assert "not the record the last checkpoint vouched for" in alert.detail["reason"]

    run_chain(kind, tmp_path, body)


def test_other_writers_honour_the_alert_until_the_record_is_restored(tmp_path: Any, now: float,
                                                                     caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """B starts after the rewrite, so it never read the original: A's alert stops it. Once the
    record is restored, A (which started over after its refusal) signs again, and no new alert is raised."""
    key = signing_key()
    ring = KeyRing([key])

    async def body(chain: Chain) -> None:
        store = chain.store
        a = AuditCheckpoints(every=5, seconds=60)
        original = await rewritten_after_reading(chain, a, ring, now)
        assert await a.tick(store, ring, issuer=ISS, now=now + 1) is None  # A refuses and alerts
        (alert,) = await chain_alerts(store)
        b = AuditCheckpoints(every=5, seconds=60)
        with caplog.at_level(logging.ERROR, logger="tether.sts"):
            assert await b.tick(store, ring, issuer=ISS, now=now + 1 + CLAIM_SECONDS) is None  # A's claim expired
        assert caplog.messages[-1] == (f"audit chain: record 8 reported by the chain alert at record {alert.seq}, "
                                       "and not restored; no checkpoint signed")  # fmt: skip
        assert await chain_alerts(store) == [alert] and len(await checkpoints(store)) == 1
        # the operator restores the rewritten records (and re-links what was appended since)
        await restore(chain, original)
        assert verify_export(await rows(store), keys={key.kid: key.public}, issuer=ISS).signed_through == 5
        written = await a.tick(store, ring, issuer=ISS, now=now + 61)  # A retries, as B would
        assert written is not None and written.detail["seq"] == alert.seq
        report = verify_export(await rows(store), keys={key.kid: key.public}, issuer=ISS)
        assert (report.checkpoints, report.signed_through, report.unsigned) == (2, alert.seq, 0)
        assert len(await chain_alerts(store)) == 1

    run_chain("sqlite", tmp_path, body)


def test_a_forged_checkpoint_record_is_alerted_without_stopping_later_checkpoints(tmp_path: Any, now: float) -> None:
    """A record of kind ``audit.checkpoint`` signed by nobody the writer trusts is reported, not adopted."""
    key, stranger = signing_key(), signing_key()
    ring = KeyRing([key])

    async def body(chain: Chain) -> None:
        store = chain.store
        writer = AuditCheckpoints(every=5, seconds=3600)
        await first_checkpoint(store, writer, ring, now)
        await add(store, 2, now=now)
        seq, digest = await head(store)
        impostor = KeyRing([dataclasses.replace(stranger, kid=key.kid)])  # the writer's kid, another key
        jws = impostor.sign(checkpoint_claims(issuer=ISS, seq=seq, hash=digest, iat=int(now)), typ=CHECKPOINT_TYP)
        await store.append_audit(checkpoint_event(seq=seq, hash=digest, jws=jws), now=float(int(now)))
        await add(store, 4, now=now)
        assert await writer.tick(store, ring, issuer=ISS, now=now + 1) is None  # reads it, alerts; not due
        (alert,) = await chain_alerts(store)
        assert alert.detail["evidence"] == {"seq": 9, "trusted": 5}  # no hash: it names nothing to restore
        assert "is a checkpoint that does not verify" in alert.detail["reason"]
        await add(store, 1, now=now)
        written = await writer.tick(store, ring, issuer=ISS, now=now + 2)
        assert written is not None and written.kind == CHECKPOINT_KIND and written.detail["seq"] == written.seq - 1

    run_chain("sqlite", tmp_path, body)
