"""``tether.audit.relink``: what the checkpoint writer checks before it signs (pure, no store).

Each refusal has a positive control on the same chain: the intact chain, read in pages
from the trusted position, re-links; a changed record, a record whose hash differs from
the one read earlier, a missing head and a chain alert that still applies do not.
"""

from __future__ import annotations

from typing import Any

import pytest

from tether.audit.chain import GENESIS, AuditEvent, link
from tether.audit.relink import CHAIN_DETECTOR, Broken, Relink


def chain(n: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    prev = GENESIS
    for seq in range(1, n + 1):
        rows.append(link(AuditEvent(kind="token.issued", outcome="ok", jti=f"j{seq}"), seq=seq, ts=1000.0 + seq,
                         prev=prev).as_json())  # fmt: skip
        prev = rows[-1]["hash"]
    return rows


def append(rows: list[dict[str, Any]], event: AuditEvent) -> list[dict[str, Any]]:
    last = rows[-1]
    return [*rows, link(event, seq=last["seq"] + 1, ts=last["ts"] + 1, prev=last["hash"]).as_json()]


def relink(rows: list[dict[str, Any]], *, trusted: tuple[int, str | None], known: dict[int, str] | None = None,
           page: int = 3) -> Broken | None:  # fmt: skip
    """Feed the rows from the trusted one on, in pages, as the writer reads them."""
    checker = Relink(trusted=trusted, known=known or {})
    todo = [r for r in rows if r["seq"] > checker.after]
    for i in range(0, len(todo), page):
        broken = checker.page(todo[i : i + page])
        if broken is not None:
            return broken
    return checker.finish((rows[-1]["seq"], rows[-1]["hash"]))


def test_an_intact_chain_relinks_from_the_genesis_or_a_checkpointed_record() -> None:
    rows = chain(10)
    assert relink(rows, trusted=(0, GENESIS)) is None
    assert relink(rows, trusted=(4, rows[3]["hash"]), known={r["seq"]: r["hash"] for r in rows}) is None
    assert relink(rows, trusted=(7, None)) is None  # taken as given: its prev is not checked


def test_a_record_rewritten_and_rehashed_under_the_trusted_one_is_refused() -> None:
    rows = chain(10)
    signed = rows[3]["hash"]
    forged = append(chain(3), AuditEvent(kind="token.issued", outcome="ok", jti="forged"))
    for row in rows[4:]:
        forged = append(forged, AuditEvent(kind=row["kind"], outcome=row["outcome"], jti=row["jti"]))
    assert relink(forged, trusted=(0, GENESIS)) is None  # consistent in itself
    assert relink(forged, trusted=(4, signed)) == Broken(
        4, forged[3]["hash"], "not the record the last checkpoint vouched for (its hash differs)"
    )


def test_a_record_whose_hash_differs_from_the_one_read_earlier_is_refused() -> None:
    rows = chain(10)
    known = {r["seq"]: r["hash"] for r in rows}
    known[8] = "f" * 64
    assert relink(rows, trusted=(4, rows[3]["hash"]), known=known) == Broken(
        8, rows[7]["hash"], "changed after this STS read it (its hash differs)"
    )


@pytest.mark.parametrize(
    ("index", "reason"),
    [(6, "hash does not match its contents"), (None, "out of order, expected record 7 (records missing, moved or inserted)")],
)
def test_an_edited_or_removed_record_is_refused_where_it_is(index: int | None, reason: str) -> None:
    rows = chain(10)
    if index is None:
        del rows[6]
        where = 8
    else:
        rows[index] = {**rows[index], "jti": "edited"}
        where = 7
    broken = relink(rows, trusted=(4, rows[3]["hash"]))
    assert broken is not None and (broken.seq, broken.reason) == (where, reason)


def test_a_missing_head_is_refused() -> None:
    rows = chain(10)
    checker = Relink(trusted=(0, GENESIS), known={})
    assert checker.page(rows[:8]) is None
    assert checker.finish((10, rows[9]["hash"])) == Broken(10, None, "missing: the chain ends at record 8")
    assert checker.page(rows[8:]) is None and checker.finish((10, rows[9]["hash"])) is None


def alert(seq: int, digest: str) -> AuditEvent:
    evidence = {"seq": seq, "hash": digest, "trusted": 0}
    return AuditEvent(kind="alert.raised", outcome="alert", principal="monitor",
                      detail={"detector": CHAIN_DETECTOR, "evidence": evidence})  # fmt: skip


def test_a_chain_alert_stops_a_writer_that_never_read_the_original_until_the_record_changes() -> None:
    rows = chain(6)
    flagged = append(rows, alert(5, rows[4]["hash"]))
    assert relink(flagged, trusted=(0, GENESIS)) == Broken(
        5, rows[4]["hash"], "reported by the chain alert at record 7, and not restored", alert=7
    )
    restored = append(rows, alert(5, "e" * 64))  # the record no longer has the hash the alert found
    assert relink(restored, trusted=(0, GENESIS)) is None
    # an alert of another detector, or one naming no hash, stops nothing
    other = append(rows, AuditEvent(kind="alert.raised", outcome="alert", detail={"detector": "new_audience",
                                                                                 "evidence": {"seq": 5}}))  # fmt: skip
    assert relink(other, trusted=(0, GENESIS)) is None
