"""Console plumbing: the human behind a request, roles, CSRF, security headers, HTML errors.

Every console page goes through ``page``: it opens the session cookie (``rules.console_session``;
forged, idle or too old → the login page), refuses a session that logged out on any replica
(``Store.spent``), recomputes the roles from the configuration (``rules.console_roles``), checks
the CSRF token of every POST (WEB-02; a failure is counted per source, never pinned on the
human whose cookie the browser attached), refuses a role that may not do this (WEB-05: audited as
``console.refused`` with the human's principal) and re-seals the cookie with the new last-seen time.
Errors become an HTML page with the status their class carries; the reason a human reads is
the error's public description, never a trace or a secret (the debug text goes to the audit).
Security headers (WEB-03) are set on every response by ``SecurityHeaders``.
"""

from __future__ import annotations

import functools
import logging
import secrets
import unicodedata
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tether.audit.chain import AuditEvent
from tether.config import Config
from tether.errors import AccessDenied, OAuthError, TetherError, Unavailable
from tether.identity.approvers import groups_of
from tether.rules.approval import Approver
from tether.rules.console_roles import APPROVER, grant, may
from tether.rules.console_session import Session, SessionInvalid, check_csrf, csrf_token, logout_key, open_session, seal_session
from tether.store.errors import StoreError
from tether.sts.context import StsContext
from tether.web.forms import Form, read_form

__all__ = [
    "COOKIE",
    "Human",
    "Page",
    "client_address",
    "context",
    "new_session",
    "page",
    "render",
    "session_cookie",
]

log = logging.getLogger("tether.console")

#: the session cookie: ``__Host-`` (RFC 6265bis §4.1.3.2: Secure, Path=/, no Domain), HttpOnly, SameSite=Lax (WEB-01)
COOKIE = "__Host-tether-session"

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
#: WEB-03: no inline script or style, no framing, no sniffing, no referrer (a login link never leaks)
HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
_HEADER_LIST = [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]

_INVISIBLE = ("Cc", "Cf", "Co", "Cs", "Zl", "Zp")


def visible(value: Any) -> Any:
    """Jinja's ``finalize``: every value a template prints shows control and format characters
    (bidi overrides such as U+202E, zero-width characters) as ``\\u202e`` instead of obeying them
    (WEB-03; the "Trojan Source" trick, CVE-2021-42574): agent ids, purposes and audiences come
    from the store, which a database writer can fill. HTML a template built (``Markup``) is left as is."""
    if not isinstance(value, str) or isinstance(value, Markup):
        return value
    if all(unicodedata.category(c) not in _INVISIBLE for c in value):
        return value
    return "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) in _INVISIBLE else c for c in value)


_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,  # WEB-03: every value from the store is attacker-chosen text
    finalize=visible,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


class SecurityHeaders:
    """Pure ASGI middleware: ``HEADERS`` and ``Cache-Control: no-store`` on every response (WEB-03)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                static = scope["path"].startswith("/static/")
                present = {name for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in _HEADER_LIST if n not in present]
                if not static and b"cache-control" not in present:
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def context(request: Request) -> StsContext:
    ctx: StsContext = request.app.state.runtime.ctx
    return ctx


def config(request: Request) -> Config:
    cfg: Config = request.app.state.runtime.config
    return cfg


def client_address(request: Request) -> str | None:
    """The peer as the server saw it (never a forwarded header)."""
    return request.client.host if request.client else None


@dataclass(frozen=True)
class Human:
    """The human behind a request: their session, their roles now, and — when they logged in with
    the approvals' OIDC provider — the approver they are (``None`` otherwise)."""

    session: Session
    roles: frozenset[str]
    approver: Approver | None
    csrf: str

    @property
    def principal(self) -> str:
        return self.session.principal

    def may(self, kind: str) -> bool:
        return may(self.roles, kind)


def roles_of(cfg: Config, session: Session) -> frozenset[str]:
    """The roles a session holds now: a link's role as minted, an OIDC login's from the configuration,
    and none for a login by a provider the configuration no longer names (WEB-04, WEB-05)."""
    if session.via == "link":
        return session.roles
    console, oidc = cfg.console, cfg.console_oidc
    if not oidc.issuer or session.issuer != oidc.issuer:
        return frozenset()  # another provider's word (the configuration changed since): no role here
    return grant(
        session.principal,
        session.groups,
        members={"viewer": console.viewers, "operator": console.operators, "approver": console.approvers},
        group_roles={"viewer": oidc.viewer_groups, "operator": oidc.operator_groups, "approver": oidc.approver_groups},
    )


def approver_of(cfg: Config, session: Session, roles: frozenset[str]) -> Approver | None:
    """An approver only when logged in by the organisation's provider that ``[approvals]`` trusts
    (the same issuer): a login link or another provider never decides an approval (APR-02)."""
    if APPROVER not in roles or session.via != "oidc" or not cfg.approvals.issuer:
        return None
    if cfg.console_oidc.issuer != cfg.approvals.issuer:
        return None
    groups = groups_of(session.principal, {"g": sorted(session.groups)}, cfg.approver_groups, claim="g")
    return Approver(principal=session.principal, groups=groups)


def new_session(
    principal: str, *, roles: frozenset[str], groups: frozenset[str], via: str, now: float, name: str = "",
    issuer: str = "",
) -> Session:  # fmt: skip
    return Session(secrets.token_urlsafe(24), principal, roles, groups, via, int(now), int(now), name, issuer)


