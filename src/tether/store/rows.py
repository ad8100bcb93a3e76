"""Row ↔ record mapping shared by the SQL backends (same column order in SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from tether.audit.chain import AuditRecord
from tether.model import Task, TaskState
from tether.store.records import AuditMark, IssuedToken, Revocation, RevocationKind, StoredKey, VaultEntry

__all__ = [
    "AUDIT_COLUMNS",
    "AUDIT_MARK_COLUMNS",
    "KEY_COLUMNS",
    "TASK_COLUMNS",
    "TOKEN_COLUMNS",
    "VAULT_COLUMNS",
    "audit_from_row",
    "audit_mark_from_row",
    "audit_values",
    "block_names",
    "key_from_row",
    "revocation_from_row",
    "task_from_row",
    "task_principals",
    "task_values",
    "token_from_row",
    "token_values",
    "vault_from_row",
]

TASK_COLUMNS = (
    "id, agent, on_behalf_of, purpose, audiences, scopes, created_at, expires_at, "
    "max_depth, max_tokens, tokens_issued, state, ended_at, created_by"
)
TOKEN_COLUMNS = "jti, kind, task_id, parent_jti, sub, client_id, aud, scope, jkt, iat, exp, depth, revoked_at, x5t"
AUDIT_COLUMNS = "seq, ts, kind, outcome, principal, task, jti, error, detail, prev, hash"
#: the kind of the signed checkpoint records ``tether.audit.checkpoint`` writes; named here, not imported,
#: so that the store does not depend on the audit service (tests/test_layering.py checks they agree)
CHECKPOINT_KIND = "audit.checkpoint"
# the detail (JSON text) is only selected for checkpoint records, whose JWS the mark carries
AUDIT_MARK_COLUMNS = f"seq, ts, kind, hash, CASE WHEN kind = '{CHECKPOINT_KIND}' THEN detail END"
KEY_COLUMNS = "kid, alg, public_jwk, sealed_private, created_at, retired_at, not_after"
VAULT_COLUMNS = "name, sealed, created_at, updated_at, version"


def block_names(*groups: Iterable[str | None]) -> list[str]:
    """The distinct names a block check looks for, in order, without empty or missing ones.

    A block names a principal whatever its kind: blocking subject ``x`` also refuses an
    agent or client called ``x``. Both backends check exactly these names.
    """
    return list(dict.fromkeys(name for group in groups for name in group if name))


def task_principals(row: Sequence[Any] | None) -> tuple[str | None, ...]:
    """A task row's agent and subject (``on_behalf_of``): the principals a lookup also checks."""
    return () if row is None else (row[1], row[2])


def task_from_row(row: Sequence[Any]) -> Task:
    return Task(
        id=row[0],
        agent=row[1],
        on_behalf_of=row[2],
        purpose=row[3],
        audiences=tuple(json.loads(row[4])),
        scopes=frozenset(json.loads(row[5])),
        created_at=int(row[6]),
        expires_at=int(row[7]),
        max_depth=int(row[8]),
        max_tokens=int(row[9]),
        tokens_issued=int(row[10]),
        state=TaskState(row[11]),
        ended_at=None if row[12] is None else int(row[12]),
        created_by=row[13],
    )


def task_values(task: Task) -> tuple[Any, ...]:
    return (
        task.id,
        task.agent,
        task.on_behalf_of,
        task.purpose,
        json.dumps(list(task.audiences)),
        json.dumps(sorted(task.scopes)),
        task.created_at,
        task.expires_at,
        task.max_depth,
        task.max_tokens,
        task.tokens_issued,
        task.state.value,
        task.ended_at,
        task.created_by,
    )


_TOKEN_FIELDS = tuple(TOKEN_COLUMNS.split(", "))
_AUDIT_FIELDS = tuple(AUDIT_COLUMNS.split(", "))


def token_from_row(row: Sequence[Any]) -> IssuedToken:
    """Integer columns come back as ``int`` from both backends (SQLite INTEGER, PostgreSQL BIGINT)."""
    return IssuedToken(**dict(zip(_TOKEN_FIELDS, row, strict=True)))


def token_values(token: IssuedToken) -> tuple[Any, ...]:
    """A token is recorded unrevoked: ``revoked_at`` starts empty."""
    return tuple(None if name == "revoked_at" else getattr(token, name) for name in _TOKEN_FIELDS)


def audit_from_row(row: Sequence[Any]) -> AuditRecord:
    fields = dict(zip(_AUDIT_FIELDS, row, strict=True))
    return AuditRecord(**{**fields, "ts": float(row[1]), "detail": json.loads(row[8])})


def audit_mark_from_row(row: Sequence[Any]) -> AuditMark:
    jws = json.loads(row[4]).get("jws") if row[4] is not None else None
    return AuditMark(seq=int(row[0]), ts=float(row[1]), kind=row[2], hash=row[3], jws=jws if isinstance(jws, str) else None)


def audit_values(record: AuditRecord) -> tuple[Any, ...]:
    """``detail`` as the exact JSON that was hashed (``detail_json``) when the record carries it."""
    detail = record.detail_json or json.dumps(record.detail, sort_keys=True)
    return tuple(detail if name == "detail" else getattr(record, name) for name in _AUDIT_FIELDS)


def key_from_row(row: Sequence[Any]) -> StoredKey:
    return StoredKey(
        kid=row[0],
        alg=row[1],
        public_jwk=json.loads(row[2]),
        sealed_private=bytes(row[3]),
        created_at=int(row[4]),
        retired_at=None if row[5] is None else int(row[5]),
        not_after=None if row[6] is None else int(row[6]),
    )


def vault_from_row(row: Sequence[Any]) -> VaultEntry:
    return VaultEntry(str(row[0]), bytes(row[1]), float(row[2]), float(row[3]), int(row[4]))


def revocation_from_row(row: Sequence[Any]) -> Revocation:
    return Revocation(int(row[0]), RevocationKind(row[1]), row[2], int(row[3]), float(row[4]))
