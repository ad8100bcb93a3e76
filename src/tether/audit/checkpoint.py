"""Signed checkpoints of the audit chain, and offline verification of an exported log.

A checkpoint is itself an audit record (kind ``audit.checkpoint``). Its detail holds the
``seq`` and ``hash`` of the newest record when it was written and a compact JWS (RFC 7515)
over ``{iss, seq, hash, iat}``, signed with the issuer's current key. The hash chain
commits every record to all the records before it, so one valid checkpoint vouches for
every record up to the one it names, earlier checkpoints included. A third party with
only the issuer's JWKS (RFC 7517) can therefore check an export offline: every link and
hash, every checkpoint's signature, ``iss`` and the record it names.

Why it is built this way:

- Explicit typing (RFC 8725 §3.11, JWT-12). The issuer key also signs access tokens
  (``at+jwt``). A checkpoint has ``typ: tether-audit-checkpoint+jwt`` and no ``aud``,
  ``sub`` or ``exp``, so neither kind can pass for the other.
- The named record may come before the checkpoint's immediate predecessor. The store
  links an appended record to the head at commit time, so an issuance can land between
  reading the head and appending. The checkpoint still vouches for exactly the record it
  names; any record in between is covered by the next checkpoint.
- The checkpoint record's own fields are pinned. ``ts`` equals the signed ``iat`` and the
  detail equals the signed claims, so an edit of the last record of an export (which no
  later link protects) is still caught.
- Key rotation. The JWKS keeps a retired key only until its tokens expire. The STS writes
  a new checkpoint as soon as the current key differs from the one that signed the last
  checkpoint (``checkpoint_due``). A checkpoint signed by a key missing from the JWKS is
  accepted only if a later valid checkpoint vouches for it; that later checkpoint covers
  it through the chain. Otherwise it is refused.
- Truncation. An export cut just after a checkpoint looks exactly like a shorter log.
  Only a verifier that knows the head (``expect_head``, e.g. from an earlier export) can
  tell the difference.

Everything here is pure: no I/O, no clock (``now``/``iat`` come in as arguments).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tether.audit.chain import GENESIS, AuditEvent, canonical
from tether.rules.dpop import is_type, numeric_date
from tether.rules.jws import JWSError, PublicKey, SignatureRejected, verify_compact

__all__ = [
    "ALGORITHMS",
    "CHECKPOINT_KIND",
    "CHECKPOINT_TYP",
    "MAX_JWS",
    "Checkpoint",
    "CheckpointError",
    "ExportBroken",
    "ExportReport",
    "UnknownKey",
    "checkpoint_claims",
    "checkpoint_due",
    "checkpoint_event",
    "link_problem",
    "verify_checkpoint",
    "verify_checkpoint_record",
    "verify_export",
]

CHECKPOINT_KIND = "audit.checkpoint"
CHECKPOINT_TYP = "tether-audit-checkpoint+jwt"
#: the issuer's signing algorithms (``tether.keys.keyring.SIGNING_ALGS``), the only ones accepted
ALGORITHMS = ("ES256", "EdDSA")
MAX_JWS = 4096
_HEADERS = frozenset({"typ", "alg", "kid"})
_DETAIL = frozenset({"seq", "hash", "jws"})
_HASH = re.compile(r"[0-9a-f]{64}")
_BODY = ("seq", "ts", "kind", "outcome", "principal", "task", "jti", "error", "detail", "prev")
_UNSET = ("principal", "task", "jti", "error")


def _show(value: object) -> str:
    """An untrusted value fit for a one-line message: printable ASCII, at most 64 characters."""
    return re.sub(r"[^\x20-\x7e]", "?", str(value))[:64].replace("`", "'")


def checkpoint_claims(*, issuer: str, seq: int, hash: str, iat: int) -> dict[str, Any]:
    """The signed claims: who vouches (``iss``), for which record (``seq``, ``hash``), when (``iat``)."""
    return {"iss": issuer, "seq": seq, "hash": hash, "iat": iat}


def checkpoint_event(*, seq: int, hash: str, jws: str) -> AuditEvent:
    """The audit event that carries a checkpoint; append it with ``now`` equal to the claims' ``iat``."""
    return AuditEvent(kind=CHECKPOINT_KIND, outcome="ok", detail={"seq": seq, "hash": hash, "jws": jws})


