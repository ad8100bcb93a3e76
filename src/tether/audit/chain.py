"""The audit hash chain: each record commits to the one before it (tamper evidence).

``hash = SHA-256(canonical JSON of the record with ``prev``)``, where ``prev`` is the
previous record's hash (64 zeros for the first). Editing, deleting or reordering any
record breaks every link after it, and ``first_broken`` names the first one. Records
hold jtis and hashes, never token or secret values.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
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
    #: the canonical JSON of ``detail`` exactly as hashed (kept so a store writes what was hashed)
    detail_json: str = field(default="", compare=False, repr=False)

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


#: ``json.dumps(…, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``, built once:
#: ``json.dumps`` with any non-default argument builds a new encoder on every call
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def canonical(value: Any) -> bytes:
    return _CANONICAL.encode(value).encode()


def _dump(value: Any) -> str:
    """``json.dumps(value, ensure_ascii=True)``, with the C string encoder called directly for
    the strings and ``None`` that make up a record (eight per record, on every issuance)."""
    if value is None:
        return "null"
    if type(value) is str:
        return encode_basestring_ascii(value)
    return json.dumps(value, ensure_ascii=True)


def link(event: AuditEvent, *, seq: int, ts: float, prev: str) -> AuditRecord:
    """Place ``event`` after the record whose hash is ``prev``.

    The hashed text is exactly ``canonical(record.body())`` (which ``first_broken``
    recomputes); it is assembled from the canonical ``detail`` so the detail is
    serialised once, on the hot path of every issuance.
    """
    detail_json = canonical(dict(event.detail)).decode()
    rounded = round(float(ts), 6)
    body_json = (
        f'{{"detail":{detail_json},"error":{_dump(event.error)},"jti":{_dump(event.jti)},"kind":{_dump(event.kind)},'
        f'"outcome":{_dump(event.outcome)},"prev":{_dump(prev)},"principal":{_dump(event.principal)},'
        f'"seq":{int(seq)},"task":{_dump(event.task)},"ts":{_dump(rounded)}}}'
    )
    return AuditRecord(
        seq=seq,
        ts=rounded,
        kind=event.kind,
        outcome=event.outcome,
        principal=event.principal,
        task=event.task,
        jti=event.jti,
        error=event.error,
        detail=json.loads(detail_json),
        prev=prev,
        hash=hashlib.sha256(body_json.encode()).hexdigest(),
        detail_json=detail_json,
    )


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
