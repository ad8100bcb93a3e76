"""The audit hash chain: each record commits to the one before it (tamper evidence).

``hash = SHA-256(canonical JSON of the record with ``prev``)``, where ``prev`` is the
previous record's hash (64 zeros for the first). Editing, deleting or reordering any
record breaks every link after it, and ``first_broken`` names the first one. Records
hold jtis and hashes, never token or secret values (BCP-13).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GENESIS", "AuditEvent", "AuditRecord", "canonical", "first_broken", "link"]

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditEvent:
    """What happened, before it is placed in the chain."""

    kind: str
    outcome: str
    principal: str | None = None
    task: str | None = None
    jti: str | None = None
    error: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    ts: float
    kind: str
    outcome: str
    principal: str | None
    task: str | None
    jti: str | None
    error: str | None
    detail: Mapping[str, Any]
    prev: str
    hash: str

    def body(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "kind": self.kind,
            "outcome": self.outcome,
            "principal": self.principal,
            "task": self.task,
            "jti": self.jti,
            "error": self.error,
            "detail": dict(self.detail),
            "prev": self.prev,
        }

    def as_json(self) -> dict[str, Any]:
        return {**self.body(), "hash": self.hash}


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def link(event: AuditEvent, *, seq: int, ts: float, prev: str) -> AuditRecord:
    """Place ``event`` after the record whose hash is ``prev``."""
    draft = AuditRecord(
        seq=seq,
        ts=round(float(ts), 6),
        kind=event.kind,
        outcome=event.outcome,
        principal=event.principal,
        task=event.task,
        jti=event.jti,
        error=event.error,
        detail=json.loads(canonical(dict(event.detail))),
        prev=prev,
        hash="",
    )
    digest = hashlib.sha256(canonical(draft.body())).hexdigest()
    return AuditRecord(**{**draft.__dict__, "hash": digest})


def first_broken(records: Iterable[Mapping[str, Any]], *, start_prev: str = GENESIS) -> int | None:
    """The ``seq`` of the first record whose link or hash does not verify, else ``None``."""
    prev = start_prev
    expected_seq: int | None = None
    for raw in records:
        seq = raw.get("seq")
        body = {k: raw.get(k) for k in ("seq", "ts", "kind", "outcome", "principal", "task", "jti", "error", "detail", "prev")}
        if isinstance(seq, bool) or not isinstance(seq, int):
            return expected_seq if expected_seq is not None else -1
        if expected_seq is not None and seq != expected_seq:
            return seq
        if raw.get("prev") != prev or hashlib.sha256(canonical(body)).hexdigest() != raw.get("hash"):
            return seq
        prev = str(raw["hash"])
        expected_seq = seq + 1
    return None
