"""STS upkeep: sign a checkpoint of the audit chain every N records or T seconds.

The rules are in ``tether.audit.checkpoint``; this module tails the chain, decides with
``checkpoint_due`` and appends the signed record. It keeps only a cursor in memory:
records are read once, as they arrive, as ``Store.audit_marks`` (position, kind and hash,
no JSON payload), in short pages with a yield between them. At start-up it finds the head with a binary
search over ``audit_records`` (O(log n) reads, no full scan). If the head is not a
checkpoint, every record counts as pending (the last checkpoint is not searched for)
and the clock runs from the head's time, so the unsigned tail left by the previous run
is signed at once on a long log, and within ``checkpoint_seconds`` of its newest
record otherwise.

Several replicas may tail one PostgreSQL chain. Before writing, a replica claims the
right to write the checkpoint that follows the last one it saw, with the atomic
``first_use`` (one winner per claim). Two checkpoints close together are harmless;
the claim only avoids them cheaply. A claim whose winner died expires after
``CLAIM_SECONDS``.
"""

from __future__ import annotations

import asyncio

from tether.audit.chain import AuditRecord
from tether.audit.checkpoint import (
    CHECKPOINT_KIND,
    CHECKPOINT_TYP,
    MAX_JWS,
    checkpoint_claims,
    checkpoint_due,
    checkpoint_event,
)
from tether.keys.keyring import KeyRing
from tether.monitor.cursor import head_seq
from tether.rules.jws import JWSError, peek_header
from tether.store.protocol import TAIL_PAGE, Store
from tether.store.records import AuditMark

__all__ = ["CLAIM_SECONDS", "AuditCheckpoints"]

CLAIM_SECONDS = 30
_PAGE = 4 * TAIL_PAGE


def _kid_of(mark: AuditMark) -> str:
    """The ``kid`` that signed a checkpoint record (``""`` if unreadable: re-sign)."""
    if mark.jws is None:
        return ""
    try:
        kid = peek_header(mark.jws, max_length=MAX_JWS).get("kid")
    except JWSError:
        return ""
    return kid if isinstance(kid, str) else ""


class AuditCheckpoints:
    """The checkpoint writer of one STS process; ``tick`` is called every second by the upkeep."""

    def __init__(self, *, every: int, seconds: int) -> None:
        self.every = every
        self.seconds = seconds
        self._cursor: int | None = None
        self._head: tuple[int, str] | None = None
        self._last = 0  # seq of the newest checkpoint record seen (0: none)
        self._kid: str | None = None  # the kid that signed it
        self._since = 0.0
        self._pending = 0

    def _observe(self, record: AuditMark) -> None:
        self._cursor, self._head = record.seq, (record.seq, record.hash)
        if record.kind == CHECKPOINT_KIND:
            self._last, self._kid, self._since, self._pending = record.seq, _kid_of(record), record.ts, 0
        else:
            self._pending += 1

    async def _start(self, store: Store, now: float) -> None:
        head = await head_seq(store)
        self._cursor, self._since = head, now
        if head:
            (record,) = await store.audit_marks(after=head - 1, limit=1)
            self._observe(record)
            if record.kind != CHECKPOINT_KIND:
                self._pending = head  # the last checkpoint is not searched for: count every record
                self._since = min(now, record.ts)  # unsigned since at least the head's time

    async def tick(self, store: Store, keyring: KeyRing, *, issuer: str, now: float) -> AuditRecord | None:
        """Read the new records and append a signed checkpoint if one is due; returns it."""
        if self._cursor is None:
            await self._start(store, now)
        while True:
            page = await store.audit_marks(after=self._cursor or 0, limit=_PAGE)
            for record in page:
                self._observe(record)
            if len(page) < _PAGE:
                break
            await asyncio.sleep(0)  # let the requests in flight run between pages
        key = keyring.current
        changed = self._kid is not None and self._kid != key.kid
        due = checkpoint_due(pending=self._pending, since=self._since, now=now, every=self.every,
                             seconds=self.seconds, key_changed=changed)  # fmt: skip
        if self._head is None or not due:
            return None
        if not await store.first_use(f"audit-checkpoint:after:{self._last}", until=int(now) + CLAIM_SECONDS, now=now):
            return None
        seq, digest = self._head
        iat = int(now)
        jws = keyring.sign(checkpoint_claims(issuer=issuer, seq=seq, hash=digest, iat=iat), typ=CHECKPOINT_TYP)
        return await store.append_audit(checkpoint_event(seq=seq, hash=digest, jws=jws), now=float(iat))
