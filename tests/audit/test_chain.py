"""The audit hash chain (``tether.audit.chain``): SECURITY.md §4 "Audit", DESIGN "audit: append-only, hash-chained".

``first_broken`` must name the first record (in the order given) whose link or hash does not
verify, for any edit of any field, a deletion, a reordering or an insertion; an intact chain
verifies to ``None``.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.audit.chain import GENESIS, AuditEvent, AuditRecord, canonical, first_broken, link

TS = 1_700_000_000.25
N = 6
FIELDS = ["seq", "ts", "kind", "outcome", "principal", "task", "jti", "error", "detail", "prev", "hash"]


def events() -> list[AuditEvent]:
    return [
        AuditEvent(kind="task.create", outcome="ok", principal="spiffe://example.org/admin", task="task-1"),
        AuditEvent(
            kind="token.exchange",
            outcome="ok",
            principal="spiffe://example.org/agent",
            task="task-1",
            jti="j1",
            detail={"aud": "https://b.example", "scope": ["wiki:read"]},
        ),
        AuditEvent(
            kind="token.exchange",
            outcome="denied",
            principal="spiffe://example.org/agent",
            task="task-1",
            error="invalid_scope",
            detail={"requested": ["admin"]},
        ),
        AuditEvent(
            kind="token.exchange",
            outcome="ok",
            principal="spiffe://example.org/svc/b",
            task="task-1",
            jti="j2",
            detail={"act": {"sub": "spiffe://example.org/svc/b"}, "depth": 1},
        ),
        AuditEvent(kind="dpop.replay", outcome="denied", error="invalid_dpop_proof", detail={"jkt": "abc"}),
        AuditEvent(kind="task.complete", outcome="ok", principal="spiffe://example.org/agent", task="task-1"),
    ]


def build_chain(evs: list[AuditEvent] | None = None, *, first_seq: int = 1, prev: str = GENESIS) -> list[AuditRecord]:
    records: list[AuditRecord] = []
    for i, event in enumerate(evs or events()):
        record = link(event, seq=first_seq + i, ts=TS + i, prev=prev)
        records.append(record)
        prev = record.hash
    return records


def as_rows(records: list[AuditRecord]) -> list[dict[str, Any]]:
    return [r.as_json() for r in records]


@pytest.fixture
def rows() -> list[dict[str, Any]]:
    rows = as_rows(build_chain())
    assert first_broken(rows) is None  # positive control for every test using the fixture
    return rows


def _changed(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return "x"
    if isinstance(value, int):
        return value + 1000
    if isinstance(value, float):
        return value + 0.000001
    if isinstance(value, str):
        return value + "x" if value else "x"
    if isinstance(value, dict):
        return {**value, "injected": True}
    raise AssertionError(type(value))


# ---------------------------------------------------------------------------------------------
# intact chains
# ---------------------------------------------------------------------------------------------


def test_intact_chain_verifies(rows: list[dict[str, Any]]) -> None:
    assert first_broken(rows) is None
    assert first_broken([]) is None
    assert rows[0]["prev"] == GENESIS
    assert all(rows[i]["prev"] == rows[i - 1]["hash"] for i in range(1, N))


def test_hash_is_sha256_of_canonical_body() -> None:
    record = build_chain()[0]
    assert record.hash == hashlib.sha256(canonical(record.body())).hexdigest()
    assert len(record.hash) == 64


def test_link_is_deterministic_and_commits_to_prev() -> None:
    event = events()[1]
    a = link(event, seq=1, ts=TS, prev=GENESIS)
    assert link(event, seq=1, ts=TS, prev=GENESIS) == a
    assert link(event, seq=1, ts=TS, prev="1" * 64).hash != a.hash


def test_suffix_verifies_from_its_start_prev(rows: list[dict[str, Any]]) -> None:
    assert first_broken(rows[3:], start_prev=rows[2]["hash"]) is None
    assert first_broken(rows[3:]) == rows[3]["seq"]


def test_chain_starting_at_later_seq_verifies() -> None:
    assert first_broken(as_rows(build_chain(first_seq=100))) is None


def test_detail_canonicalised_in_link() -> None:
    a = link(AuditEvent(kind="k", outcome="ok", detail={"b": 1, "a": [1, 2]}), seq=1, ts=TS, prev=GENESIS)
    b = link(AuditEvent(kind="k", outcome="ok", detail={"a": [1, 2], "b": 1}), seq=1, ts=TS, prev=GENESIS)
    assert a.hash == b.hash


# ---------------------------------------------------------------------------------------------
# edits of any field of any record
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(N))
@pytest.mark.parametrize("field", FIELDS)
def test_edit_of_any_field_detected_at_that_record(rows: list[dict[str, Any]], index: int, field: str) -> None:
    tampered = copy.deepcopy(rows)
    tampered[index][field] = _changed(tampered[index][field])
    assert tampered[index] != rows[index]
    # the first record that fails is the edited one, reported by the seq it carries
    assert first_broken(tampered) == tampered[index]["seq"]


@pytest.mark.parametrize("index", range(N))
def test_edit_inside_nested_detail_detected(rows: list[dict[str, Any]], index: int) -> None:
    tampered = copy.deepcopy(rows)
    tampered[index]["detail"] = {**tampered[index]["detail"], "scope": ["admin"]}
    assert first_broken(tampered) == rows[index]["seq"]


@pytest.mark.parametrize("index", range(N))
def test_field_removed_detected(rows: list[dict[str, Any]], index: int) -> None:
    tampered = copy.deepcopy(rows)
    field = "principal" if tampered[index]["principal"] is not None else "kind"
    del tampered[index][field]
    assert first_broken(tampered) == rows[index]["seq"]


@pytest.mark.parametrize("value", ["3", 3.0, None, True], ids=repr)
def test_seq_of_wrong_type_detected(rows: list[dict[str, Any]], value: object) -> None:
    tampered = copy.deepcopy(rows)
    tampered[2]["seq"] = value
    result = first_broken(tampered)
    assert result is not None
    assert result not in (rows[0]["seq"], rows[1]["seq"])


def test_edit_with_recomputed_hash_detected_at_next_record(rows: list[dict[str, Any]]) -> None:
    """An attacker who rehashes the edited record still breaks the next record's ``prev``."""
    tampered = copy.deepcopy(rows)
    body = {k: tampered[2][k] for k in FIELDS if k != "hash"}
    body["outcome"] = "ok"
    tampered[2] = {**body, "hash": hashlib.sha256(canonical(body)).hexdigest()}
    assert first_broken(tampered) == rows[3]["seq"]


