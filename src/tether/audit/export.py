"""Offline verification of an exported audit log: every link and hash, every checkpoint.

``verify_export`` checks each record's link and hash, each checkpoint record and the record it
names, the chain of checkpoints and the stretches between them (``tether.audit.coverage``), and
raises ``ExportBroken`` at the first bad one. A checkpoint signed by a key missing from the JWKS
passes only when a later valid checkpoint covers it, and ends no stretch. An export cut just
after a checkpoint looks like a shorter log; only ``expect_head`` (from an earlier export)
tells. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tether.audit import checkpoint
from tether.audit.chain import GENESIS
from tether.audit.coverage import Position, Stretch, Stretches, chain_problem
from tether.rules.jws import PublicKey

__all__ = ["ExportBroken", "ExportReport", "verify_export"]


@dataclass(frozen=True)
class ExportReport:
    """What an intact export proves; ``signed_through`` is the newest record a valid checkpoint vouches for."""

    records: int
    first: int | None
    head: tuple[int, str] | None
    signatures_checked: bool
    signed_through: int | None = None
    checkpoints: int = 0
    #: checkpoints signed by keys not in the JWKS, vouched for by a later valid checkpoint
    superseded: int = 0
    #: records after ``signed_through`` that are not themselves valid checkpoints
    unsigned: int = 0
    issuer: str | None = None
    #: the stretch between checkpoints with the most records
    longest: Stretch | None = None
    #: the first stretch with more than ``every`` records appended long before its checkpoint
    overdue: Stretch | None = None


class ExportBroken(Exception):
    """The first record of an export that does not verify, and why."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"audit chain broken at record {seq}: {reason}")
        self.seq = seq
        self.reason = reason


def _covered(cp: checkpoint.Checkpoint, hashes: Mapping[int, str]) -> int | None:
    """The seq that a verified checkpoint vouches for in this export (None: before the export starts)."""
    known = hashes.get(cp.seq)
    if known is None:
        return None
    if known != cp.hash:
        raise checkpoint.CheckpointError(f"checkpoint does not match record {cp.seq}: a record up to it was changed")
    return cp.seq


class _Tally:
    """What the checkpoints of an export vouch for, read in order (``verify_export``)."""

    def __init__(self, *, after: int, every: int | None) -> None:
        self.after = after
        self.pending: list[tuple[int, str]] = []  # (seq, kid) of checkpoints signed by keys not given
        self.valid: list[int] = []
        self.signed: int | None = None
        self.superseded = 0
        self.before: Position | None = None  # the last checkpoint record so far
        self.chained = False  # an earlier valid checkpoint named the one before it
        self.stretches = Stretches(after=after, every=every)

    def checkpoint(self, raw: Mapping[str, Any], cp: checkpoint.Checkpoint, hashes: Mapping[int, str]) -> None:
        """A checkpoint record whose signature verified; raises ``CheckpointError`` if it vouches for nothing here."""
        covered = _covered(cp, hashes)
        problem = chain_problem(cp.prev, chained=cp.chained, before=self.before, after=self.after,
                                seen_chained=self.chained)  # fmt: skip
        if problem is not None:
            raise checkpoint.CheckpointError(problem)
        seq = int(raw["seq"])
        self.chained = self.chained or cp.chained
        self.valid.append(seq)
        self.stretches.close(checkpoint=seq, names=cp.seq, iat=cp.iat)
        if covered is not None and (self.signed is None or covered > self.signed):
            self.signed = covered
            self.superseded += sum(1 for s, _ in self.pending if s <= covered)
            self.pending = [(s, kid) for s, kid in self.pending if s > covered]


def verify_export(
    records: Iterable[Mapping[str, Any]],
    *,
    keys: Mapping[str, PublicKey] | None,
    issuer: str | None = None,
    after: int = 0,
    after_hash: str | None = None,
    expect_head: tuple[int, str] | None = None,
    every: int | None = None,
) -> ExportReport:
    """Verify an exported log (records in order); raise ``ExportBroken`` at the first bad record.

    ``after``/``after_hash`` say where the export starts. By default it starts at the
    genesis. With ``after`` but no hash, the first record's ``prev`` is taken as given
    (unanchored). With ``keys=None`` only the chain is checked. ``issuer`` pins ``iss``;
    without it every checkpoint must name the same issuer as the first one.
    ``expect_head`` is a record the export must contain, with that hash (truncation).
    ``every`` is the writer's ``checkpoint_every``: a stretch with more late records is
    reported as ``overdue`` (``tether.audit.coverage``).
    """
    prev: str | None = GENESIS if after == 0 else after_hash
    expected, issuer_seen = after + 1, issuer
    hashes: dict[int, str] = {}
    tally = _Tally(after=after, every=every)
    count = 0
    last: tuple[int, str] | None = None
    for raw in records:
        reason = checkpoint.link_problem(raw, expected=expected, prev=prev)
        if reason is not None:
            seq = raw.get("seq")
            raise ExportBroken(seq if type(seq) is int else expected, reason)
        seq, digest = int(raw["seq"]), str(raw["hash"])
        hashes.setdefault(seq - 1, str(raw.get("prev")))  # bound by this record's hash
        if keys is not None and raw.get("kind") != checkpoint.CHECKPOINT_KIND:
            tally.stretches.add(seq, raw.get("ts"))
        elif keys is not None:
            try:
                cp = checkpoint.verify_checkpoint_record(raw, keys=keys, issuer=issuer_seen)
                tally.checkpoint(raw, cp, hashes)
            except checkpoint.UnknownKey as exc:
                tally.pending.append((seq, exc.kid))
            except checkpoint.CheckpointError as exc:
                raise ExportBroken(seq, str(exc)) from None
            else:
                issuer_seen = cp.iss
            tally.before = (seq, digest)
        hashes[seq], prev, expected, last = digest, digest, seq + 1, (seq, digest)
        count += 1
    problems = [(s, str(checkpoint.UnknownKey(kid))) for s, kid in tally.pending[:1]]
    if expect_head is not None:
        want, want_hash = expect_head
        if last is None or want > last[0]:
            end = last[0] if last else after
            problems.append((end + 1, f"missing: the export ends at record {end}, the expected head is record {want}"))
        elif hashes.get(want) is None:
            problems.append((want, "the expected head is before the start of the export"))
        elif hashes[want] != want_hash:
            problems.append((want, "hash differs from the expected head"))
    if problems:
        raise ExportBroken(*min(problems))
    signed = tally.signed
    floor = after if signed is None else signed
    unsigned = (last[0] - floor if last else 0) - sum(1 for v in tally.valid if v > floor)
    return ExportReport(
        records=count,
        first=after + 1 if count else None,
        head=last,
        signatures_checked=keys is not None,
        signed_through=signed,
        checkpoints=len(tally.valid),
        superseded=tally.superseded,
        unsigned=max(unsigned, 0) if keys is not None else count,
        issuer=issuer_seen,
        longest=tally.stretches.longest,
        overdue=tally.stretches.overdue,
    )
