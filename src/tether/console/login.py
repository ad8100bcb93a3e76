"""Logging humans in and out of the console: the login page, one-time links, logout (WEB-01, WEB-04).

A one-time link (``tether console`` prints one) is ``/login/link?t=…``. Opening it changes
nothing: it shows a button (a GET must never change state, WEB-02, and a chat client's link
preview must not use the link up). The POST spends the link's nonce in the store (single use on
every replica), then starts a session; a POST a browser marks as sent by another site
(``Sec-Fetch-Site``) is refused first (login CSRF with a link of the attacker's own). The link
is HMAC-sealed under the master key
(``rules.console_session``), names the principal and role it logs in as and expires after
``[console] link_ttl``. Login by the organisation's OIDC provider is ``console.oidc``.
Logout spends the session id, so the cookie is dead everywhere even if a copy survives.
"""

from __future__ import annotations

import logging
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from tether.audit.chain import AuditEvent
from tether.console.web import (
    COOKIE,
    Human,
    client_address,
    config,
    context,
    error_page,
    new_session,
    page,
    render,
    session_cookie,
)
from tether.errors import AccessDenied, OAuthError
from tether.rules.console_roles import ROLES
from tether.rules.console_session import LoginLink, link_key, logout_key, open_link, seal_link
from tether.store.errors import StoreError
from tether.web.forms import Form, read_form

__all__ = ["link_login", "link_page", "login_page", "logout", "mint_link", "safe_next", "start_session"]

log = logging.getLogger("tether.console")

#: how long a spent login-link nonce is remembered beyond the link's expiry
_MARGIN = 60
#: Fetch Metadata ``Sec-Fetch-Site`` values of a link POST the console's own button (or a typed
#: address) sends; ``cross-site`` / ``same-site`` is another site's form: login CSRF (WEB-04).
#: An ``Origin`` check would not do: under ``Referrer-Policy: no-referrer`` a browser sends
#: ``Origin: null`` for the console's own form. A client that sends no such header is not a browser.
_OWN_SITE = frozenset({"same-origin", "none"})


def mint_link(key: bytes, base: str, *, principal: str, role: str, now: float, ttl: int) -> str:
    """A one-time login link for ``principal`` with ``role`` (``tether console`` prints it)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    token = seal_link(key, LoginLink(principal, role, int(now) + ttl, secrets.token_urlsafe(16)))
    return f"{base}/login/link?t={token}"


def safe_next(value: str | None) -> str:
    """Where to go after login: a local path only (never another site: an open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or any(ord(c) < 0x21 for c in value):
        return "/"
    return value


async def start_session(
    request: Request, principal: str, *, roles: frozenset[str], groups: frozenset[str], via: str, name: str, next_path: str,
    issuer: str = "",
) -> Response:  # fmt: skip
    """A new session (a fresh id: never one the browser brought, ASVS V7.2.4), audited as ``console.login``."""
    ctx, cfg = context(request), config(request)
    now = ctx.now()
    session = new_session(principal, roles=roles, groups=groups, via=via, now=now, name=name, issuer=issuer)
    event = AuditEvent(kind="console.login", outcome="ok", principal=principal,
                       detail={"via": via, "roles": sorted(roles), "client": client_address(request) or ""})  # fmt: skip
    await ctx.store.append_audit(event, now=now)
    response = RedirectResponse(safe_next(next_path), status_code=303)
    session_cookie(response, ctx.console_key, session, max_age=cfg.console.session_max)
    return response


async def login_page(request: Request) -> Response:
    """How to log in here: the organisation's provider (when configured) or a one-time link."""
    cfg = config(request)
    return render(request, "login.html", {
        "title": "Log in", "oidc": bool(cfg.console_oidc.issuer), "issuer": cfg.console_oidc.issuer,
        "next": safe_next(request.query_params.get("next")),
    })  # fmt: skip


async def _refuse_link(request: Request, exc: OAuthError) -> Response:
    """A bad link proves nothing about who sent it: counted per source address, not blamed on a principal."""
    ctx = context(request)
    try:
        await ctx.refuse(exc, kind="console.login", detail={"via": "link"}, source=client_address(request))
    except StoreError:
        return error_page(request, 503, "the store is not answering; try again shortly")
    return error_page(request, exc.status, exc.description)


async def link_page(request: Request) -> Response:
    """GET ``/login/link?t=…``: check the link and show a button; nothing is spent yet."""
    ctx = context(request)
    token = request.query_params.get("t", "")
    try:
        link = open_link(ctx.console_key, token, now=ctx.now())
    except AccessDenied as exc:
        return await _refuse_link(request, exc)
    return render(request, "link.html", {"title": "Log in", "token": token, "principal": link.principal,
                                         "role": link.role})  # fmt: skip


async def link_login(request: Request) -> Response:
    """POST ``/login/link``: spend the link (once, WEB-04) and start a session."""
    ctx = context(request)
    try:
        if request.headers.get("sec-fetch-site", "same-origin") not in _OWN_SITE:
            # login CSRF: another site's form with a link of the attacker's own; nothing is spent
            raise AccessDenied("open the login link itself, not a page that posts it for you",
                               debug="login link posted by another site")  # fmt: skip
        form = await read_form(request)
        token = form.get("t") or ""
        link = open_link(ctx.console_key, token, now=ctx.now())
        if link.role not in ROLES:
            raise AccessDenied("this login link is not valid", debug=f"unknown role {link.role[:40]}")
        if not await ctx.store.spend(link_key(link.nonce), until=link.exp + _MARGIN, now=ctx.now()):
            raise AccessDenied("this login link has been used already; ask for a new one", debug="link reused")
    except OAuthError as exc:
        return await _refuse_link(request, exc)
    except StoreError:
        return error_page(request, 503, "the store is not answering; try again shortly")
    return await start_session(request, link.principal, roles=frozenset({link.role}) | frozenset({"viewer"}),
                               groups=frozenset(), via="link", name=link.principal, next_path="/")  # fmt: skip


@page("view")
async def logout(request: Request, human: Human, form: Form | None) -> Response:
    """POST ``/logout``: the session id is spent, so every copy of the cookie is refused from now on (WEB-01)."""
    ctx, cfg = context(request), config(request)
    now = ctx.now()
    await ctx.store.spend(logout_key(human.session.sid), until=human.session.iat + cfg.console.session_max + 60, now=now)
    await ctx.store.append_audit(AuditEvent(kind="console.logout", outcome="ok", principal=human.principal), now=now)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="lax")
    return response
