"""Re-linking the records a checkpoint is about to vouch for, and the checkpoints that lead to it.

A database writer who rewrites a record and re-hashes the rest leaves a chain consistent from
there on, which a signer trusting the stored head would vouch for. So ``Relink`` re-checks the
records from a trusted position (named by a checkpoint the writer signed or verified): each
continues the chain, each it read before keeps the hash it read, and no chain alert in the
range still applies (a writer that never read the originals defers to one that did). ``Lineage``
follows ``prev`` back to the checkpoint the writer saved outside the store. Pure:
``tether.sts.checkpoints`` does the reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tether.audit.chain import GENESIS
from tether.audit.checkpoint import CHECKPOINT_KIND, link_problem
from tether.audit.coverage import Position, parse_position

__all__ = ["CHAIN_DETECTOR", "Broken", "Lineage", "Relink", "saved_problem"]

#: the ``detector`` of the alert a checkpoint writer raises when it refuses to sign
CHAIN_DETECTOR = "audit_chain"
_CHANGED = "changed after this STS read it (its hash differs)"


@dataclass(frozen=True)
class Broken:
    """Where the chain stops verifying: the record, the hash it holds now (None: missing), and why."""

    seq: int
    hash: str | None
    reason: str
    #: the seq of the chain alert that already reported this (no second alert)
    alert: int | None = None


def _chain_alert(raw: Mapping[str, Any]) -> tuple[int, str] | None:
    """The (seq, hash) a chain alert names, if ``raw`` is one."""
    detail = raw.get("detail")
    if raw.get("kind") != "alert.raised" or not isinstance(detail, Mapping) or detail.get("detector") != CHAIN_DETECTOR:
        return None
    evidence = detail.get("evidence")
    if not isinstance(evidence, Mapping):
        return None
    seq, digest = evidence.get("seq"), evidence.get("hash")
    return (seq, digest) if type(seq) is int and isinstance(digest, str) else None


class Relink:
    """Follow the chain from ``trusted`` = (seq, hash); read records from that record on.

    A trusted seq of 0 is the genesis (read from record 1). A hash of ``None`` takes the
    record as given: its ``prev`` is not checked (a bounded re-read that starts after the
    last checkpoint it could verify).
    """

    def __init__(self, *, trusted: tuple[int, str | None], known: Mapping[int, str]) -> None:
        self.trusted = trusted
        self.known = known
        self.expected = max(trusted[0], 1)
        self.prev: str | None = GENESIS if trusted[0] == 0 else None
        self.head: tuple[int, str] | None = None
        self._hashes: dict[int, str] = {}
        self._alerts: list[tuple[int, str, int]] = []

    @property
    def after(self) -> int:
        """Where the next read starts (``Store.audit_records(after=...)``)."""
        return self.expected - 1

    def page(self, records: Iterable[Mapping[str, Any]]) -> Broken | None:
        """Check the next records in chain order; the first that does not verify, else None."""
        for raw in records:
            seq, digest = raw.get("seq"), raw.get("hash")
            found = digest if isinstance(digest, str) else None
            problem = link_problem(raw, expected=self.expected, prev=self.prev)
            if problem is not None:
                return Broken(seq if type(seq) is int else self.expected, found, problem)
            assert type(seq) is int and found is not None  # link_problem checked both
            if seq == self.trusted[0] and self.trusted[1] not in (None, found):
                return Broken(seq, found, "not the record the last checkpoint vouched for (its hash differs)")
            if self.known.get(seq, found) != found:
                return Broken(seq, found, _CHANGED)
            named = _chain_alert(raw)
            if named is not None:
                self._alerts.append((*named, seq))
            self._hashes[seq], self.prev, self.expected, self.head = found, found, seq + 1, (seq, found)
        return None

    def finish(self, head: tuple[int, str]) -> Broken | None:
        """After the last page: the records read end at ``head``, and no chain alert still applies."""
        if self.head is None or self.head[0] < head[0]:
            end = self.head[0] if self.head else self.expected - 1
            return Broken(head[0], None, f"missing: the chain ends at record {end}")
        if self.head != head:
            return Broken(head[0], self.head[1], _CHANGED)
        for seq, digest, alert in self._alerts:
            if self._hashes.get(seq) == digest:
                return Broken(seq, digest, f"reported by the chain alert at record {alert}, and not restored", alert=alert)
        return None


def _as_read(raw: Mapping[str, Any] | None, seq: int) -> tuple[str | None, str | None]:
    """The hash of the record read at ``seq`` (None: missing), and why it is not that record intact."""
    if raw is None:
        return None, "is missing"
    digest = raw.get("hash")
    return (digest if isinstance(digest, str) else None), link_problem(raw, expected=seq, prev=None)


def saved_problem(raw: Mapping[str, Any] | None, saved: Position) -> Broken | None:
    """Whether ``raw``, read at the seq of the checkpoint this STS signed last, is still that record."""
    found, problem = _as_read(raw, saved[0])
    if problem is not None:
        return Broken(saved[0], found, f"{problem}, and it is the checkpoint this STS signed last")
    if found != saved[1]:
        return Broken(saved[0], found, "is no longer the checkpoint this STS signed last (its hash differs)")
    return None


class Lineage:
    """Follow the chain of checkpoints back from ``top`` to ``target`` = (seq, hash), one record per step.

    ``top`` is the newest checkpoint record whose signature verified; its ``prev`` names
    the checkpoint record before it, whose hash then vouches for its own ``prev``, and so
    on. ``target`` is the last checkpoint this STS signed (or one it already followed back
    to it): the chain must reach it exactly.
    """

    def __init__(self, *, top: Position, target: Position) -> None:
        self.target = target
        self.hops = 0
        #: the record to read next (None: done) and the hash it must have
        self.next: Position | None = top if top[0] > target[0] else None

    def step(self, raw: Mapping[str, Any] | None) -> Broken | None:
        """Check the record read at ``next``; the problem if the chain does not lead back to ``target``."""
        assert self.next is not None
        seq, want = self.next
        found, problem = _as_read(raw, seq)
        if problem is not None:
            return Broken(seq, found, problem)
        assert raw is not None and found is not None
        self.hops += 1
        if seq == self.target[0] and found != self.target[1]:
            return Broken(seq, found, "is no longer the checkpoint this STS last checked (its hash differs)")
        if found != want:
            return Broken(seq, found, "is not the checkpoint record the next checkpoint names (its hash differs)")
        if seq == self.target[0]:
            self.next = None
            return None
        detail = raw.get("detail")
        try:
            prev = parse_position(detail.get("prev") if isinstance(detail, Mapping) else None)
        except ValueError:
            prev = None
        t = self.target[0]
        if raw.get("kind") != CHECKPOINT_KIND or prev is None or prev[0] >= seq:
            return Broken(seq, found, f"names no checkpoint before it: the chain of checkpoints does not lead back "
                                      f"to record {t}, the checkpoint this STS last checked")  # fmt: skip
        if prev[0] < t:
            return Broken(seq, found, f"names record {prev[0]} as the checkpoint before it: the chain of checkpoints "
                                      f"skips record {t}, the checkpoint this STS last checked")  # fmt: skip
        self.next = prev
        return None