def test_rewriting_the_whole_tail_changes_the_head_hash(rows: list[dict[str, Any]]) -> None:
    """Rechaining everything after an edit verifies, but the head no longer matches a checkpoint of the original."""
    evs = events()
    evs[2] = AuditEvent(kind="token.exchange", outcome="ok", principal=evs[2].principal, task="task-1")
    forged = as_rows(build_chain(evs))
    assert first_broken(forged) is None
    assert forged[-1]["hash"] != rows[-1]["hash"]
    assert forged[:2] == rows[:2]


# ---------------------------------------------------------------------------------------------
# deletion, reordering, insertion
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(N - 1))
def test_deletion_detected_at_the_next_record(rows: list[dict[str, Any]], index: int) -> None:
    tampered = rows[:index] + rows[index + 1 :]
    assert first_broken(tampered) == rows[index + 1]["seq"]


def test_deleting_several_records_detected(rows: list[dict[str, Any]]) -> None:
    assert first_broken(rows[:1] + rows[4:]) == rows[4]["seq"]


@pytest.mark.parametrize("index", range(N - 1))
def test_swap_of_neighbours_detected(rows: list[dict[str, Any]], index: int) -> None:
    tampered = list(rows)
    tampered[index], tampered[index + 1] = tampered[index + 1], tampered[index]
    assert first_broken(tampered) == tampered[index]["seq"]


def test_reversed_chain_detected(rows: list[dict[str, Any]]) -> None:
    assert first_broken(list(reversed(rows))) == rows[-1]["seq"]


@pytest.mark.parametrize("index", range(1, N))
def test_insertion_of_a_well_linked_forgery_detected(rows: list[dict[str, Any]], index: int) -> None:
    """A forged record linked to its predecessor with the next seq pushes the original record out of line."""
    forged = link(
        AuditEvent(kind="token.exchange", outcome="ok", jti="forged"),
        seq=rows[index - 1]["seq"] + 1,
        ts=TS + 100,
        prev=rows[index - 1]["hash"],
    ).as_json()
    assert first_broken([*rows[:index], forged]) is None  # the forgery itself is well-formed
    tampered = [*rows[:index], forged, *rows[index:]]
    assert first_broken(tampered) == rows[index]["seq"]


@pytest.mark.parametrize("index", range(N))
def test_insertion_of_a_badly_linked_record_detected(rows: list[dict[str, Any]], index: int) -> None:
    junk = link(AuditEvent(kind="x", outcome="ok"), seq=99, ts=TS, prev="f" * 64).as_json()
    tampered = [*rows[:index], junk, *rows[index:]]
    assert first_broken(tampered) == 99


def test_duplicated_record_detected(rows: list[dict[str, Any]]) -> None:
    tampered = [*rows[:3], rows[2], *rows[3:]]
    assert first_broken(tampered) == rows[2]["seq"]


def test_record_from_another_chain_detected(rows: list[dict[str, Any]]) -> None:
    other = as_rows(build_chain(list(reversed(events()))))
    tampered = [*rows[:2], other[2], *rows[3:]]
    assert first_broken(tampered) == rows[2]["seq"]


_TEXT = st.one_of(st.none(), st.text(max_size=40))  # any code point: quotes, controls, non-ASCII, surrogates


@settings(max_examples=300, deadline=None)
@given(_TEXT, _TEXT, _TEXT, _TEXT, st.text(max_size=20), st.floats(min_value=0, max_value=4e9), st.integers(1, 2**40))
def test_link_hash_is_the_canonical_body_for_any_text(
    principal: str | None, task: str | None, jti: str | None, error: str | None, kind: str, ts: float, seq: int
) -> None:
    """``link`` assembles the hashed text itself (fast); it must be exactly ``canonical(body)``."""
    event = AuditEvent(kind=kind, outcome="ok", principal=principal, task=task, jti=jti, error=error, detail={"k": kind})
    record = link(event, seq=seq, ts=ts, prev=GENESIS)
    assert record.hash == hashlib.sha256(canonical(record.body())).hexdigest()
    assert first_broken([record.as_json()]) is None