def session_cookie(response: Response, key: bytes, session: Session, *, max_age: int) -> None:
    response.set_cookie(COOKIE, seal_session(key, session), max_age=max_age, path="/", secure=True, httponly=True,
                        samesite="lax")  # fmt: skip


def render(request: Request, template: str, values: Mapping[str, Any], *, status: int = 200,
           human: Human | None = None) -> HTMLResponse:  # fmt: skip
    """A page from ``templates/`` (autoescaped), with the human and their CSRF token for forms."""
    names = {"title": "", **values, "human": human, "csrf": human.csrf if human else "", "path": request.url.path}
    body = _templates.get_template(template).render(names)
    return HTMLResponse(body, status_code=status)


def error_page(request: Request, status: int, message: str, *, human: Human | None = None) -> HTMLResponse:
    return render(request, "error.html", {"title": "Refused", "status": status, "message": message}, status=status,
                  human=human)  # fmt: skip


async def current_human(request: Request) -> Human:
    """The logged-in human (``SessionInvalid`` if none): cookie verified, not logged out, roles recomputed."""
    ctx, cfg = context(request), config(request)
    now = ctx.now()
    session = open_session(ctx.console_key, request.cookies.get(COOKIE), now=now,
                           idle=cfg.console.session_idle, max_age=cfg.console.session_max)  # fmt: skip
    if await ctx.store.spent(logout_key(session.sid), now=now):
        raise SessionInvalid("session logged out")
    roles = roles_of(cfg, session)
    if not roles:
        raise SessionInvalid("no console role any more")
    return Human(session, roles, approver_of(cfg, session, roles), csrf_token(ctx.console_key, session.sid))


Page = Callable[[Request, Human, Form | None], Awaitable[Response]]


class RoleRefused(AccessDenied):
    """The human's roles do not allow this request (WEB-05)."""


def page(kind: str = "view") -> Callable[[Page], Callable[[Request], Awaitable[Response]]]:
    """A console endpoint that needs a session whose roles allow ``kind`` (``view``, ``act``,
    ``approve``); a POST also needs the session's CSRF token (form field ``csrf``) and is read as
    a bounded form (``web.forms``) passed to the handler."""

    def wrap(fn: Page) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(fn)
        async def handler(request: Request) -> Response:
            ctx, cfg = context(request), config(request)
            human: Human | None = None
            try:
                human = await current_human(request)
                form = None
                if request.method == "POST":
                    try:  # an unreadable form is as unproven as a wrong token: another site can send either
                        form = await read_form(request)
                        check_csrf(ctx.console_key, human.session.sid, form.get("csrf"))
                    except OAuthError as exc:
                        return await _forged(request, exc, human)
                if not human.may(kind):
                    raise RoleRefused(f"your role ({', '.join(sorted(human.roles))}) may not do this")
                response = await fn(request, human, form)
            except SessionInvalid as exc:
                log.debug("console session refused: %s", exc.reason)
                if request.method == "GET":
                    return RedirectResponse("/login?next=" + quote(request.url.path, safe="/"), status_code=303)
                return error_page(request, 401, "your session has ended; log in again")
            except (TetherError, StoreError) as exc:
                return await _refused(request, exc, human)
            if not any(k == b"set-cookie" and v.startswith(COOKIE.encode()) for k, v in response.raw_headers):
                touched = human.session.touched(ctx.now())  # the idle timeout restarts (WEB-01)
                session_cookie(response, ctx.console_key, touched, max_age=cfg.console.session_max)
            return response

        return handler

    return wrap


async def _forged(request: Request, exc: OAuthError, human: Human) -> Response:
    """A POST without this session's CSRF token, or with a form that cannot be read (WEB-02).

    The cookie came with it only because the browser attaches it to any request, another site's
    included: the human is not proven to have sent it, so it is never pinned on them
    (``claimed_principal``, not ``principal``: the refusal detectors skip it) and is counted per
    source address, not written once per forged request."""
    ctx = context(request)
    try:
        await ctx.refuse(exc, kind="console.refused", source=client_address(request),
                         detail={"claimed_principal": human.principal, "path": request.url.path[:200]})  # fmt: skip
    except StoreError:
        return error_page(request, 503, "the store is not answering; nothing was done", human=human)
    return error_page(request, exc.status, exc.description, human=human)


async def _refused(request: Request, exc: Exception, human: Human | None) -> Response:
    """An HTML page for a refusal; a human's refused POST is audited with who they are (WEB-05)."""
    ctx = context(request)
    if isinstance(exc, Unavailable | StoreError):
        return error_page(request, 503, "the store or the policy engine is not answering; try again shortly", human=human)
    if not isinstance(exc, OAuthError):
        log.error("console refusal without a wire error: %s", type(exc).__name__)
        return error_page(request, 400, "the request was refused", human=human)
    if human is not None and request.method == "POST":
        event = AuditEvent(kind="console.refused", outcome="refused", principal=human.principal, error=exc.error,
                           detail={"reason": exc.debug[:300] or exc.description[:300], "path": request.url.path[:200],
                                   "via": human.session.via})  # fmt: skip
        try:
            await ctx.store.append_audit(event, now=ctx.now())
        except StoreError:
            return error_page(request, 503, "the store is not answering; nothing was done", human=human)
    return error_page(request, exc.status, exc.description, human=human)
