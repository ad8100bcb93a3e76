"""STS upkeep: sign a checkpoint of the audit chain every N records or T seconds, never over a rewrite.

The rules are ``tether.audit.checkpoint`` and ``tether.audit.relink``; here are the reads and
writes. The writer tails ``Store.audit_marks`` in short pages, keeps each hash it read until a
checkpoint covers it, and before signing re-links the records since the position it trusts (at
most ``LOOKBACK``). A rewrite gets a critical ``alert.raised``, once across replicas, instead of
a signature. The last checkpoint it signed is kept in ``STATE_FILE``, where a database writer
cannot rewind it. Replicas on one chain claim each next checkpoint with ``first_use``; the claim
names its holder (``tether.sts.writer``), so a restarted STS reclaims at once what its previous
process claimed and died holding, while other replicas honour it for ``CLAIM_SECONDS``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from tether.audit.chain import GENESIS, AuditRecord
from tether.audit.checkpoint import (
    CHECKPOINT_KIND,
    CHECKPOINT_TYP,
    MAX_JWS,
    CheckpointError,
    UnknownKey,
    checkpoint_claims,
    checkpoint_due,
    checkpoint_event,
    verify_checkpoint,
    verify_checkpoint_record,
)
from tether.audit.coverage import Position, parse_position, position_json
from tether.audit.relink import CHAIN_DETECTOR, Broken, Lineage, Relink, saved_problem
from tether.keys.keyring import KeyRing
from tether.localstate import LocalState
from tether.metrics import ALERTS
from tether.monitor.cursor import head_seq
from tether.monitor.events import Finding, alert_event
from tether.rules.jws import JWSError, PublicKey, peek_header
from tether.store.protocol import TAIL_PAGE, Store
from tether.store.records import AuditMark
from tether.sts.writer import WriterIdentity, claim

__all__ = ["CLAIM_SECONDS", "LOOKBACK", "MAX_HOPS", "STATE_FILE", "AuditCheckpoints"]

log = logging.getLogger("tether.sts")

CLAIM_SECONDS = 30
#: the most records a re-read or the start-up search goes back, and the most hashes kept
LOOKBACK = 50_000
_PAGE = 4 * TAIL_PAGE
_VERIFY_PAGE = 2 * TAIL_PAGE  # about 3 ms of re-hashing on the event loop per page
_ALERT_CLAIM_SECONDS = 86_400
#: the most checkpoint records one walk back along the chain of checkpoints reads
MAX_HOPS = 1_000
#: the file in the data directory that holds the last checkpoint this STS signed
STATE_FILE = "audit-checkpoint.state"
_STATE_KEY = "last_signed"


def _kid_of(mark: AuditMark) -> str:
    """The ``kid`` that signed a checkpoint record (``""`` if unreadable: re-sign)."""
    if mark.jws is None:
        return ""
    try:
        kid = peek_header(mark.jws, max_length=MAX_JWS).get("kid")
    except JWSError:
        return ""
    return kid if isinstance(kid, str) else ""


def _saved(state: LocalState | None) -> tuple[Position, Position] | None:
    """The last checkpoint this STS signed and the record it named, from ``state`` (None: none yet)."""
    value = state.get(_STATE_KEY) if state is not None else None
    if value is None:
        return None
    try:
        record, named = parse_position(value.get("checkpoint")), parse_position(value.get("named"))
    except (AttributeError, ValueError):
        record = named = None
    if record is None or named is None:
        assert state is not None
        raise OSError(f"`{state.path}` does not name a checkpoint (delete it only for a new audit log)")
    return record, named


def _public_keys(keyring: KeyRing, now: float) -> dict[str, PublicKey]:
    """kid → public key of every key the keyring still publishes."""
    found = {kid: keyring.public_key(kid, now=now) for kid in keyring.kids}
    return {kid: key.public for kid, key in found.items() if key is not None}


class AuditCheckpoints:
    """The checkpoint writer of one STS process; ``tick`` is called every second by the upkeep."""

    def __init__(self, *, every: int, seconds: int, data_dir: Path | None = None) -> None:
        """``data_dir`` holds ``STATE_FILE``; without it nothing is remembered across restarts."""
        self.every = every
        self.seconds = seconds
        self._state = LocalState(data_dir / STATE_FILE) if data_dir is not None else None
        self.writer = WriterIdentity(data_dir)
        self._saved = _saved(self._state)
        self._saved_alerted = False
        self._keys: Mapping[str, PublicKey] = {}
        self._issuer: str | None = None
        self._retry_at = 0.0
        self._problems: list[Broken] = []
        self._reported: set[tuple[int, str | None]] = set()
        self._forget()

    def _forget(self) -> None:
        """Start over as a fresh process: nothing read, the head and the last checkpoint to be found."""
        self._cursor: int | None = None
        self._head: tuple[int, str] | None = None
        self._last = 0  # seq of the newest checkpoint record seen (0: none)
        self._last_hash = ""
        self._kid: str | None = None  # the kid that signed it
        self._top: Position | None = None  # the newest checkpoint record whose signature verified
        self._reached = self._saved[0] if self._saved else None  # the newest one known to lead back to it
        self._since = 0.0
        self._pending = 0
        self._trusted: tuple[int, str | None] = (0, GENESIS)
        self._known: dict[int, str] = {}

    def _observe(self, record: AuditMark, *, adopt: bool = True) -> None:
        self._cursor, self._head = record.seq, (record.seq, record.hash)
        self._known[record.seq] = record.hash
        if len(self._known) > LOOKBACK + _TRIM:
            _drop_oldest(self._known, len(self._known) - LOOKBACK)
        if record.kind == CHECKPOINT_KIND:
            self._last, self._kid, self._since, self._pending = record.seq, _kid_of(record), record.ts, 0
            self._last_hash = record.hash
            if adopt:
                self._adopt(record)
        else:
            self._pending += 1

    def _adopt(self, mark: AuditMark) -> None:
        """Trust another writer's checkpoint once its signature verifies and it names a record as read here."""
        try:
            cp = verify_checkpoint(mark.jws, keys=self._keys, issuer=self._issuer)
        except UnknownKey:
            return  # a key this replica has not loaded yet: the next checkpoint covers it
        except CheckpointError as exc:
            self._problems.append(Broken(mark.seq, mark.hash, f"is a checkpoint that does not verify ({exc})"))
            return
        self._top = (mark.seq, mark.hash)
        if cp.seq > self._trusted[0] and self._known.get(cp.seq, cp.hash) == cp.hash:
            self._trust(cp.seq, cp.hash)

    def _trust(self, seq: int, digest: str) -> None:
        self._trusted = (seq, digest)
        _drop_oldest(self._known, sum(1 for _ in itertools.takewhile(lambda known: known < seq, self._known)))
        self._known[seq] = digest

    async def _anchor(self, store: Store, mark: AuditMark) -> bool:
        """Trust the checkpoint record at ``mark`` if its signature and fields verify (start-up search)."""
        records = await store.audit_records(after=mark.seq - 1, limit=1)
        try:
            cp = verify_checkpoint_record(records[0].as_json() if records else {}, keys=self._keys, issuer=self._issuer)
        except UnknownKey:
            return False
        except CheckpointError as exc:
            self._problems.append(Broken(mark.seq, mark.hash, f"is a checkpoint that does not verify ({exc})"))
            return False
        self._trusted, self._top = (cp.seq, cp.hash), (mark.seq, mark.hash)
        return True

    async def _anchor_in(self, store: Store, page: list[AuditMark]) -> bool:
        """Trust the newest checkpoint of ``page`` that verifies, if any."""
        for mark in reversed(page):
            if mark.kind == CHECKPOINT_KIND and await self._anchor(store, mark):
                return True
        return False

    async def _start(self, store: Store, now: float) -> None:
        """Find the head and, searching back from it, the newest checkpoint that verifies."""
        head = await head_seq(store)
        self._cursor, self._since = head, now
        pages: list[list[AuditMark]] = []
        high = head
        while high > 0:
            low = max(0, high - _PAGE)
            pages.append(await store.audit_marks(after=low, limit=high - low))
            if await self._anchor_in(store, pages[-1]):
                break
            if low > 0 and head - low >= LOOKBACK:
                self._trusted = (low + 1, None)
                log.warning("audit checkpoints: no verifiable checkpoint in the last %d records; "
                            "re-linking from record %d as given", head - low, low + 1)  # fmt: skip
                break
            high = low
            await asyncio.sleep(0)
        for page in reversed(pages):
            for mark in page:
                self._observe(mark, adopt=False)
        seq, digest = self._trusted
        if seq > 0 and digest is not None:
            self._trust(seq, digest)
        if head and self._last == 0:
            self._pending = head  # no checkpoint found: count every record
            self._since = min(now, pages[0][-1].ts)  # unsigned since at least the head's time

    async def _record(self, store: Store, seq: int) -> dict[str, object] | None:
        found = await store.audit_records(after=seq - 1, limit=1)
        return found[0].as_json() if found else None

    async def _lineage(self, store: Store) -> Broken | None:
        """The checkpoint this STS signed last is in the chain as signed, and the newest one leads back to it."""
        if self._saved is None or self._reached is None:
            return None
        broken = saved_problem(await self._record(store, self._saved[0][0]), self._saved[0])
        if broken is not None and self._saved_alerted:  # one alert, whatever the record turns into meanwhile
            broken = replace(broken, alert=0)
        if broken is not None or self._top is None:
            return broken
        lineage = Lineage(top=self._top, target=self._reached)
        while lineage.next is not None:
            if lineage.hops >= MAX_HOPS:
                log.warning("audit checkpoints: followed %d checkpoints back from record %d; the chain before "
                            "record %d is taken as given", MAX_HOPS, self._top[0], lineage.next[0])  # fmt: skip
                break
            broken = lineage.step(await self._record(store, lineage.next[0]))
            if broken is not None:
                return broken
            await asyncio.sleep(0)
        self._reached = max(self._reached, self._top)
        return None

    async def _verify(self, store: Store) -> Broken | None:
        """Re-read the records from the trusted position to the head and re-link them."""
        assert self._head is not None
        head, trusted = self._head, self._trusted
        if head[0] - trusted[0] > LOOKBACK:
            trusted = (head[0] - LOOKBACK, None)
            log.warning("audit checkpoints: re-linking only the last %d records, from record %d as given",
                        LOOKBACK, trusted[0])  # fmt: skip
        relink = Relink(trusted=trusted, known=self._known)
        while relink.after < head[0]:
            page = await store.audit_records(after=relink.after, limit=min(_VERIFY_PAGE, head[0] - relink.after))
            if not page:
                break
            broken = relink.page(r.as_json() for r in page)
            if broken is not None:
                return broken
            await asyncio.sleep(0)  # let the requests in flight run between pages
        return relink.finish(head) or await self._lineage(store)

    async def _report(self, store: Store, broken: Broken, *, now: float, refused: bool) -> None:
        """Log the problem and raise the chain alert, once per record and hash across replicas."""
        if (broken.seq, broken.hash) in self._reported:
            return
        self._reported.add((broken.seq, broken.hash))
        what = "no checkpoint signed" if refused else "later checkpoints still signed"
        log.error("audit chain: record %d %s; %s", broken.seq, broken.reason, what)
        claim = f"audit-chain-alert:{broken.seq}:{broken.hash or '-'}"
        if broken.alert is not None or not await store.first_use(claim, until=int(now) + _ALERT_CLAIM_SECONDS, now=now):
            return
        evidence: dict[str, object] = {"seq": broken.seq, "trusted": self._trusted[0]}
        if refused:
            evidence["hash"] = broken.hash  # names what a restore must undo; other writers honour it
        finding = Finding(detector=CHAIN_DETECTOR, severity="critical", agent=None, task=None,
                          reason=f"audit record {broken.seq} {broken.reason}; {what}", ts=now, seq=broken.seq,
                          window=0, subject="audit", evidence=evidence)  # fmt: skip
        await store.append_audit(alert_event(finding, ("alert",), risk=0), now=now)
        ALERTS.labels(detector=CHAIN_DETECTOR).inc()
        self._saved_alerted = self._saved_alerted or (self._saved is not None and broken.seq == self._saved[0][0])

    async def _read(self, store: Store) -> None:
        """Observe every record appended since the last read, in pages."""
        while True:
            page = await store.audit_marks(after=self._cursor or 0, limit=_PAGE)
            for mark in page:
                self._observe(mark)
            if len(page) < _PAGE:
                break
            await asyncio.sleep(0)  # let the requests in flight run between pages

    async def _restart(self, store: Store, now: float) -> None:
        """Start as a fresh process: find the head and the newest checkpoint, and check the saved one."""
        await self._start(store, now)
        broken = await self._lineage(store)
        if broken is not None and self._head is not None:
            broken = await self._verify(store)  # the first record that does not verify, as a signing would find
        if broken is not None:
            await self._report(store, broken, now=now, refused=True)
        elif self._saved is not None and self._saved[1][0] > self._trusted[0]:
            self._trust(*self._saved[1])  # the record it signed last is as signed: what it named is

    async def _save(self, record: AuditRecord, named: Position) -> None:
        """Remember the checkpoint just signed, outside the store (a file write: off the event loop)."""
        self._saved = ((record.seq, record.hash), named)
        self._top = self._reached = (record.seq, record.hash)
        if self._state is not None:
            value = {"checkpoint": position_json(self._saved[0]), "named": position_json(named)}
            await asyncio.to_thread(self._state.put, _STATE_KEY, value)

    async def tick(self, store: Store, keyring: KeyRing, *, issuer: str, now: float) -> AuditRecord | None:
        """Read the new records and append a signed checkpoint if one is due and the chain re-links."""
        self._keys, self._issuer = _public_keys(keyring, now), issuer
        if self._cursor is None:
            await self._restart(store, now)
        await self._read(store)
        while self._problems:
            await self._report(store, self._problems.pop(0), now=now, refused=False)
        key = keyring.current
        changed = self._kid is not None and self._kid != key.kid
        due = checkpoint_due(pending=self._pending, since=self._since, now=now, every=self.every,
                             seconds=self.seconds, key_changed=changed)  # fmt: skip
        if self._head is None or not due or now < self._retry_at:
            return None
        last = (self._last, self._last_hash) if self._last else None
        holder = self.writer.holder() if self.writer.locked else await asyncio.to_thread(self.writer.holder)
        claimed = f"audit-checkpoint:after:{self._last}"
        if not await claim(store, claimed, holder=holder, until=int(now) + CLAIM_SECONDS, now=now):
            return None
        broken = await self._verify(store)
        if broken is not None:
            await self._report(store, broken, now=now, refused=True)
            # what was read since is no evidence of the originals (later records link to the rewrite):
            # start over like a restarted process, which honours the alert until the record is restored
            self._retry_at = now + self.seconds
            self._forget()
            return None
        seq, digest = self._head
        await self._read(store)
        if (self._last, self._last_hash) != (last or (0, "")):
            return None  # a checkpoint landed meanwhile: ours would not name the one before it
        iat = int(now)
        claims = checkpoint_claims(issuer=issuer, seq=seq, hash=digest, iat=iat, prev=last)
        jws = keyring.sign(claims, typ=CHECKPOINT_TYP)
        record = await store.append_audit(checkpoint_event(seq=seq, hash=digest, jws=jws, prev=last), now=float(iat))
        self._trust(seq, digest)
        await self._save(record, (seq, digest))
        return record


#: how far ``_known`` may grow past ``LOOKBACK`` before its oldest are dropped, in one pass
_TRIM = 1024


def _drop_oldest(known: dict[int, str], count: int) -> None:
    """Drop the ``count`` oldest entries, finding them in one pass: ``del d[next(iter(d))]`` in a
    loop walks every slot already deleted on each call (quadratic until the dict resizes)."""
    for seq in list(itertools.islice(known, count)):
        del known[seq]
