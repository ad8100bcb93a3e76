"""RFC 8693 token exchange attenuation: what a derived token may say (§2.1, §4.1, §5).

``derive_session`` turns a verified workload identity into the task's session token;
``derive_hop`` turns a verified tether token into a token for one audience, for its holder or,
with an actor, for the service it was issued to. A derived token is no wider (scope ⊆ parent),
no longer-lived (exp ≤ parent, task, TTL) and no deeper (``act`` ≤ ``max_depth``) than its
parent, and every widening is refused rather than narrowed.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from tether.errors import InvalidDPoPProof, InvalidGrant, InvalidRequest, InvalidTarget, after_end
from tether.model import AccessToken, Task, TaskBudget, TaskState, WorkloadIdentity
from tether.rules.claims import MAX_ACT_DEPTH, Grant
from tether.rules.scope import check_subset

__all__ = ["Ask", "Limits", "check_hop_binding", "check_task_usable", "derive_hop", "derive_session", "task_budget"]


@dataclass(frozen=True)
class Limits:
    """Server-wide lifetimes (seconds); every token is also capped by its parent and task."""

    session_ttl: int = 900
    hop_ttl: int = 300


@dataclass(frozen=True)
class Ask:
    """One exchange as these rules see it (RFC 8693 §2.1): the ``scope`` and ``audience`` asked
    for (``None``: not asked), the key its DPoP proof showed (``jkt``, RFC 9449 §6; ``None``
    without a proof), the issuer and lifetimes it is answered under, and the thumbprint of the
    client certificate of the connection (``x5t``, RFC 8705 §3.1; ``None`` without one)."""

    scope: frozenset[str] | None
    audience: str | None
    jkt: str | None
    issuer: str
    limits: Limits
    x5t: str | None = None


def check_task_usable(task: Task, now: float) -> None:
    """A token is only derived for an active task inside its hard cap and count cap."""
    state = task.effective_state(now)
    if state is not TaskState.ACTIVE:
        raise after_end(InvalidGrant(f"task is {state.value}", debug=f"task {task.id} is {state.value}"))
    if task.tokens_issued >= task.max_tokens:
        raise InvalidGrant("task token limit reached", debug=f"task {task.id} max_tokens {task.max_tokens}")


def _check_depth(actors: tuple[str, ...], task: Task) -> None:
    """The ``act`` chain never exceeds the task's ``max_depth`` (nor the global limit)."""
    if len(actors) > min(task.max_depth, MAX_ACT_DEPTH):
        raise InvalidGrant(f"delegation depth {len(actors)} exceeds the task's max_depth {task.max_depth}")


def task_budget(task: Task, actors: tuple[str, ...]) -> TaskBudget:
    """Claim ``tsk`` of a token of ``task`` with this ``act`` chain: what the task has left."""
    return TaskBudget(exp=task.expires_at, depth=max(0, task.max_depth - len(actors)), tokens=task.max_tokens)


def _expiry(now: int, ttl: int, *caps: int) -> int:
    exp = min(now + ttl, *caps)
    if exp <= now:
        raise InvalidGrant("subject token or task expires too soon to derive a token")
    return exp


def check_hop_binding(parent: AccessToken, ask: Ask, *, actor: str | None) -> str | None:
    """Check the binding a hop's caller proved, and return the hop token's ``x5t``."""
    if actor is not None:
        if ask.jkt is None:
            raise InvalidDPoPProof("a dpop proof is required")
        return None
    if parent.x5t is not None and ask.x5t != parent.x5t:
        raise InvalidGrant("client certificate does not match the subject token binding", debug=f"{ask.x5t} != {parent.x5t}")
    if parent.jkt is not None and ask.jkt is None:
        raise InvalidDPoPProof("a dpop proof is required")
    if parent.jkt is not None and ask.jkt != parent.jkt:
        raise InvalidDPoPProof("dpop proof key does not match the subject token binding")
    if parent.jkt is None and parent.x5t is None:
        raise InvalidGrant("subject token is not bound")
    return parent.x5t


