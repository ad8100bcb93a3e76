"""The overview's store reads on a real store: the feed's newest entry and refusal counting windows."""

from __future__ import annotations

from pathlib import Path

import pytest
from pageskit import with_store

from helpers import make_deployment
from tether.audit.chain import AuditEvent
from tether.console.pages import overview
from tether.console.pages.overview import count_refusals, feed_head
from tether.model import Task, TaskState
from tether.monitor.cursor import head_seq
from tether.store.protocol import Store

NOW = 1_900_000_000.0


def _task(i: int, *, expires: int) -> Task:
    return Task(id=f"tsk_feed{i:03d}", agent="spiffe://tether.local/agent/x", audiences=("http://b",),
                scopes=frozenset({"r"}), created_at=int(NOW) - 100, expires_at=expires, max_depth=2, max_tokens=5)  # fmt: skip


def test_feed_head_finds_the_newest_live_entry_among_many(tmp_path: Path) -> None:
    config = make_deployment(tmp_path)

    async def run(store: Store) -> tuple[int | None, int | None, float | None, int]:
        empty = await feed_head(store, now=NOW)
        assert empty.newest is None and empty.age is None
        for i in range(37):  # each ended task is one feed entry
            await store.create_task(_task(i, expires=int(NOW) + 600), AuditEvent(kind="task.created", outcome="ok"))
            await store.end_task(f"tsk_feed{i:03d}", TaskState.COMPLETED, now=NOW - 37 + i,
                                 audit=AuditEvent(kind="task.completed", outcome="ok"))  # fmt: skip
        entries = await store.revocations_after(0, now=NOW, limit=1000)
        head = await feed_head(store, now=NOW)
        assert head.newest is not None
        return entries[-1].seq, head.newest.seq, head.age, len(entries)

    expected, found, age, count = with_store(config, run)
    assert count == 37 and found == expected and age == 1.0


def test_refusals_window_counts_summaries_and_says_when_partial(tmp_path: Path) -> None:
    config = make_deployment(tmp_path)

    async def run(store: Store) -> tuple[overview.Refusals, overview.Refusals, overview.Refusals]:
        for _ in range(3):
            await store.append_audit(AuditEvent(kind="token.refused", outcome="refused", error="invalid_grant"), now=NOW)
        summary = AuditEvent(kind="token.refused", outcome="refused", error="invalid_target",
                             detail={"aggregated": 4, "reason": "repeated refusals, counted"})  # fmt: skip
        await store.append_audit(summary, now=NOW)
        forged = AuditEvent(kind="token.refused", outcome="refused", error="invalid_target", detail={"aggregated": True})
        await store.append_audit(forged, now=NOW)  # not a count: one refusal
        await store.append_audit(AuditEvent(kind="token.issued", outcome="ok"), now=NOW)
        head = await head_seq(store)
        whole = await count_refusals(store, after=0, head=head)
        later = await count_refusals(store, after=head - 3, head=head)  # the summary, the forged one, the issuance
        return whole, later, await count_refusals(store, after=head, head=head)

    whole, later, nothing = with_store(config, run)
    assert dict(whole.by_error)["invalid_grant"] >= 3
    assert dict(whole.by_error)["invalid_target"] == 5 and not whole.partial
    assert later.by_error == [("invalid_target", 5)] and later.total == 5
    assert nothing.total == 0 and nothing.by_error == []


def test_refusals_window_is_bounded_by_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_deployment(tmp_path)
    monkeypatch.setattr(overview, "SCAN", 5)

    async def run(store: Store) -> overview.Refusals:
        for _ in range(12):
            await store.append_audit(AuditEvent(kind="x.refused", outcome="refused", error="access_denied"), now=NOW)
        return await count_refusals(store, after=0, head=await head_seq(store))

    bounded = with_store(config, run)
    assert bounded.partial and dict(bounded.by_error)["access_denied"] == 5
