"""Signed checkpoints of the audit chain: what one claims, and how one record of it is checked.

A checkpoint is an audit record (``audit.checkpoint``) naming the newest record (``seq``,
``hash``) and the checkpoint record before it (``prev``), with a compact JWS (RFC 7515) over
them by the issuer key; through the hash chain it vouches for every record before. Typed
``tether-audit-checkpoint+jwt``, with no ``aud``, ``sub`` or ``exp``, it cannot pass for an
access token (RFC 8725 §3.11). Its record's ``ts`` and detail must equal the signed claims, so
an export's last record is pinned too. The named record may precede the checkpoint's own
predecessor: appends race the signer. Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tether.audit.chain import AuditEvent, canonical
from tether.audit.coverage import Position, parse_position, position_json
from tether.rules.dpop import is_type, numeric_date
from tether.rules.jws import JWSError, PublicKey, SignatureRejected, verify_compact

__all__ = [
    "ALGORITHMS",
    "CHECKPOINT_KIND",
    "CHECKPOINT_TYP",
    "MAX_JWS",
    "Checkpoint",
    "CheckpointError",
    "UnknownKey",
    "checkpoint_claims",
    "checkpoint_due",
    "checkpoint_event",
    "link_problem",
    "verify_checkpoint",
    "verify_checkpoint_record",
]

CHECKPOINT_KIND = "audit.checkpoint"
CHECKPOINT_TYP = "tether-audit-checkpoint+jwt"
#: the issuer's signing algorithms (``tether.keys.keyring.SIGNING_ALGS``), the only ones accepted
ALGORITHMS = ("ES256", "EdDSA")
MAX_JWS = 4096
_HEADERS = frozenset({"typ", "alg", "kid"})
_DETAIL = frozenset({"seq", "hash", "jws"})  # a checkpoint from before ``prev``
_CHAINED = _DETAIL | {"prev"}
_HASH = re.compile(r"[0-9a-f]{64}")
_BODY = ("seq", "ts", "kind", "outcome", "principal", "task", "jti", "error", "detail", "prev")
_UNSET = ("principal", "task", "jti", "error")


def _show(value: object) -> str:
    """An untrusted value fit for a one-line message: printable ASCII, at most 64 characters."""
    return re.sub(r"[^\x20-\x7e]", "?", str(value))[:64].replace("`", "'")


def checkpoint_claims(*, issuer: str, seq: int, hash: str, iat: int, prev: Position | None = None) -> dict[str, Any]:
    """The signed claims: who vouches (``iss``), for which record (``seq``, ``hash``), when (``iat``),
    after which checkpoint record (``prev``, None for the first)."""
    return {"iss": issuer, "seq": seq, "hash": hash, "prev": position_json(prev), "iat": iat}


def checkpoint_event(*, seq: int, hash: str, jws: str, prev: Position | None = None) -> AuditEvent:
    """The audit event that carries a checkpoint; append it with ``now`` equal to the claims' ``iat``."""
    detail = {"seq": seq, "hash": hash, "prev": position_json(prev), "jws": jws}
    return AuditEvent(kind=CHECKPOINT_KIND, outcome="ok", detail=detail)


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
    """A verified checkpoint: ``iss`` vouches for record ``seq`` whose hash is ``hash``.

    ``prev`` is the checkpoint record it names as the one before it; ``chained`` says
    whether it has the claim at all (a checkpoint from before ``prev`` existed has not).
    """

    seq: int
    hash: str
    iss: str
    iat: int
    kid: str
    prev: Position | None = None
    chained: bool = False


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
    try:
        prev = parse_position(claims.get("prev"))
    except ValueError:
        raise CheckpointError("checkpoint claims do not name a valid checkpoint before it") from None
    return Checkpoint(seq=seq, hash=digest, iss=iss, iat=int(iat), kid=str(verified.header["kid"]), prev=prev,
                      chained="prev" in claims)  # fmt: skip


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

    ``ts`` must equal the signed ``iat``, the detail the signed ``seq``, ``hash`` and
    ``prev``, and the named records must come before the checkpoint, so neither an edited
    checkpoint record nor a copy of an old JWS placed elsewhere passes.
    """
    detail = raw.get("detail")
    cp = verify_checkpoint(detail.get("jws") if isinstance(detail, Mapping) else None, keys=keys, issuer=issuer)
    pinned = (
        isinstance(detail, Mapping)
        and set(detail) == (_CHAINED if cp.chained else _DETAIL)
        and (not cp.chained or _position_or_none(detail["prev"]) == (cp.prev, True))
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
    if cp.prev is not None and cp.prev[0] >= seq:
        raise CheckpointError(f"checkpoint names record {cp.prev[0]} as the checkpoint before it, which does not precede it")
    return cp


def _position_or_none(value: object) -> tuple[Position | None, bool]:
    """``parse_position`` as (position, valid), for comparing a detail with its claims."""
    try:
        return parse_position(value), True
    except ValueError:
        return None, False
