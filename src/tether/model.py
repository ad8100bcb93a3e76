"""Frozen records shared by rules, services and adapters.

Parse, don't validate: everything here has already been checked by a rule in
``tether.rules``; nothing downstream sees a raw dict from the wire.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AccessToken",
    "DPoPProof",
    "IdentityKind",
    "Task",
    "TaskBudget",
    "TaskState",
    "WorkloadIdentity",
    "act_from_chain",
    "chain_from_act",
]


class TaskState(enum.StrEnum):
    ACTIVE = "active"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    SUSPENDED = "suspended"


@dataclass(frozen=True)
class Task:
    """The unit every token is bound to; an orchestrator creates it before the agent's first exchange."""

    id: str
    agent: str
    audiences: tuple[str, ...]
    scopes: frozenset[str]
    created_at: int
    expires_at: int
    max_depth: int
    max_tokens: int
    state: TaskState = TaskState.ACTIVE
    on_behalf_of: str | None = None
    purpose: str | None = None
    tokens_issued: int = 0
    ended_at: int | None = None
    created_by: str | None = None

    def effective_state(self, now: float) -> TaskState:
        """An active task past its hard cap is expired, whether or not a sweep marked it."""
        if self.state is TaskState.ACTIVE and now >= self.expires_at:
            return TaskState.EXPIRED
        return self.state

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "agent": self.agent,
            "on_behalf_of": self.on_behalf_of,
            "purpose": self.purpose,
            "audiences": list(self.audiences),
            "scopes": sorted(self.scopes),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "max_depth": self.max_depth,
            "max_tokens": self.max_tokens,
            "tokens_issued": self.tokens_issued,
            "state": self.effective_state(now).value,
            "ended_at": self.ended_at,
            "created_by": self.created_by,
        }


@dataclass(frozen=True)
class TaskBudget:
    """Claim ``tsk``: what a token's task has left, signed by its issuer (issue 19).

    ``exp`` is the task's hard expiry, ``depth`` the delegation levels still allowed
    (``max_depth`` minus the token's ``act`` chain) and ``tokens`` the task's ``max_tokens``.
    A federation peer opening a linked task for the token never exceeds any of them.
    """

    exp: int
    depth: int
    tokens: int

    def as_json(self) -> dict[str, int]:
        return {"exp": self.exp, "depth": self.depth, "tokens": self.tokens}


class IdentityKind(enum.StrEnum):
    SPIFFE = "spiffe"
    OIDC = "oidc"
    CLIENT = "client"


@dataclass(frozen=True)
class WorkloadIdentity:
    """Who is asking, as proven by a verified workload JWT or client assertion."""

    principal: str
    kind: IdentityKind
    issuer: str
    exp: int
    jti: str | None
    token_hash: str
    claims: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def trust_domain(self) -> str:
        """The identity source it proved, as Cedar names it: the SPIFFE trust domain (``issuer`` is
        ``spiffe://<td>``), the OIDC issuer URL, or the registered client id."""
        return self.issuer.removeprefix("spiffe://")


@dataclass(frozen=True)
class DPoPProof:
    """A verified RFC 9449 proof: who holds the key (``jkt``) and what the proof was for."""

    jkt: str
    jti: str
    htm: str
    htu: str
    iat: int
    alg: str
    nonce: str | None
    ath: str | None


@dataclass(frozen=True)
class AccessToken:
    """Claims of a verified tether access token (RFC 9068 + RFC 8693 ``act`` + ``txn``).

    ``actors`` is the ``act`` chain newest first: ``actors[0]`` is the current actor,
    the only one an access-control decision may consider (RFC 8693 §4.1). ``agent`` is
    the task's agent (claim ``agt``): with an on-behalf-of subject the agent is also the
    innermost actor, without one it is ``sub``; the claim says which without guessing.
    """

    iss: str
    sub: str
    aud: str
    exp: int
    iat: int
    nbf: int
    jti: str
    client_id: str
    scope: frozenset[str]
    txn: str | None
    jkt: str | None
    agent: str = ""
    actors: tuple[str, ...] = ()
    purp: str | None = None
    #: the kind of identity ``client_id`` and the agent proved (claims ``ckd``, ``akd``);
    #: ``unknown`` for a token that does not say (it matches no ``kind`` in a policy)
    client_kind: str = "unknown"
    agent_kind: str = "unknown"
    #: the identity source each proved, as Cedar's ``trust_domain`` (claims ``ctd``, ``atd``): the
    #: SPIFFE trust domain, the OIDC issuer or the client id; ``""`` for a token that does not say
    client_domain: str = ""
    agent_domain: str = ""
    #: RFC 8705 §3.1 ``cnf.x5t#S256``: the thumbprint of the client certificate the token is bound to
    x5t: str | None = None
    #: the one tool call this token was approved for: SHA-256 of its RFC 8785 form (``rules.approval.tool_call_context``)
    tctx: str | None = None
    #: the human approval it was issued under (claim ``apr``: ``id``, ``by``, ``at``)
    apr: ApprovalClaim | None = None
    #: what its task has left (claim ``tsk``), on every task-bound token
    tsk: TaskBudget | None = None

    @property
    def bindings(self) -> str:
        """How the token is bound, as audit and metrics say it: ``dpop``, ``mtls``, ``dpop+mtls`` or ``none``."""
        return binding_name(self.jkt, self.x5t)

    @property
    def current_actor(self) -> str | None:
        return self.actors[0] if self.actors else None

    @property
    def depth(self) -> int:
        """Delegation depth: the length of the ``act`` chain."""
        return len(self.actors)