def checkpoint_due(*, pending: int, since: float, now: float, every: int, seconds: float, key_changed: bool) -> bool:
    """Whether to write a checkpoint now.

    ``pending`` is the number of records after the last checkpoint and ``since`` is that
    checkpoint's time. A checkpoint is due after ``every`` records, or after ``seconds``
    with at least one record. It is also due when the last checkpoint was signed by a key
    that is no longer current (``key_changed``), even with no new record, so the newest
    checkpoint is always verifiable with the published JWKS.
    """
    if key_changed:
        return True
    return pending >= every or (pending >= 1 and now - since >= seconds)


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint: ``iss`` vouches for record ``seq`` whose hash is ``hash``."""

    seq: int
    hash: str
    iss: str
    iat: int
    kid: str


class CheckpointError(Exception):
    """Why a checkpoint was refused (one line, lowercase)."""


class UnknownKey(CheckpointError):
    """The checkpoint names a ``kid`` that the given JWKS does not hold."""

    def __init__(self, kid: str) -> None:
        super().__init__(f"checkpoint signed by a key not in the JWKS (kid `{kid}`)")
        self.kid = kid


class _NoKey(JWSError):
    def __init__(self, kid: object) -> None:
        super().__init__("unknown kid")
        self.kid = kid


def verify_checkpoint(jws: object, *, keys: Mapping[str, PublicKey], issuer: str | None) -> Checkpoint:
    """Verify a checkpoint JWS against ``keys`` (kid → public key); ``issuer`` pins ``iss`` if given.

    The signature goes through the tether JOSE gate (``tether.rules.jws``): size cap,
    allowlisted headers and algorithms, and a key from the caller's JWKS only, never
    from the token (ASVS 9.1.3). ``iss`` is compared exactly (PyJWT CVE-2024-53861).
    """
    if not isinstance(jws, str):
        raise CheckpointError("checkpoint carries no signature")

    def resolve(header: Mapping[str, Any]) -> PublicKey:
        kid = header.get("kid")
        key = keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise _NoKey(kid)
        return key

    try:
        verified = verify_compact(jws, algorithms=ALGORITHMS, allowed_headers=_HEADERS, resolve_key=resolve, max_length=MAX_JWS)
    except _NoKey as exc:
        raise UnknownKey(_show(exc.kid)) from None
    except SignatureRejected:
        raise CheckpointError("checkpoint signature does not verify") from None
    except JWSError as exc:
        raise CheckpointError(f"checkpoint rejected: {exc}") from None
    typ = verified.header.get("typ")
    if not is_type(typ, CHECKPOINT_TYP):
        raise CheckpointError(f"checkpoint has type `{_show(typ)}`, not `{CHECKPOINT_TYP}`")
    claims = verified.claims
    seq, digest, iss, iat = claims.get("seq"), claims.get("hash"), claims.get("iss"), numeric_date(claims.get("iat"))
    if type(seq) is not int or seq < 1 or not isinstance(digest, str) or not _HASH.fullmatch(digest):
        raise CheckpointError("checkpoint claims do not name a record")
    if not isinstance(iss, str) or iat is None or iat != int(iat):
        raise CheckpointError("checkpoint claims lack `iss` or `iat`")
    if issuer is not None and iss != issuer:
        raise CheckpointError(f"checkpoint issued by `{_show(iss)}`, expected `{_show(issuer)}`")
    return Checkpoint(seq=seq, hash=digest, iss=iss, iat=int(iat), kid=str(verified.header["kid"]))


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


class ExportBroken(Exception):
    """The first record of an export that does not verify, and why."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"audit chain broken at record {seq}: {reason}")
        self.seq = seq
        self.reason = reason


def link_problem(raw: Mapping[str, Any], *, expected: int, prev: str | None) -> str | None:
    """The reason ``raw`` does not continue the chain, in the order ``chain.first_broken`` checks."""
    seq = raw.get("seq")
    if type(seq) is not int:
        return "record has no valid seq"
    if seq != expected:
        return f"out of order, expected record {expected} (records missing, moved or inserted)"
    if prev is not None and raw.get("prev") != prev:
        return "does not link to the previous record"
    try:
        digest = hashlib.sha256(canonical({k: raw.get(k) for k in _BODY})).hexdigest()
    except (RecursionError, TypeError, ValueError):
        return "record cannot be hashed"
    return None if digest == raw.get("hash") else "hash does not match its contents"


