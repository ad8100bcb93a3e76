"""The approvers' use cases: list, read and decide held requests (SECURITY APR-02..APR-05) — no HTTP.

Who sees what: an approver sees an approval whose every group they satisfy (``subject``: they
are the task's ``on_behalf_of``; any other group: ``[[approver_groups]]`` membership, by list or
by the provider's group claim); an admin sees all. Anything else answers exactly as an unknown
id does, so an approval's existence is not told to whoever may not see it.

What is shown is what was sealed: every approval's ``request_mac`` (and, once decided, its
``decision_mac``) is checked under the master-key-derived key before it is shown or decided
(``rules.approval_seal``); a record that fails is logged and treated as absent (APR-05).

Deciding (APR-02, APR-03): the approver is checked for separation of duties against the task
(``rules.approval.check_approver``), the approval must still be pending and unexpired
(``check_pending``), the grant is bounded by ``[approvals] max_uses`` / ``max_window``
(``check_grant``), the decision is sealed (``decision_mac``) and written by a compare-and-set
with its ``approval.approved`` / ``approval.denied`` audit record (``Store.decide_approval``).

One-time links (APR-04): a link names one approval, one approver, one decision, an expiry and a
nonce, under an HMAC (``rules.approval_seal.verify_link``). The approver is re-checked when the
link is used — against the ``members`` lists only, since a link is minted before anyone could
present the provider's group claim — and the nonce is spent once (``Store.spend``: a durable
mark, so a lost cache never makes a used link usable again).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace

from tether.audit.chain import AuditEvent
from tether.config.approvers import ApproverGroup
from tether.errors import AccessDenied, InvalidRequest, NotFoundError
from tether.metrics import APPROVALS
from tether.model import Approval, ApprovalStatus, Task
from tether.rules.approval import (
    SUBJECT_GROUP,
    Approver,
    check_approver,
    check_grant,
    check_pending,
    sealed_subject,
    valid_approval_id,
)
from tether.rules.approval_seal import ApprovalTampered, Link, check_sealed, decision_mac, sign_link, verify_link
from tether.store.errors import Conflict, NotFound
from tether.sts.context import StsContext

__all__ = [
    "MAX_REASON",
    "Admin",
    "Viewer",
    "decide",
    "decide_by_link",
    "get_approval",
    "inspect_link",
    "link_approver",
    "link_recipients",
    "list_approvals",
    "mint_links",
    "satisfies",
]

log = logging.getLogger("tether.sts")

#: longest free-text reason an approver may give (it goes into the audit record)
MAX_REASON = 500
#: store pages read to fill one page of approvals the caller may see
MAX_SCAN_PAGES = 5
#: how long a spent link nonce is remembered beyond the link's own expiry
LINK_MARGIN = 60

_NOT_FOUND = "approval not found"
_STATUS = {"approve": ApprovalStatus.APPROVED, "deny": ApprovalStatus.DENIED}


@dataclass(frozen=True)
class Admin:
    """A tether admin workload (its DPoP-bound admin token, as for ``/tasks``): sees every approval, decides none."""

    principal: str


Viewer = Approver | Admin


def satisfies(approver: Approver, approval: Approval, task: Task | None) -> bool:
    """Does ``approver`` satisfy every group ``approval`` names (the visibility rule)?"""
    for group in approval.groups:
        if group == SUBJECT_GROUP:
            if task is None or approver.principal != sealed_subject(approval, task):
                return False
        elif group not in approver.groups:
            return False
    return True


def sealed(ctx: StsContext, approval: Approval) -> bool:
    """The request MAC verifies, and the decision MAC too once a human decided (APR-05)."""
    decided = approval.status in (ApprovalStatus.APPROVED, ApprovalStatus.DENIED)
    try:
        check_sealed(ctx.approval_key, approval, decided=decided)
    except ApprovalTampered as exc:
        log.error("%s: refusing to show or decide it", exc)
        return False
    return True


async def _visible(ctx: StsContext, viewer: Viewer, approval: Approval) -> bool:
    if not sealed(ctx, approval):
        return False
    if isinstance(viewer, Admin):
        return True
    return satisfies(viewer, approval, await ctx.task(approval.task))


async def _load(ctx: StsContext, viewer: Viewer, approval_id: str) -> Approval:
    approval = await ctx.store.get_approval(approval_id) if valid_approval_id(approval_id) else None
    if approval is None or not await _visible(ctx, viewer, approval):
        raise NotFoundError(_NOT_FOUND, debug=f"approval `{approval_id:.40}` unknown, tampered or not visible")
    return approval


async def get_approval(ctx: StsContext, viewer: Viewer, approval_id: str) -> Approval:
    """One approval the viewer may see; unknown, tampered and invisible ids are the same ``not_found``."""
    return await _load(ctx, viewer, approval_id)


def _status(raw: str | None) -> ApprovalStatus | None:
    if raw is None:
        return None
    try:
        return ApprovalStatus(raw)
    except ValueError:
        raise InvalidRequest(f"`status` must be one of {', '.join(s.value for s in ApprovalStatus)}") from None


async def list_approvals(
    ctx: StsContext, viewer: Viewer, *, status: str | None, task: str | None, limit: int, before: str | None
) -> list[Approval]:
    """Newest first, only those the viewer may see; ``before`` pages from an id (exclusive).

    The store filters by status and task; visibility is applied here, reading a few store
    pages at most to fill the caller's page."""
    wanted = _status(status)
    if before is not None and not valid_approval_id(before):
        raise InvalidRequest("`before` must be an approval id")
    if task is not None and (not task or len(task) > 200):
        raise InvalidRequest("`task` must be a task id")
    out: list[Approval] = []
    cursor = before
    for _ in range(MAX_SCAN_PAGES):
        page = await ctx.store.list_approvals(status=wanted, task=task, now=ctx.now(), limit=limit, before=cursor)
        for approval in page:
            if await _visible(ctx, viewer, approval):
                out.append(approval)
                if len(out) == limit:
                    return out
        if len(page) < limit:
            break
        cursor = page[-1].id
    return out


