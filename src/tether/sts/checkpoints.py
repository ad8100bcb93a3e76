"""STS upkeep: sign a checkpoint of the audit chain every N records or T seconds, never over a rewrite.

The rules are in ``tether.audit.checkpoint``. This module tails the chain, decides with
``checkpoint_due``, re-links what it is about to vouch for (``tether.audit.relink``) and
appends the signed record.

Tailing. Records are read once, as they arrive, as ``Store.audit_marks`` (position, kind
and hash, no JSON payload), in short pages with a yield between them. The writer keeps
the hash of every record it has read (``known``) until a checkpoint covers it.

Trust. The writer trusts one position: the genesis; or the record named by the checkpoint
it signed last (kept in memory after the append, so it is not re-read or re-verified);
or the record named by a checkpoint whose signature it verified with the issuer keys.
That is another replica's checkpoint, as it arrives, or, at start-up, the newest one
found searching back from the head. Before signing, the writer re-reads the full
records from that position to the head and re-links them. It stops at any record that
does not continue the chain from the trusted hash, or whose hash is not the one it read.
A database writer who rewrites a window and re-hashes the rest gets a refusal instead of
a signature. Other replicas' records are checked exactly like this process's own.

Refusal. No checkpoint is written. An ``alert.raised`` record (detector ``audit_chain``,
severity critical) names the record and the hash found; it is written once across
replicas (``first_use`` on that record and hash), so ``tether alerts`` lists it. An error
is logged. A writer that never read the original (a replica or a process started after
the rewrite) cannot tell a consistent rewrite from it, so it honours the alert for as
long as the record still has the hash the alert names. After a refusal the writer itself
starts over like a fresh process: the records it read since the rewrite link to it and
prove nothing. It tries again no sooner than ``checkpoint_seconds`` later. So once the
operator restores the record (and re-links what was appended since), signing resumes by
itself.

Bounds. A re-read covers the records since the trusted position: about ``every``, or
what ``seconds`` brought, in pages of ``_VERIFY_PAGE`` with a yield between. It never
reaches back more than ``LOOKBACK`` records; beyond that, the oldest record read is
taken as given, and a warning is logged. The start-up search reads marks back from the
head within the same bound, and ``known`` holds at most ``LOOKBACK`` hashes. If no
checkpoint is found, every record read counts as pending, and the clock runs from the
head's time. So the unsigned tail left by the previous run is signed at once on a long
log, and within ``checkpoint_seconds`` of its newest record otherwise.

What no writer can know: a record rewritten after the newest verifiable checkpoint,
before this process first read it. ``tether audit verify --expect-head`` against an
earlier export finds that.

Several replicas may tail one PostgreSQL chain. Before writing, a replica claims the
right to write the checkpoint that follows the last one it saw, with the atomic
``first_use`` (one winner per claim). Two checkpoints close together are harmless;
the claim only avoids them cheaply. A claim whose winner died expires after
``CLAIM_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

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
from tether.audit.relink import CHAIN_DETECTOR, Broken, Relink
from tether.keys.keyring import KeyRing
from tether.metrics import ALERTS
from tether.monitor.cursor import head_seq
from tether.monitor.events import Finding, alert_event
from tether.rules.jws import JWSError, PublicKey, peek_header
from tether.store.protocol import TAIL_PAGE, Store
from tether.store.records import AuditMark

__all__ = ["CLAIM_SECONDS", "LOOKBACK", "AuditCheckpoints"]

log = logging.getLogger("tether.sts")

CLAIM_SECONDS = 30
#: the most records a re-read or the start-up search goes back, and the most hashes kept
LOOKBACK = 50_000
_PAGE = 4 * TAIL_PAGE
_VERIFY_PAGE = 2 * TAIL_PAGE  # about 3 ms of re-hashing on the event loop per page
_ALERT_CLAIM_SECONDS = 86_400


def _kid_of(mark: AuditMark) -> str:
    """The ``kid`` that signed a checkpoint record (``""`` if unreadable: re-sign)."""
    if mark.jws is None:
        return ""
    try:
        kid = peek_header(mark.jws, max_length=MAX_JWS).get("kid")
    except JWSError:
        return ""
    return kid if isinstance(kid, str) else ""


def _public_keys(keyring: KeyRing, now: float) -> dict[str, PublicKey]:
    """kid → public key of every key the keyring still publishes."""
    found = {kid: keyring.public_key(kid, now=now) for kid in keyring.kids}
    return {kid: key.public for kid, key in found.items() if key is not None}


class AuditCheckpoints:
    """The checkpoint writer of one STS process; ``tick`` is called every second by the upkeep."""

    def __init__(self, *, every: int, seconds: int) -> None:
        self.every = every
        self.seconds = seconds
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
        self._kid: str | None = None  # the kid that signed it
        self._since = 0.0
        self._pending = 0
        self._trusted: tuple[int, str | None] = (0, GENESIS)
        self._known: dict[int, str] = {}

    def _observe(self, record: AuditMark, *, adopt: bool = True) -> None:
        self._cursor, self._head = record.seq, (record.seq, record.hash)
        self._known[record.seq] = record.hash
        if len(self._known) > LOOKBACK:
            del self._known[next(iter(self._known))]
        if record.kind == CHECKPOINT_KIND:
            self._last, self._kid, self._since, self._pending = record.seq, _kid_of(record), record.ts, 0
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
        if cp.seq > self._trusted[0] and self._known.get(cp.seq, cp.hash) == cp.hash:
            self._trust(cp.seq, cp.hash)

    def _trust(self, seq: int, digest: str) -> None:
        self._trusted = (seq, digest)
        while self._known and next(iter(self._known)) < seq:
            del self._known[next(iter(self._known))]
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
        self._trusted = (cp.seq, cp.hash)
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
        return relink.finish(head)

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

    async def tick(self, store: Store, keyring: KeyRing, *, issuer: str, now: float) -> AuditRecord | None:
        """Read the new records and append a signed checkpoint if one is due and the chain re-links."""
        self._keys, self._issuer = _public_keys(keyring, now), issuer
        if self._cursor is None:
            await self._start(store, now)
        while True:
            page = await store.audit_marks(after=self._cursor or 0, limit=_PAGE)
            for mark in page:
                self._observe(mark)
            if len(page) < _PAGE:
                break
            await asyncio.sleep(0)  # let the requests in flight run between pages
        while self._problems:
            await self._report(store, self._problems.pop(0), now=now, refused=False)
        key = keyring.current
        changed = self._kid is not None and self._kid != key.kid
        due = checkpoint_due(pending=self._pending, since=self._since, now=now, every=self.every,
                             seconds=self.seconds, key_changed=changed)  # fmt: skip
        if self._head is None or not due or now < self._retry_at:
            return None
        if not await store.first_use(f"audit-checkpoint:after:{self._last}", until=int(now) + CLAIM_SECONDS, now=now):
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
        iat = int(now)
        jws = keyring.sign(checkpoint_claims(issuer=issuer, seq=seq, hash=digest, iat=iat), typ=CHECKPOINT_TYP)
        record = await store.append_audit(checkpoint_event(seq=seq, hash=digest, jws=jws), now=float(iat))
        self._trust(seq, digest)
        return record