def verify_checkpoint_record(raw: Mapping[str, Any], *, keys: Mapping[str, PublicKey], issuer: str | None) -> Checkpoint:
    """Verify a checkpoint record: its JWS (``verify_checkpoint``) and its own fields pinned to the claims.

    ``ts`` must equal the signed ``iat``, the detail the signed ``seq`` and ``hash``, and
    the named record must come before the checkpoint, so neither an edited checkpoint
    record nor a copy of an old JWS placed elsewhere passes.
    """
    detail = raw.get("detail")
    cp = verify_checkpoint(detail.get("jws") if isinstance(detail, Mapping) else None, keys=keys, issuer=issuer)
    pinned = (
        isinstance(detail, Mapping)
        and set(detail) == _DETAIL
        and type(detail["seq"]) is int
        and detail["seq"] == cp.seq
        and detail["hash"] == cp.hash
        and raw.get("ts") == cp.iat
        and raw.get("outcome") == "ok"
        and all(raw.get(k) is None for k in _UNSET)
    )
    if not pinned:
        raise CheckpointError("checkpoint record does not match its signed claims")
    seq = raw.get("seq")
    if type(seq) is not int or cp.seq >= seq:
        raise CheckpointError(f"checkpoint names record {cp.seq}, which does not precede it")
    return cp


def _covered(cp: Checkpoint, hashes: Mapping[int, str]) -> int | None:
    """The seq that a verified checkpoint vouches for in this export (None: before the export starts)."""
    known = hashes.get(cp.seq)
    if known is None:
        return None
    if known != cp.hash:
        raise CheckpointError(f"checkpoint does not match record {cp.seq}: a record up to it was changed")
    return cp.seq


def verify_export(
    records: Iterable[Mapping[str, Any]],
    *,
    keys: Mapping[str, PublicKey] | None,
    issuer: str | None = None,
    after: int = 0,
    after_hash: str | None = None,
    expect_head: tuple[int, str] | None = None,
) -> ExportReport:
    """Verify an exported log (records in order); raise ``ExportBroken`` at the first bad record.

    ``after``/``after_hash`` say where the export starts. By default it starts at the
    genesis. With ``after`` but no hash, the first record's ``prev`` is taken as given
    (unanchored). With ``keys=None`` only the chain is checked. ``issuer`` pins ``iss``;
    without it every checkpoint must name the same issuer as the first one.
    ``expect_head`` is a record the export must contain, with that hash (truncation).
    """
    prev: str | None = GENESIS if after == 0 else after_hash
    expected, issuer_seen = after + 1, issuer
    hashes: dict[int, str] = {}
    pending: list[tuple[int, str]] = []
    valid: list[int] = []
    signed: int | None = None
    superseded = count = 0
    last: tuple[int, str] | None = None
    for raw in records:
        reason = link_problem(raw, expected=expected, prev=prev)
        if reason is not None:
            seq = raw.get("seq")
            raise ExportBroken(seq if type(seq) is int else expected, reason)
        seq, digest = int(raw["seq"]), str(raw["hash"])
        hashes.setdefault(seq - 1, str(raw.get("prev")))  # bound by this record's hash
        if keys is not None and raw.get("kind") == CHECKPOINT_KIND:
            try:
                cp = verify_checkpoint_record(raw, keys=keys, issuer=issuer_seen)
                covered = _covered(cp, hashes)
            except UnknownKey as exc:
                pending.append((seq, exc.kid))
            except CheckpointError as exc:
                raise ExportBroken(seq, str(exc)) from None
            else:
                issuer_seen = cp.iss
                valid.append(seq)
                if covered is not None and (signed is None or covered > signed):
                    signed = covered
                    superseded += sum(1 for s, _ in pending if s <= covered)
                    pending = [(s, kid) for s, kid in pending if s > covered]
        hashes[seq], prev, expected, last = digest, digest, seq + 1, (seq, digest)
        count += 1
    problems = [(s, str(UnknownKey(kid))) for s, kid in pending[:1]]
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
    floor = after if signed is None else signed
    unsigned = (last[0] - floor if last else 0) - sum(1 for v in valid if v > floor)
    return ExportReport(
        records=count,
        first=after + 1 if count else None,
        head=last,
        signatures_checked=keys is not None,
        signed_through=signed,
        checkpoints=len(valid),
        superseded=superseded,
        unsigned=max(unsigned, 0) if keys is not None else count,
        issuer=issuer_seen,
    )