def _reason(reason: object) -> str:
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise InvalidRequest(f"`reason` must be a string of at most {MAX_REASON} characters")
    return reason


async def _write_decision(
    ctx: StsContext, approval: Approval, approver: Approver, decision: str, *, uses: object, window: object,
    reason: str, via: str,
) -> Approval:  # fmt: skip
    """Seal the decision and write it with its audit record (a compare-and-set on ``pending``)."""
    now = ctx.now()
    check_pending(approval, now=now)
    settings = ctx.settings.approvals
    granted, until = 0, None
    if decision == "approve":
        granted, until = check_grant(uses, window, now=int(now), max_uses=settings.max_uses,
                                     max_window=settings.max_window, default_window=settings.ttl)  # fmt: skip
    decided = replace(
        approval, status=_STATUS[decision], decided_by=approver.principal, decided_at=int(now), reason=reason,
        uses=granted, until=until,
    )  # fmt: skip
    decided = replace(decided, decision_mac=decision_mac(ctx.approval_key, decided))
    request = approval.request
    detail: dict[str, object] = {
        "approval": approval.id,
        "groups": list(approval.groups),
        "policies": list(approval.policies),
        "aud": request.get("aud"),
        "tool": approval.view.get("tool"),
        "tctx": request.get("tctx"),
        "via": via,
    }
    if decision == "approve":
        detail.update({"uses": granted, "until": until})
    if reason:
        detail["reason"] = reason
    event = AuditEvent(kind=f"approval.{decided.status.value}", outcome="ok", principal=approver.principal,
                       task=approval.task, detail=detail)  # fmt: skip
    try:
        stored = await ctx.store.decide_approval(decided, now=now, audit=event)
    except NotFound:
        raise NotFoundError(_NOT_FOUND, debug=f"approval {approval.id} vanished before its decision") from None
    except Conflict:
        raise InvalidRequest("the approval is already decided", debug=f"approval {approval.id} decided concurrently") from None
    APPROVALS.labels(outcome=stored.status.value).inc()
    return stored


async def _task_of(ctx: StsContext, approval: Approval) -> Task:
    task = await ctx.task(approval.task)
    if task is None:
        raise NotFoundError(_NOT_FOUND, debug=f"approval {approval.id}: task {approval.task} not found")
    return task


