"""What the checkpoints of an audit log cover: the chain of checkpoints, and the stretches between them.

To hide a rewrite under a checkpoint, a database writer must turn that checkpoint and every
later one into ordinary records. Each checkpoint names the checkpoint record before it
(``prev``), so one removed under a later one breaks the chain there (``chain_problem``); a
checkpoint from before ``prev`` existed passes only before the first that has it. The STS signs
once ``checkpoint_every`` records are pending, so a stretch holding more, appended over
``GRACE_SECONDS`` before its closing checkpoint, shows a removal (``Stretch.late``). Only a
checkpoint whose signature verifies ends a stretch. Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["GRACE_SECONDS", "Position", "Stretch", "Stretches", "chain_problem", "parse_position", "position_json"]

#: records appended this close to a checkpoint may postdate the count that made it due
GRACE_SECONDS = 10
#: a record of the chain: its seq and hash
Position = tuple[int, str]
_HASH = re.compile(r"[0-9a-f]{64}")


def parse_position(value: object) -> Position | None:
    """``{"seq": N, "hash": H}`` as a position, ``null`` as None; anything else raises ``ValueError``."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"seq", "hash"}:
        raise ValueError("not a record position")
    seq, digest = value["seq"], value["hash"]
    if type(seq) is not int or seq < 1 or not isinstance(digest, str) or not _HASH.fullmatch(digest):
        raise ValueError("not a record position")
    return seq, digest


def position_json(position: Position | None) -> dict[str, Any] | None:
    """The claim form of a position (``parse_position`` reads it back)."""
    return None if position is None else {"seq": position[0], "hash": position[1]}


def chain_problem(
    prev: Position | None, *, chained: bool, before: Position | None, after: int, seen_chained: bool
) -> str | None:
    """Why a verified checkpoint does not continue the chain of checkpoints, else None.

    ``prev`` is what it names (``chained``: it has the claim at all), ``before`` the
    checkpoint record before it in the export (None: none), ``after`` where the export
    starts, and ``seen_chained`` whether an earlier checkpoint of the export had ``prev``.
    """
    if not chained:
        return "checkpoint does not name the checkpoint before it, unlike an earlier one" if seen_chained else None
    if prev == before:
        return None
    if before is None:
        if prev is None or prev[0] <= after:  # the first checkpoint, or the one before it is not exported
            return None
        return f"checkpoint names record {prev[0]} as the checkpoint before it, but none precedes it (removed or rewritten)"
    if prev is None:
        return f"checkpoint names no checkpoint before it, but record {before[0]} is one"
    if prev[0] == before[0]:
        return f"the checkpoint before it (record {before[0]}) was changed"
    return f"checkpoint names record {prev[0]} as the checkpoint before it, not record {before[0]} (removed or rewritten)"


@dataclass(frozen=True)
class Stretch:
    """Records ``first``-``last``, first covered by checkpoint record ``checkpoint``.

    ``records`` counts those that are not checkpoints (what the STS counts), ``late``
    those of them appended more than ``GRACE_SECONDS`` before the checkpoint.
    """

    first: int
    last: int
    checkpoint: int
    records: int
    late: int


def _time(value: object) -> float:
    """A record's ``ts``; one that is not a number counts as long ago."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else float("-inf")


class Stretches:
    """The stretches of an export read in order: ``add`` every record, ``close`` at each verified checkpoint."""

    def __init__(self, *, after: int, every: int | None) -> None:
        self.every = every
        self.longest: Stretch | None = None
        #: the first stretch with more than ``every`` late records
        self.overdue: Stretch | None = None
        self._start = after
        self._records: list[tuple[int, float]] = []

    def add(self, seq: int, ts: object) -> None:
        """A record that is not a checkpoint."""
        self._records.append((seq, _time(ts)))

    def close(self, *, checkpoint: int, names: int, iat: int) -> None:
        """Checkpoint record ``checkpoint`` (signed at ``iat``) names record ``names``: its stretch ends there."""
        counted = [ts for seq, ts in self._records if seq <= names]
        late = sum(1 for ts in counted if ts < iat - GRACE_SECONDS)
        stretch = Stretch(first=self._start + 1, last=max(names, self._start), checkpoint=checkpoint,
                          records=len(counted), late=late)  # fmt: skip
        if self.longest is None or stretch.records > self.longest.records:
            self.longest = stretch
        if self.overdue is None and self.every is not None and late > self.every:
            self.overdue = stretch
        self._start, self._records = checkpoint, []