def binding_name(jkt: str | None, x5t: str | None) -> str:
    """``dpop`` (RFC 9449 ``cnf.jkt``), ``mtls`` (RFC 8705 ``cnf.x5t#S256``), both, or ``none``."""
    names = [name for name, value in (("dpop", jkt), ("mtls", x5t)) if value]
    return "+".join(names) or "none"


def act_from_chain(actors: tuple[str, ...]) -> dict[str, Any] | None:
    """Nest an actor chain (newest first) as RFC 8693 §4.1 ``act`` claims."""
    act: dict[str, Any] | None = None
    for actor in reversed(actors):
        act = {"sub": actor} if act is None else {"sub": actor, "act": act}
    return act


def chain_from_act(act: Any, *, max_depth: int) -> tuple[str, ...] | None:
    """Flatten a present ``act`` claim into a chain (newest first), or ``None`` if it is malformed
    or deeper than ``max_depth``.

    Every level must be an object holding a non-empty string ``sub`` and at most a nested
    ``act`` (RFC 8693 §4.1); a nested ``act`` that is ``null``, a list or a string is as
    malformed as a top-level one, never read as "no further actor".
    """
    chain: list[str] = []
    node = act
    while True:
        if not isinstance(node, dict) or not isinstance(node.get("sub"), str) or not node["sub"]:
            return None
        if set(node) - {"sub", "act"} or len(chain) >= max_depth:
            return None
        chain.append(node["sub"])
        if "act" not in node:
            return tuple(chain)
        node = node["act"]


@dataclass(frozen=True)
class ApprovalClaim:
    """The ``apr`` claim: which approval a token was issued under, who gave it and when."""

    id: str
    by: str
    at: int

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "by": self.by, "at": self.at}


class ApprovalStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Approval:
    """A request held for a human's yes (``rules.approval``), as the store keeps it.

    ``request`` is the canonical binding (``ApprovalBinding.canonical``) and ``digest`` its
    hash: the approval redeems only a request with the same digest. ``view`` is what the
    approver is shown, built from the same data with secrets redacted. ``request_mac`` and
    ``decision_mac`` bind the record to the master key (``rules.approval_seal``): a database
    writer can neither forge an approval nor change what a pending one shows.
    """

    id: str
    task: str
    digest: str
    request: dict[str, Any]
    view: dict[str, Any]
    groups: tuple[str, ...]
    policies: tuple[str, ...]
    created_at: int
    expires_at: int
    request_mac: str
    creator_may_approve: bool = False
    status: ApprovalStatus = ApprovalStatus.PENDING
    decided_by: str | None = None
    decided_at: int | None = None
    reason: str = ""
    #: tokens an approval may yield (set when approved: 1 unless the approver grants more)
    uses: int = 0
    #: an approved approval yields tokens until this time (the approver's window; else its expiry)
    until: int | None = None
    decision_mac: str = ""

    def effective_status(self, now: float) -> ApprovalStatus:
        """A pending approval past its expiry is expired, whether or not a sweep marked it."""
        if self.status is ApprovalStatus.PENDING and now >= self.expires_at:
            return ApprovalStatus.EXPIRED
        return self.status

    def as_json(self, now: float) -> dict[str, Any]:
        """The API form: the view, the state and the decision; never the MACs."""
        return {
            "id": self.id,
            "task": self.task,
            "status": self.effective_status(now).value,
            "groups": list(self.groups),
            "policies": list(self.policies),
            "request": self.view,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "decided_by": self.decided_by,
            "decided_at": self.decided_at,
            "reason": self.reason,
            "uses": self.uses,
            "until": self.until,
        }
