"""Stored shapes. They hold jtis, hashes and thumbprints, never a token or secret value."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from tether.audit.chain import AuditRecord
from tether.model import Task

__all__ = [
    "AgentHolding",
    "AuditMark",
    "AuditPage",
    "Block",
    "BlockKind",
    "FederationLink",
    "IssuedToken",
    "LookupResult",
    "Revocation",
    "RevocationKind",
    "StoredKey",
    "VaultEntry",
]


@dataclass(frozen=True)
class IssuedToken:
    """One issued token in the lineage tree (``parent_jti`` links a derived token to its parent)."""

    jti: str
    kind: str
    sub: str
    client_id: str
    aud: str
    scope: str
    jkt: str
    iat: int
    exp: int
    depth: int = 0
    task_id: str | None = None
    parent_jti: str | None = None
    revoked_at: int | None = None
    #: RFC 8705 ``cnf.x5t#S256`` (``jkt`` is ``""`` for a token bound to a certificate only)
    x5t: str | None = None


class RevocationKind(enum.StrEnum):
    TOKEN = "jti"
    TASK = "task"


@dataclass(frozen=True)
class Revocation:
    """One entry of the revocation feed; it can be dropped once ``exp`` has passed."""

    seq: int
    kind: RevocationKind
    value: str
    exp: int
    at: float

    def as_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind.value, "value": self.value, "exp": self.exp, "at": self.at}


class BlockKind(enum.StrEnum):
    AGENT = "agent"
    SUBJECT = "subject"


@dataclass(frozen=True)
class StoredKey:
    """An issuer signing key: public JWK in clear, private key sealed under the master key."""

    kid: str
    alg: str
    public_jwk: dict[str, Any]
    sealed_private: bytes
    created_at: int
    retired_at: int | None = None
    not_after: int | None = None


@dataclass(frozen=True)
class VaultEntry:
    """A legacy secret, sealed under the master key; ``version`` counts rotations."""

    name: str
    sealed: bytes
    created_at: float
    updated_at: float
    version: int


@dataclass(frozen=True)
class LookupResult:
    """Everything an exchange needs to read, fetched in one round trip."""

    task: Task | None
    token: IssuedToken | None
    blocked: bool


@dataclass(frozen=True)
class AuditMark:
    """A chain position without its payload: what a tail reader needs to count and link.

    The checkpoint writer reads every record as it arrives; decoding each record's JSON
    ``detail`` for that (over a thousand a second under load) cost CPU the token endpoint
    needed. Only a checkpoint record carries its compact JWS, which names the signing key.
    """

    seq: int
    ts: float
    kind: str
    hash: str
    jws: str | None = None


@dataclass(frozen=True)
class Block:
    """A kill-switch entry: ``kind`` (agent or subject), ``value`` (the principal), ``since`` (epoch seconds)."""

    kind: BlockKind
    value: str
    since: float


@dataclass(frozen=True)
class AgentHolding:
    """What one agent holds now (the console's agents page): live tasks and live tokens (unrevoked, unexpired)."""

    agent: str
    tasks: int
    tokens: int


@dataclass(frozen=True)
class AuditPage:
    """A page of ``Store.search_audit``: matching records newest first, and where to go on (``None``: the log's start)."""

    records: list[AuditRecord]
    next_before: int | None


@dataclass(frozen=True)
class FederationLink:
    """A task at this STS opened (or joined) for a federation peer's task: the linked task.

    ``peer`` is the ``[[federation]]`` name, ``foreign_task`` the peer's task (its token's ``txn``),
    ``foreign_jti`` the peer token that was redeemed here, ``task_id`` the local task. The peer's
    revocation feed names its tasks and tokens, so ``Store.linked_tasks`` finds what to end here.
    """

    peer: str
    foreign_task: str
    foreign_jti: str
    task_id: str
    created_at: int