def derive_session(
    identity: WorkloadIdentity, task: Task, ask: Ask, *, now: int, agent_source: tuple[str, str] | None = None
) -> Grant:
    """The session token for ``task`` from its agent's workload JWT (the agent's first exchange).

    ``agent_source`` is the identity source (kind, issuer) whose namespace holds the task's
    agent (``rules.namespace``): the workload must be that principal *from that source*, so
    a same-named workload of another issuer never redeems the task.

    Its audience is the STS itself; with an on-behalf-of subject, ``sub`` is that
    subject and the agent is the first actor (RFC 8693 §4.1 delegation). It is bound to
    the proof's key and/or the client certificate (RFC 9449, RFC 8705 §3): never a bearer token.
    """
    scope, audience, jkt, issuer, limits = ask.scope, ask.audience, ask.jkt, ask.issuer, ask.limits
    if jkt is None and ask.x5t is None:
        raise InvalidRequest("a session token must be bound to a dpop key or a client certificate")
    check_task_usable(task, now)
    if identity.principal != task.agent:
        raise InvalidGrant("task is not assigned to this workload", debug=f"{identity.principal} != {task.agent}")
    if agent_source is not None and agent_source != (identity.kind.value, identity.issuer):
        raise InvalidGrant(
            "task is not assigned to this workload",
            debug=f"agent {task.agent} belongs to {agent_source}, the token came from {identity.kind.value} {identity.issuer}",
        )
    if audience is not None and audience != issuer:
        raise InvalidTarget("the first exchange yields a session token for the issuer; name a resource later")
    granted = task.scopes if scope is None else scope
    check_subset(granted, task.scopes, what="the task")
    actors = (task.agent,) if task.on_behalf_of else ()
    _check_depth(actors, task)
    return Grant(
        sub=task.on_behalf_of or task.agent,
        aud=issuer,
        scope=granted,
        exp=_expiry(now, limits.session_ttl, task.expires_at, identity.exp),
        client_id=task.agent,
        agent=task.agent,
        jkt=jkt,
        x5t=ask.x5t,
        txn=task.id,
        actors=actors,
        purp=task.purpose,
        client_kind=identity.kind.value,
        agent_kind=identity.kind.value,
        client_domain=identity.trust_domain,
        agent_domain=identity.trust_domain,
        tsk=task_budget(task, actors),
    )


def derive_hop(
    parent: AccessToken,
    task: Task,
    ask: Ask,
    *,
    now: int,
    actor: str | None = None,
    actor_kind: str = "unknown",
    actor_domain: str = "",
    audience_principals: Collection[str] = (),
) -> Grant:
    """A token for exactly ``audience`` derived from ``parent`` (a hop token, or a service's onward one).

    Without ``actor`` the caller is the holder of a session token (its key proven by
    DPoP). With ``actor`` the caller is the service the parent was issued to — it must
    be ``parent.aud`` or one of ``audience_principals`` registered for it (no splicing
    of chains) — and is nested into ``act``; it must not already appear in the chain
    (no cycles) and the chain must stay within the task's ``max_depth``. Delegation is
    sticky: ``act`` is carried into every derived token.

    Binding (RFC 9449 §4.3, RFC 8705 §3): the holder proves every binding of its session
    token — the proof's key must be the parent's ``jkt`` (a proof is needed iff it has one) and
    the connection's certificate the parent's ``x5t`` — and the hop keeps the parent's binding.
    A delegating actor proves its own DPoP key, to which the onward token is bound.
    """
    scope, audience, jkt, issuer, limits = ask.scope, ask.audience, ask.jkt, ask.issuer, ask.limits
    x5t = check_hop_binding(parent, ask, actor=actor)
    if actor is None:
        jkt = parent.jkt  # the holder's hop is bound exactly as its session (a proof it need not send adds nothing)
    check_task_usable(task, now)
    if parent.txn != task.id:
        raise InvalidGrant("subject token does not belong to this task")
    if audience is None:
        raise InvalidTarget("a resource or audience is required")
    if audience == issuer or audience not in task.audiences:
        raise InvalidTarget(f"resource `{audience:.200}` is not allowed for this task")
    actors = parent.actors
    client_id, client_kind, client_domain = parent.client_id, parent.client_kind, parent.client_domain
    if actor is None:
        if parent.aud != issuer:
            raise InvalidGrant(
                "only a session token can be exchanged by its holder",
                debug=f"subject token aud `{parent.aud}` without actor_token",
            )
    else:
        if actor != parent.aud and actor not in audience_principals:
            raise InvalidGrant("actor is not the audience of the subject token", debug=f"{actor} vs {parent.aud}")
        if actor in (parent.sub, parent.agent, *parent.actors):
            raise InvalidGrant("actor already appears in the delegation chain")
        actors = (actor, *parent.actors)
        client_id, client_kind, client_domain = actor, actor_kind, actor_domain
    _check_depth(actors, task)
    granted = parent.scope if scope is None else scope
    check_subset(granted, parent.scope)
    check_subset(granted, task.scopes, what="the task")
    return Grant(
        sub=parent.sub,
        aud=audience,
        scope=granted,
        exp=_expiry(now, limits.hop_ttl, parent.exp, task.expires_at),
        client_id=client_id,
        agent=parent.agent,
        jkt=jkt,
        x5t=x5t,
        txn=task.id,
        actors=actors,
        purp=task.purpose,
        parent_jti=parent.jti,
        client_kind=client_kind,
        agent_kind=parent.agent_kind,
        client_domain=client_domain,
        agent_domain=parent.agent_domain,
        tsk=task_budget(task, actors),
    )
