"""One-time approve/deny links (SECURITY APR-04): ``GET`` shows a confirmation page, ``POST`` decides.

A link arrives by the webhook (chat, e-mail), where previewers and scanners fetch URLs: so
``GET`` never changes anything (RFC 9110 §9.2.1, safe methods); only the page's form, a
``POST`` to the same URL, performs the decision. Every value on the page comes from the store
and much of it was chosen by the requester (agent ids, purposes, tool arguments), so every
value is HTML-escaped and the page carries a CSP that allows no script, style or frame
(``default-src 'none'``), posts only to itself and cannot be framed; ``Referrer-Policy:
no-referrer`` keeps the link out of any other site's logs, ``Cache-Control: no-store`` out of
caches. The link itself is never logged nor audited: refusals record the path without it.

A caller asking for JSON (``Accept: application/json``) gets the RFC 6749 §5.2 body instead of
the page, so scripts and tests read the exact error code.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from tether.errors import OAuthError, TetherError
from tether.model import Approval, ApprovalStatus
from tether.rules.approval_seal import Link
from tether.store.errors import StoreError
from tether.sts.approvals import decide_by_link, inspect_link
from tether.sts.routes.approvals import refusal
from tether.sts.routes.common import context
from tether.web.errors import NO_STORE, wire_code
from tether.web.forms import read_form

__all__ = ["PAGE_HEADERS", "approval_link_endpoint"]

#: the link page's response headers (CSP without any source but its own form target)
PAGE_HEADERS = {
    **NO_STORE,
    "Content-Security-Policy": "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
#: what refusals of a link are audited under: never the link itself
_AUDIT_PATH = "/approvals/link"
_VERB = {"approve": "Approve", "deny": "Deny"}
_FIELDS = (
    ("agent", "Agent"),
    ("requester", "Requested by"),
    ("on_behalf_of", "On behalf of"),
    ("task", "Task"),
    ("created_by", "Task created by"),
    ("purpose", "Task purpose"),
    ("audience", "Audience"),
    ("scope", "Scope"),
    ("actors", "Acting services"),
    ("kind", "Kind of request"),
    ("tool", "Tool"),
    ("arguments", "Arguments"),
    ("tctx", "Call digest (tctx)"),
)


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(value) or "-"
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def _visible(text: str) -> str:
    """``text`` with every character that is not printable but a newline as a ``\\uXXXX`` escape.

    Escaping markup is not enough (APR-05): a right-to-left override (U+202E) makes ``\\u202eEMCA``
    read ``ACME``, a zero-width space hides in an account number; what the approver reads must
    be the bound text, so format and control characters are shown, not rendered."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\n" else f"\\u{ord(c):04x}" for c in text)


def _e(value: Any) -> str:
    return html.escape(_visible(_text(value)), quote=True)


def _when(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _page(title: str, body: str, *, status: int = 200) -> HTMLResponse:
    document = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex, nofollow">'
        f"<title>{html.escape(title)}</title></head>\n<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )
    return HTMLResponse(document, status_code=status, headers=PAGE_HEADERS)


def _request_table(view: Mapping[str, Any], approval: Approval) -> str:
    rows = [f"<tr><th>{html.escape(label)}</th><td><pre>{_e(view.get(key))}</pre></td></tr>"
            for key, label in _FIELDS if key in view]  # fmt: skip
    rows.append(f"<tr><th>Approval</th><td><pre>{_e(approval.id)}</pre></td></tr>")
    rows.append(f"<tr><th>Approver groups</th><td><pre>{_e(list(approval.groups))}</pre></td></tr>")
    rows.append(f"<tr><th>Expires</th><td>{_e(_when(approval.expires_at))}</td></tr>")
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def _confirm(link: Link, approval: Approval, now: float) -> HTMLResponse:
    verb = _VERB[link.decision]
    status = approval.effective_status(now)
    intro = f"<p>{_e(link.approver)}: {verb.lower()} this request?</p>"
    if status is ApprovalStatus.PENDING:
        form = (
            '<form method="post">'
            '<p><label for="reason">Reason (optional)</label><br>'
            '<textarea id="reason" name="reason" maxlength="500" rows="3" cols="60"></textarea></p>'
            f'<p><button type="submit">{verb}</button></p></form>'
        )
    else:
        form = f"<p>This request is already {_e(status.value)}; nothing more can be decided.</p>"
    return _page(f"{verb} a held request", intro + _request_table(approval.view, approval) + form)


def _done(approval: Approval) -> HTMLResponse:
    words = "approved" if approval.status is ApprovalStatus.APPROVED else "denied"
    body = f"<p>The request was {words} by {_e(approval.decided_by)}.</p>" + _request_table(approval.view, approval)
    return _page(f"Request {words}", body)


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


async def approval_link_endpoint(request: Request) -> Response:
    """``GET`` renders the confirmation page; ``POST`` (its form) performs the decision, once."""
    ctx = context(request)
    token = request.path_params["token"]
    try:
        if request.method == "POST":
            empty = "content-type" not in request.headers and request.headers.get("content-length", "0") == "0"
            reason = "" if empty else (await read_form(request)).get("reason") or ""
            approval = await decide_by_link(ctx, token, reason=reason)
            if _wants_json(request):
                return JSONResponse(approval.as_json(ctx.now()), headers=NO_STORE)
            return _done(approval)
        link, approval = await inspect_link(ctx, token)
        if _wants_json(request):
            return JSONResponse(approval.as_json(ctx.now()), headers=NO_STORE)
        return _confirm(link, approval, ctx.now())
    except (TetherError, StoreError) as exc:
        response = await refusal(request, ctx, exc, name="approval_link", path=_AUDIT_PATH, challenge=False)
        if _wants_json(request):
            return response
        code = wire_code(exc)
        text = exc.description if isinstance(exc, OAuthError) else "the service cannot decide right now; retry shortly"
        body = f'<p>This link cannot be used: <span id="error">{_e(code)}</span>: {_e(text)}</p>'
        return _page("Link refused", body, status=response.status_code)
