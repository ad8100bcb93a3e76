"""The approvals queue in the console: what is held for a human's yes, and deciding it (SECURITY APR-02..05, WEB-02, WEB-05).

Everything goes through the approvers' use cases (``tether.sts.approvals``), so the console
sees and decides exactly as the API does: an approver (``Human.approver``: logged in with the
provider that ``[approvals] issuer`` names) sees the approvals whose every group they satisfy and
decides with separation of duties checked; any other human sees every approval read-only, as an
admin (``Admin``: sees all, decides none). An approval the viewer may not see is the same "not
found" as an unknown id (no existence oracle).

Deciding is two steps: ``GET /approvals/{id}/{approve|deny}`` shows what will be decided and a
form (GET changes nothing, WEB-02); its ``POST`` (CSRF-checked by ``page``) decides through
``decide(..., via="console")``, which writes ``approval.approved``/``approval.denied`` with the
approver as principal. A human who is not an approver gets a 403 that ``page`` audits as
``console.refused`` (WEB-05).
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from tether.console.pages.shown import compact, plain, text_param, when
from tether.console.web import Human, config, context, page, render
from tether.errors import AccessDenied, InvalidRequest, NotFoundError
from tether.model import Approval, ApprovalStatus
from tether.rules.approval import Approver, check_approver, valid_approval_id
from tether.sts.approvals import MAX_REASON, Admin, Viewer, decide, get_approval, list_approvals
from tether.web.forms import Form

__all__ = ["ROUTES"]

_DECISIONS = ("approve", "deny")
_STATUSES = ("pending", "approved", "denied", "expired", "all")
_STATUS = re.compile("|".join(_STATUSES))
_NOT_APPROVER = ("you are not logged in as an approver: decisions need a login with the approvals' provider "
                 "([approvals] issuer) and the approver role")  # fmt: skip


def _viewer(human: Human) -> Viewer:
    return human.approver if human.approver is not None else Admin(human.principal)


def _approver(human: Human) -> Approver:
    if human.approver is None:
        raise AccessDenied(_NOT_APPROVER)
    return human.approver


def _id(request: Request) -> str:
    approval_id = str(request.path_params["approval_id"])
    if not valid_approval_id(approval_id):
        raise NotFoundError("approval not found")
    return approval_id


def _summary(approval: Approval, now: float) -> dict[str, Any]:
    request = approval.request
    return {
        "id": approval.id,
        "status": approval.effective_status(now).value,
        "task": plain(approval.task, limit=80),
        "task_raw": approval.task,
        "agent": plain(request.get("agent"), limit=200),
        "requester": plain(request.get("client"), limit=200),
        "tool": plain(approval.view.get("tool"), limit=80),
        "groups": ", ".join(plain(g, limit=60) for g in approval.groups),
        "created": when(approval.created_at),
        "expires": when(approval.expires_at),
        "decided_by": plain(approval.decided_by, limit=200),
    }


def _view_rows(view: dict[str, Any]) -> list[tuple[str, str]]:
    """The approval's view as the approver reads it (what the API returns), each value compact JSON or plain text."""
    rows = []
    for key in sorted(view):
        value = view[key]
        rows.append((plain(key, limit=80), plain(value, limit=1000) if isinstance(value, str) else compact(value, limit=1000)))
    return rows


@page("view")
async def queue(request: Request, human: Human, form: Form | None) -> Response:
    """Pending approvals (or another status), newest first, only those the human may see."""
    ctx, cfg = context(request), config(request)
    status = text_param(request, "status", limit=10, pattern=_STATUS) or "pending"
    before = text_param(request, "before", limit=80)
    if before is not None and not valid_approval_id(before):
        raise InvalidRequest("`before` must be an approval id")
    found = await list_approvals(ctx, _viewer(human), status=None if status == "all" else status, task=None,
                                 limit=cfg.console.page_size, before=before)  # fmt: skip
    recent: list[Approval] = []
    if status == "pending" and before is None:
        everything = await list_approvals(ctx, _viewer(human), status=None, task=None, limit=20, before=None)
        recent = [a for a in everything if a.effective_status(ctx.now()) is not ApprovalStatus.PENDING]
    now = ctx.now()
    more = found[-1].id if len(found) == cfg.console.page_size else None
    return render(request, "approvals.html", {
        "title": "Approvals", "rows": [_summary(a, now) for a in found], "recent": [_summary(a, now) for a in recent],
        "status": status, "statuses": _STATUSES, "before": before, "more": more,
        "decides": human.approver is not None, "reason": _NOT_APPROVER,
    }, human=human)  # fmt: skip


