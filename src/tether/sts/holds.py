"""Held requests at the token endpoint: RFC 9396 tool calls, Cedar ``@approval`` holds, RFC 8628 polling.

After the exchange decision (``exchange._authorize``) and before issuance, ``gate`` decides
whether the token may be issued now, must wait for a human, or is issued under an approval:

* a tool call (RFC 9396 ``authorization_details`` of type ``tool_call``) is also judged by
  Cedar ``call``, as the audience will judge it (a deny refuses; its ``@approval`` groups hold),
  and the token carries its ``tctx`` whether or not anyone must approve;
* a request the policies hold, sent without ``approval_id``, is recorded (``Store.hold_approval``,
  ``approval.requested`` in the same step) and answered ``authorization_pending`` (RFC 8628 §3.5);
* a request with ``approval_id`` is the poll: it redeems the approval only if the approval covers
  exactly this request (``ApprovalBinding`` digest), is sealed by the master key (both MACs once
  decided: a database writer never gets a token) and has a use left (``Store.count``).

Every answer on these paths spends the request's DPoP proof first (RFC 9449 §11.1), so a
captured poll cannot be replayed to learn the state or to burn an approved use. A held
session exchange does not spend its workload JWT: the agent polls with it (the issuance does).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any, NoReturn
from urllib.parse import urlsplit

from tether.audit.chain import AuditEvent
from tether.errors import AccessDenied, AuthorizationPending, InvalidGrant, SlowDown, TooManyRequests, after_end
from tether.lru import LruCache
from tether.metrics import APPROVALS
from tether.model import Approval, ApprovalStatus, DPoPProof, Task, TaskState
from tether.policy.engine import Decision
from tether.policy.entities import call_request
from tether.rules.approval import (
    TOOL_CALL_TYPE,
    ApprovalBinding,
    approval_claim,
    approval_view,
    check_use,
    redeem,
    tool_call_context,
)
from tether.rules.approval_seal import ApprovalTampered, check_sealed, request_mac
from tether.rules.claims import Grant
from tether.rules.tool_call import ToolCall, argument_tags
from tether.store.errors import CapReached
from tether.store.protocol import Store
from tether.sts.attribution import Claim
from tether.sts.context import StsContext

__all__ = [
    "Gated", "PollClock", "approval_detail", "details_json", "gate", "new_approval_id", "sweep_approvals", "take_use",
]  # fmt: skip

log = logging.getLogger("tether.sts.holds")

#: seconds the use counter of an approval outlives its window (replicas' clocks differ a little)
USE_MARGIN = 300
#: RFC 8628 §3.5: a ``slow_down`` adds five seconds to the interval
SLOW_DOWN_STEP = 5
_NOT_COVERED = "the approval does not cover this request"


def new_approval_id() -> str:
    """``apr_`` and 128 random bits (``rules.approval.valid_approval_id``): the id is what an agent polls with."""
    return "apr_" + secrets.token_urlsafe(16)


class PollClock:
    """When each approval was last polled, in this process (RFC 8628 §3.5 ``slow_down``).

    A bounded LRU, one per process and shared by the STSs it serves (approval ids are random
    and never shared between deployments). It only paces honest clients: a poll evicted from
    it, or answered by another replica, is not slowed down — every poll still spends a fresh
    DPoP proof, and the pending answer costs one read. A poll may arrive a little early (the
    client's sleep and the network jitter), so up to a quarter of the interval, at most half a
    second, is forgiven."""

    def __init__(self, capacity: int = 20_000) -> None:
        self._seen: LruCache[str, float] = LruCache(capacity)
        self._lock = threading.Lock()  # test processes serve several STSs on several threads

    def too_soon(self, approval_id: str, *, now: float, interval: int) -> bool:
        """Record a poll of ``approval_id`` at ``now``; True if the previous one was under ``interval`` ago."""
        with self._lock:
            last = self._seen.get(approval_id)
            self._seen.put(approval_id, now)
        return last is not None and now - last < interval - min(0.5, interval / 4)


POLLS = PollClock()


@dataclass(frozen=True)
class Gated:
    """What issuance needs after the gate: the grant (``tctx``, ``apr``) and the proof's replay
    key if it is still to be spent atomically with the issuance (``None`` once spent here)."""

    grant: Grant
    replay: tuple[str, int] | None


@dataclass(frozen=True)
class _Hold:
    groups: tuple[str, ...]
    policies: tuple[str, ...]
    creator_may_approve: bool


def _merge(*decisions: Decision | None) -> _Hold:
    """One approver must satisfy every group any determining ``@approval`` permit named; the
    creator may approve only if every one of those permits says so (APR-02)."""
    holding = [d for d in decisions if d is not None and d.approval]
    groups = sorted({g for d in holding for g in d.approval})
    policies = tuple(dict.fromkeys(p for d in holding for p in d.approval_policies))
    creator = bool(holding) and all(d.creator_may_approve for d in holding)
    return _Hold(tuple(groups), policies, creator)


def _call_decision(ctx: StsContext, call: ToolCall, grant: Grant, task: Task, *, client: str | None, risk: int) -> Decision:
    """Cedar ``call`` for the tool call as the audience will see it (``resource.verifier.authorize_call``):
    service the audience, ``POST`` to its path, the caller the new token's current actor, else its client."""
    path = urlsplit(grant.aud).path or "/"
    request = call_request(
        caller=grant.actors[0] if grant.actors else grant.client_id,
        service=grant.aud,
        method="POST",
        path=path,
        scopes=grant.scope,
        actors=grant.actors,
        subject=grant.sub,
        agent=grant.agent,
        task=task.id,
        purpose=task.purpose,
        token_age=0,
        now=ctx.now(),
        client=client,
        tags=ctx.settings.tags,
        risk=risk,
        tool=call.name,
        caller_kind=grant.client_kind,
        caller_domain=grant.client_domain,
        arguments=argument_tags(call.arguments),
        arguments_digest=call.digest,
    )
    return ctx.authorize(request, refusal="the tool call is denied by policy", holds=True)


def details_json(call: ToolCall) -> list[dict[str, Any]]:
    """RFC 9396 §7: the ``authorization_details`` granted, echoed in the token response."""
    return [{"type": TOOL_CALL_TYPE, "tool": call.name, "arguments": dict(call.arguments)}]


def approval_detail(approval: Approval) -> dict[str, Any]:
    """The audit detail of an approval event: ids, groups, policies, audience, tool and ``tctx`` —
    never the arguments (they may carry data the agent read)."""
    detail: dict[str, Any] = {
        "approval": approval.id,
        "groups": list(approval.groups),
        "policies": list(approval.policies),
        "aud": approval.request.get("aud"),
        "kind": approval.request.get("kind"),
    }
    tool = approval.view.get("tool")
    if tool is not None:
        detail["tool"] = tool
    if approval.request.get("tctx") is not None:
        detail["tctx"] = approval.request["tctx"]
    return detail


def _binding(grant: Grant, task: Task, kind: str) -> ApprovalBinding:
    return ApprovalBinding(
        task=task.id,
        agent=grant.agent,
        client=grant.client_id,
        sub=grant.sub,
        aud=grant.aud,
        scope=frozenset(grant.scope),
        actors=tuple(grant.actors),
        kind=kind,
        jkt=grant.jkt,
        x5t=grant.x5t,
        tctx=grant.tctx,
    )


async def gate(
    ctx: StsContext,
    grant: Grant,
    task: Task,
    decision: Decision,
    *,
    kind: str,
    call: ToolCall | None,
    approval_id: str | None,
    proof: DPoPProof | None,
    replay: tuple[str, int] | None,
    claim: Claim,
    client: str | None,
    risk: int,
) -> Gated:
    """Issue now, hold, or redeem an approval (module docstring); ``kind`` is the binding's
    ``session``, ``hop`` or ``delegation``. Raises ``AuthorizationPending`` for a held request."""
    if call is None and approval_id is None and not decision.approval:
        return Gated(grant, replay)  # the plain exchange: nothing to judge, hold or redeem
    call_decision = None
    if call is not None:
        call_decision = _call_decision(ctx, call, grant, task, client=client, risk=risk)
        grant = replace(grant, tctx=tool_call_context(call.name, call.arguments))
    held = _merge(decision, call_decision)
    if approval_id is None and not held.groups:
        return Gated(grant, replay)
    await _spend(ctx, proof, replay, claim)
    await _check_live(ctx, grant, task)
    binding = _binding(grant, task, kind)
    if approval_id is not None:
        approval = await _covering(ctx, approval_id, binding, held.groups)
        return Gated(await _redeem(ctx, approval, binding, grant), None)
    await _hold(ctx, binding, task, call, held)


async def _spend(ctx: StsContext, proof: DPoPProof | None, replay: tuple[str, int] | None, claim: Claim) -> None:
    """Spend the request's proof now: a replayed poll is refused as any replayed proof is."""
    if proof is None or replay is None:
        return  # certificate-bound only: the TLS handshake proved the key on this connection
    await ctx.proofs.consume(proof, *replay)
    claim.consumed = True


async def _check_live(ctx: StsContext, grant: Grant, task: Task) -> None:
    """What the issuance would re-check (``Store.issue_token``), checked before holding or answering
    pending: no approver is asked, and no agent told to wait, for an ended task, a revoked subject
    token or a blocked principal (the same refusals an issuance gives)."""
    principals = [grant.sub, grant.agent, grant.client_id, *grant.actors, task.on_behalf_of or ""]
    state = await ctx.store.lookup(task_id=task.id, jti=grant.parent_jti, principals=[p for p in principals if p])
    if state.blocked:
        raise AccessDenied("principal is blocked")
    live = state.task.effective_state(ctx.now()) if state.task is not None else None
    if live is not TaskState.ACTIVE:
        raise after_end(InvalidGrant(f"task is {live.value if live else 'unknown'}"))
    if grant.parent_jti is not None and (state.token is None or state.token.revoked_at is not None):
        raise after_end(InvalidGrant("subject token has been revoked", debug="revoked or unknown parent jti"))


async def _covering(ctx: StsContext, approval_id: str, binding: ApprovalBinding, groups: Collection[str]) -> Approval:
    """The approval ``approval_id`` if it is sealed and covers exactly this request and every group
    the policies name now (a policy tightened after the approval is not bypassed by it)."""
    approval = await ctx.store.get_approval(approval_id)
    if approval is None:
        raise InvalidGrant(_NOT_COVERED, debug=f"approval {approval_id} unknown")
    if approval.digest != binding.digest():
        raise InvalidGrant(_NOT_COVERED, debug=f"approval {approval.id} digest mismatch")
    decided = approval.status in (ApprovalStatus.APPROVED, ApprovalStatus.DENIED)
    try:
        check_sealed(ctx.approval_key, approval, decided=decided)
    except ApprovalTampered as exc:
        log.error("refusing a tampered approval: %s", exc)
        raise InvalidGrant(_NOT_COVERED, debug=str(exc)) from None
    missing = set(groups) - set(approval.groups)
    if missing:
        raise InvalidGrant(_NOT_COVERED, debug=f"approval {approval.id} lacks groups {sorted(missing)}")
    return approval


async def _redeem(ctx: StsContext, approval: Approval, binding: ApprovalBinding, grant: Grant) -> Grant:
    """RFC 8628 §3.5 answers; approved → one use taken atomically, the grant carries ``apr``."""
    now = ctx.now()
    interval = ctx.settings.approvals.interval
    try:
        redeem(approval, binding.digest(), now=now, interval=interval)
    except AuthorizationPending:
        raise _pending(approval, now=now, interval=interval, fresh=False) from None
    assert approval.until is not None  # redeem refuses an approval without a window
    # a use taken by an issuance the store then refuses stays taken (fail closed)
    check_use(approval, await take_use(ctx.store, approval, now=now))
    return replace(grant, apr=approval_claim(approval))


async def take_use(store: Store, approval: Approval, *, now: float) -> int:
    """Take the approval's next use: its number (1 for the first), or ``uses + 1`` when none is left.

    Each use is a durable single-use mark (``Store.spend``: the database, never a cache that can
    lose keys — a Redis restart must not hand out a 1-use approval's use again), tried in order;
    ``uses`` is at most ``[approvals] max_uses``, so this is a few round trips at worst."""
    assert approval.until is not None
    for number in range(1, approval.uses + 1):
        if await store.spend(f"approval-use:{approval.id}:{number}", until=approval.until + USE_MARGIN, now=now):
            return number
    return approval.uses + 1


def _pending(approval: Approval, *, now: float, interval: int, fresh: bool) -> AuthorizationPending:
    """``authorization_pending``, or ``slow_down`` (interval + 5) for a poll sooner than ``interval``."""
    expires_in = int(approval.expires_at - now)
    too_soon = POLLS.too_soon(approval.id, now=now, interval=interval)  # always recorded: the hold is the first poll
    if too_soon and not fresh:
        return SlowDown(approval.id, interval=interval + SLOW_DOWN_STEP, expires_in=expires_in,
                        description="polled faster than `interval`; wait longer between polls")  # fmt: skip
    return AuthorizationPending(approval.id, interval=interval, expires_in=expires_in)


async def _hold(ctx: StsContext, binding: ApprovalBinding, task: Task, call: ToolCall | None, held: _Hold) -> NoReturn:
    """Record the held request (or find the pending one for the same request) and answer pending."""
    settings = ctx.settings.approvals
    now = int(ctx.now())
    vaulted = await ctx.vault_values() if ctx.vault_values is not None and call is not None else ()
    view = approval_view(binding, task=task, call=call, fields=settings.redact, secrets=vaulted)
    draft = Approval(
        id=new_approval_id(),
        task=task.id,
        digest=binding.digest(),
        request=binding.canonical(),
        view=view,
        groups=held.groups,
        policies=held.policies,
        created_at=now,
        expires_at=min(now + settings.ttl, task.expires_at),
        request_mac="",
        creator_may_approve=held.creator_may_approve,
    )
    draft = replace(draft, request_mac=request_mac(ctx.approval_key, draft))
    event = AuditEvent(kind="approval.requested", outcome="ok", principal=task.agent, task=task.id,
                       detail=approval_detail(draft))  # fmt: skip
    try:
        stored = await ctx.store.hold_approval(draft, now=now, max_pending=settings.max_pending, audit=event)
        if stored.id == draft.id:
            APPROVALS.labels(outcome="requested").inc()
    except CapReached:
        raise await _cap_refusal(ctx.store, task, now=now, cap=settings.max_pending) from None
    fresh = stored.id == draft.id
    if not fresh:
        try:
            check_sealed(ctx.approval_key, stored, decided=False)
        except ApprovalTampered as exc:
            log.error("refusing a tampered approval: %s", exc)
            raise InvalidGrant("the held request cannot be answered", debug=str(exc)) from None
    elif ctx.on_hold is not None:
        ctx.on_hold(stored, task)  # fire and forget: the webhook queues, never blocks this answer
    raise _pending(stored, now=now, interval=settings.interval, fresh=fresh)


async def _cap_refusal(store: Store, task: Task, *, now: int, cap: int) -> TooManyRequests:
    """``[approvals] max_pending`` reached: 429 with ``Retry-After`` until the first pending one expires.

    Not ``invalid_request`` (nothing is wrong with the request) nor a policy denial: the same
    request can be held once an approver answers or a pending one expires."""
    pending = await store.list_approvals(status=ApprovalStatus.PENDING, task=task.id, now=now, limit=cap)
    wait = min((a.expires_at for a in pending), default=now + 1) - now
    return TooManyRequests(
        "too many approvals pending for this task; wait for a decision",
        retry_after=max(1, wait),
        debug=f"task {task.id}: {cap} approvals pending",
    )


async def sweep_approvals(store: Store, *, now: float) -> list[Approval]:
    """Mark pending approvals past their expiry as expired, each with an ``approval.expired`` record
    (APR-03: an expired approval is audited); the STS's upkeep calls this with the task sweep."""

    def event(approval: Approval) -> AuditEvent:
        agent = approval.request.get("agent")
        return AuditEvent(kind="approval.expired", outcome="ok", principal=agent if isinstance(agent, str) else None,
                          task=approval.task, detail=approval_detail(approval))  # fmt: skip

    expired = await store.expire_approvals(now=now, audit=event)
    if expired:
        APPROVALS.labels(outcome="expired").inc(len(expired))
    return expired