async def decide(
    ctx: StsContext, approver: Approver, approval_id: str, decision: str, *, uses: object = 1, window: object = 0,
    reason: object = "", via: str = "api",
) -> Approval:  # fmt: skip
    """An approver approves or denies through the API or the console (``via``, recorded in the audit; APR-02, APR-03).

    An approval the approver may not see is ``not_found`` (as for ``GET``); one they see but
    are party to (the agent, the requester, an actor, the subject, the task's creator) is
    ``access_denied``; an expired one ``expired_token``; a decided one ``invalid_request``."""
    if decision not in _STATUS:
        raise NotFoundError("no such approval action")
    text = _reason(reason)
    approval = await _load(ctx, approver, approval_id)
    task = await _task_of(ctx, approval)
    check_approver(approval, approver, task=task)
    return await _write_decision(ctx, approval, approver, decision, uses=uses, window=window, reason=text, via=via)


# -- one-time links (APR-04) ------------------------------------------------------------


def link_approver(groups: Sequence[ApproverGroup], principal: str) -> Approver:
    """The approver a link names, with the groups whose ``members`` list them (never ``idp_groups``:
    a claim only its holder's ID token proves, and a link is used without one)."""
    return Approver(principal=principal, groups=frozenset(g.name for g in groups if principal in g.members))


def link_recipients(groups: Sequence[ApproverGroup], approval: Approval, task: Task) -> list[str]:
    """Everyone a link is minted for: listed members of the named groups (and, for ``subject``, the
    task's user) who satisfy every group and pass separation of duties, sorted."""
    named = set(approval.groups)
    candidates = {m for g in groups if g.name in named for m in g.members}
    if SUBJECT_GROUP in named and task.on_behalf_of:
        candidates.add(task.on_behalf_of)
    out = []
    for principal in sorted(candidates):
        try:
            check_approver(approval, link_approver(groups, principal), task=task)
        except AccessDenied:
            continue
        out.append(principal)
    return out


def mint_links(ctx: StsContext, approval: Approval, task: Task, *, base: str, now: float) -> dict[str, dict[str, str]]:
    """``{principal: {"approve": URL, "deny": URL}}``, each link valid for ``[approvals] link_ttl`` seconds."""
    exp = int(now) + ctx.settings.approvals.link_ttl
    links: dict[str, dict[str, str]] = {}
    for principal in link_recipients(ctx.settings.approver_groups, approval, task):
        pair = {}
        for decision in _STATUS:
            token = sign_link(ctx.link_key, Link(approval.id, principal, decision, exp, secrets.token_urlsafe(16)))
            pair[decision] = f"{base.rstrip('/')}/approvals/link/{token}"
        links[principal] = pair
    return links


async def inspect_link(ctx: StsContext, token: str) -> tuple[Link, Approval]:
    """What a link would do, checked as far as can be without spending it (the confirmation page)."""
    link = verify_link(ctx.link_key, token, now=ctx.now())
    approval = await ctx.store.get_approval(link.approval) if valid_approval_id(link.approval) else None
    if approval is None or not sealed(ctx, approval):
        raise NotFoundError(_NOT_FOUND, debug=f"link for approval `{link.approval:.40}`: unknown or tampered")
    task = await _task_of(ctx, approval)
    check_approver(approval, link_approver(ctx.settings.approver_groups, link.approver), task=task)
    return link, approval


async def decide_by_link(ctx: StsContext, token: str, *, reason: object = "") -> Approval:
    """Perform a link's decision once: tag and expiry, the approver re-checked, the nonce spent, then the decision."""
    text = _reason(reason)
    link, approval = await inspect_link(ctx, token)
    if not await ctx.store.spend("approval-link:" + link.nonce, until=link.exp + LINK_MARGIN, now=ctx.now()):
        raise AccessDenied("the link has already been used", debug=f"link nonce for {link.approval} replayed")
    approver = link_approver(ctx.settings.approver_groups, link.approver)
    return await _write_decision(ctx, approval, approver, link.decision, uses=1, window=0, reason=text, via="link")