@page("view")
async def detail(request: Request, human: Human, form: Form | None) -> Response:
    """One approval as the approver sees it: the sealed view, groups, expiry, who asks, and the decision."""
    ctx = context(request)
    approval = await get_approval(ctx, _viewer(human), _id(request))
    now = ctx.now()
    summary = _summary(approval, now)
    return render(request, "approvals_detail.html", {
        "title": "Approval", "a": summary, "view": _view_rows(approval.view),
        "policies": ", ".join(plain(p, limit=80) for p in approval.policies),
        "aud": plain(approval.request.get("aud"), limit=200), "sub": plain(approval.request.get("sub"), limit=200),
        "tctx": plain(approval.request.get("tctx"), limit=80),
        "reason_given": plain(approval.reason, limit=MAX_REASON), "uses": approval.uses, "until": when(approval.until),
        "decided_at": when(approval.decided_at),
        "decides": human.approver is not None and summary["status"] == "pending", "approver": human.approver is not None,
        "why_not": _NOT_APPROVER,
    }, human=human)  # fmt: skip


def _decision(request: Request) -> str:
    decision = str(request.path_params["decision"])
    if decision not in _DECISIONS:
        raise NotFoundError("no such approval action")
    return decision


@page("approve")
async def confirm(request: Request, human: Human, form: Form | None) -> Response:
    """The confirmation step: what will be approved or denied, and the form that does it."""
    ctx = context(request)
    approver = _approver(human)
    decision = _decision(request)
    approval = await get_approval(ctx, approver, _id(request))
    task = await ctx.task(approval.task)
    if task is None:
        raise NotFoundError("approval not found")
    check_approver(approval, approver, task=task)  # separation of duties, told before the form (decide checks it again)
    settings = ctx.settings.approvals
    return render(request, "approvals_confirm.html", {
        "title": "Approve" if decision == "approve" else "Deny", "decision": decision,
        "a": _summary(approval, ctx.now()), "view": _view_rows(approval.view), "max_uses": settings.max_uses,
        "max_window": settings.max_window, "default_window": settings.ttl, "max_reason": MAX_REASON,
    }, human=human)  # fmt: skip


def _number(form: Form, name: str, default: int) -> int:
    raw = (form.get(name) or "").strip()
    if not raw:
        return default
    if not raw.isdigit() or len(raw) > 9:
        raise InvalidRequest(f"`{name}` must be a whole number")
    return int(raw)


@page("approve")
async def decide_page(request: Request, human: Human, form: Form | None) -> Response:
    """Approve or deny as the logged-in approver (``decide``: separation of duties, pending, grant bounds)."""
    assert form is not None  # a POST: ``page`` read it
    ctx = context(request)
    approver = _approver(human)
    decision = _decision(request)
    approval_id = _id(request)
    reason = form.get("reason") or ""
    if len(reason) > MAX_REASON or not reason.replace("\n", " ").replace("\r", " ").isprintable():
        raise InvalidRequest(f"the reason must be printable text of at most {MAX_REASON} characters")
    uses, window = _number(form, "uses", 1), _number(form, "window", 0)
    await decide(ctx, approver, approval_id, decision, uses=uses, window=window, reason=reason, via="console")
    return RedirectResponse(f"/approvals/{approval_id}", status_code=303)


ROUTES: list[BaseRoute] = [
    Route("/approvals", queue, methods=["GET"]),
    Route("/approvals/{approval_id}", detail, methods=["GET"]),
    Route("/approvals/{approval_id}/{decision}", confirm, methods=["GET"]),
    Route("/approvals/{approval_id}/{decision}", decide_page, methods=["POST"]),
]
