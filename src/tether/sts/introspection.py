"""Introspection (RFC 7662), revocation (RFC 7009) and the kill switch.

Introspection answers ``active`` from the token, the lineage store and the task at once, so a
token of a completed task is inactive the moment the task ends, and a token naming a federation
peer's principal is inactive while that peer's revocation feed is stale (FED-03). A caller learns about a token
only if it is the token's audience (or registered for it), its client or an admin; anyone else
gets ``{"active": false}`` (no token scanning, RFC 7662 §2.1). Revocation cuts the token and
every token derived from it.
"""

from __future__ import annotations

from typing import Any

from tether.audit.chain import AuditEvent
from tether.errors import InvalidToken, UnauthorizedClient
from tether.metrics import REVOCATIONS
from tether.model import AccessToken, TaskState, WorkloadIdentity, act_from_chain
from tether.rules.claims import cnf_claim
from tether.rules.scope import format_scope
from tether.store.records import BlockKind
from tether.sts.auth import require_admin
from tether.sts.context import StsContext
from tether.sts.federation import stale_peer

__all__ = ["block", "introspect", "revoke", "set_block"]


def _may_see(ctx: StsContext, caller: WorkloadIdentity, token: AccessToken) -> bool:
    principal = caller.principal
    return (
        principal in ctx.settings.admin_principals
        or principal == token.aud
        or principal in ctx.settings.resources.get(token.aud, frozenset())
        or principal == token.client_id
    )


async def introspect(ctx: StsContext, caller: WorkloadIdentity, token: str) -> dict[str, Any]:
    inactive: dict[str, Any] = {"active": False}
    try:
        claims = ctx.verify_own_token(token, audience=None)
    except InvalidToken:
        return inactive
    if not _may_see(ctx, caller, claims):
        return inactive
    state = await ctx.store.lookup(task_id=claims.txn, jti=claims.jti, principals=[claims.sub, claims.agent, *claims.actors])
    if state.token is None or state.token.revoked_at is not None or state.blocked:
        return inactive
    if claims.txn is not None and (state.task is None or state.task.effective_state(ctx.now()) is not TaskState.ACTIVE):
        return inactive
    if stale_peer(ctx, [claims.sub, claims.client_id, claims.agent, *claims.actors], now=ctx.now()) is not None:
        return inactive  # FED-03: a revocation by that peer might not have arrived
    body: dict[str, Any] = {
        "active": True,
        "iss": claims.iss,
        "sub": claims.sub,
        "aud": claims.aud,
        "client_id": claims.client_id,
        "scope": format_scope(claims.scope),
        "exp": claims.exp,
        "iat": claims.iat,
        "nbf": claims.nbf,
        "jti": claims.jti,
        "token_type": "DPoP" if claims.jkt else "Bearer",  # RFC 8705 §3: a certificate-only token is a Bearer one
        "agt": claims.agent,
    }
    cnf = cnf_claim(claims.jkt, claims.x5t)
    if cnf:
        body["cnf"] = cnf
    if claims.txn is not None:
        body["txn"] = claims.txn
    if claims.actors:
        body["act"] = act_from_chain(claims.actors)
    if claims.purp is not None:
        body["purp"] = claims.purp
    return body


async def revoke(ctx: StsContext, caller: WorkloadIdentity, token: str) -> list[str]:
    """RFC 7009 §2.1: unknown or invalid tokens are a 200 with nothing to do."""
    try:
        claims = ctx.verify_own_token(token, audience=None)
    except InvalidToken:
        return []
    allowed = caller.principal in ctx.settings.admin_principals or caller.principal in (
        claims.client_id,
        claims.sub,
        claims.agent,
    )
    if not allowed:
        raise UnauthorizedClient("token was not issued to this client")
    event = AuditEvent(kind="token.revoked", outcome="ok", principal=caller.principal, task=claims.txn, jti=claims.jti)
    revoked = await ctx.store.revoke_tree(claims.jti, now=ctx.now(), audit=event)
    REVOCATIONS.labels(kind="jti").inc(len(revoked))  # one feed entry per newly revoked token, after the commit
    return revoked


async def block(
    ctx: StsContext, caller: AccessToken, kind: BlockKind, value: str, *, lift: bool, client: str | None = None
) -> dict[str, Any]:
    require_admin(ctx, caller, operation="principals.unblock" if lift else "principals.block", client=client)
    return await set_block(ctx, kind, value, lift=lift, principal=caller.sub)


async def set_block(
    ctx: StsContext, kind: BlockKind, value: str, *, lift: bool, principal: str, detail: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The kill switch for an authorized ``principal``: block (end the tasks, revoke the tokens) or lift, audited."""
    now = ctx.now()
    extra = detail or {}
    if lift:
        event = AuditEvent(kind="principal.unblocked", outcome="ok", principal=principal, detail={kind.value: value, **extra})
        removed = await ctx.store.unblock(kind, value, now=now, audit=event)
        return {kind.value: value, "blocked": False, "was_blocked": removed}
    event = AuditEvent(kind="principal.blocked", outcome="ok", principal=principal, detail={kind.value: value, **extra})
    tasks = await ctx.store.block(kind, value, now=now, audit=event)
    REVOCATIONS.labels(kind="task").inc(len(tasks))  # the tokens it cut are in the audit record, not counted here
    return {kind.value: value, "blocked": True, "tasks_cancelled": tasks}
