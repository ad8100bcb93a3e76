"""Console login with the organisation's OIDC provider: authorization code flow with PKCE (WEB-04).

``GET /login/oidc?next=/path`` (OIDC Core 1.0 §3.1.2.1) discovers the provider (OIDC Discovery
1.0 §4: ``{issuer}/.well-known/openid-configuration``, which must name exactly the configured
``issuer``; cached), draws a random ``state`` (login CSRF, RFC 6749 §10.12), a random ``nonce``
(code injection, OIDC Core §15.5.2) and a PKCE S256 verifier (RFC 7636 §4.1-4.2), keeps them in
a sealed ten-minute cookie ``__Host-tether-login`` (``rules.console_session.LoginState``) and sends
the browser to the provider with the exact redirect URI ``{public_url}/login/callback``.

``GET /login/callback?code&state`` refuses — an HTML page, audited as ``console.login`` by the
client's address, since nobody is proven yet — a missing, forged or expired login cookie, a
``state`` that is not the cookie's, a second callback for the same login (the state is spent in
the store, so a copy of the cookie cannot replay it), an ``error`` from the provider, a mismatched
``iss`` (RFC 9207), and a bad token response or ID token. The code is exchanged at the token
endpoint with the verifier (``client_secret_basic`` when ``client_secret_env`` names a secret,
RFC 6749 §2.3.1; a public client otherwise) and the ID token is verified as OIDC Core §3.1.3.7
says: signature with a key from the discovered ``jwks_uri`` only, an ``alg`` of ``[console.oidc]
algorithms`` (never ``none`` or HMAC), ``iss`` exact, ``aud`` naming the client (and ``azp`` when
several audiences), ``exp``/``iat``, and the cookie's ``nonce``. The principal is rendered from the
claims by ``[console.oidc] principal``; one read from ``email`` needs ``email_verified`` true (OIDC
Core §5.1). Groups are the ``group_claim`` values the configuration names, roles as
``web.roles_of`` computes them; a proven human without a role is refused and audited with their
principal (WEB-05).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
import os
import re
import secrets
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httpx
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from tether.config import Config
from tether.config.console import ConsoleOidcSettings
from tether.console.login import safe_next, start_session
from tether.console.web import client_address, config, context, error_page, new_session, roles_of
from tether.errors import AccessDenied, OAuthError, TemporarilyUnavailable
from tether.identity.checks import Acceptance, IdentityError, check_typ, unverified, verify_signed
from tether.identity.jwks_cache import MAX_DOCUMENT_BYTES, KeySet, StaticKeySource, fetch_json, load_json, parse_jwks
from tether.identity.oidc import render_principal
from tether.model import IdentityKind
from tether.rules.console_session import LOGIN_TTL, LoginState, login_key, open_login, seal_login
from tether.rules.dpop import numeric_date
from tether.rules.signed_token import b64url
from tether.store.errors import StoreError
from tether.streams import read_at_most

__all__ = ["LOGIN_COOKIE", "OIDC_ROUTES", "callback", "redirect_uri", "start_login"]

log = logging.getLogger("tether.console")

#: the login-in-flight cookie: ``__Host-`` (Secure, Path=/, no Domain), HttpOnly, SameSite=Lax
#: (the provider's redirect back is a top-level GET, so Lax still sends it)
LOGIN_COOKIE = "__Host-tether-login"

#: seconds a discovery document / a key set is trusted before it is fetched again
_META_TTL = 3600
_KEYS_TTL = 300
#: an unknown ``kid`` refreshes the keys at most this often; a failed discovery is retried after this
_KEYS_MIN_REFRESH = 30
_RETRY = 10
#: the longest an ID token may live (providers issue one hour); it is used once, at login
_MAX_ID_TOKEN_LIFETIME = 86400
_MAX_PARAM = 2048
_TIMEOUT = httpx.Timeout(5.0)
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ProviderUnavailable(TemporarilyUnavailable):
    """The provider's discovery, keys or token endpoint did not answer usably (503)."""


@dataclass(frozen=True)
class Metadata:
    """What the console uses of a discovery document."""

    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    #: RFC 9207 §3: the provider says it puts ``iss`` in every authorization response
    iss_parameter: bool


@dataclass
class _Cache:
    meta: Metadata | None = None
    meta_at: float = float("-inf")
    failed_at: float = float("-inf")
    keys: KeySet | None = None
    keys_at: float = float("-inf")


def _cache(request: Request, issuer: str) -> _Cache:
    """The discovery and key cache of ``issuer`` for this app (kept on ``app.state``)."""
    caches: dict[str, _Cache] | None = getattr(request.app.state, "oidc_cache", None)
    if caches is None:
        caches = {}
        request.app.state.oidc_cache = caches
    return caches.setdefault(issuer, _Cache())


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context per process: building one loads the CA bundle (tens of ms of CPU), and
    ``/login/oidc`` and ``/login/callback`` answer strangers, so each must not build its own."""
    return httpx.create_ssl_context(trust_env=False)


def _client() -> httpx.AsyncClient:
    """Never a redirect, never a proxy from the environment, bounded time (documents are bounded by ``fetch_json``)."""
    return httpx.AsyncClient(follow_redirects=False, timeout=_TIMEOUT, trust_env=False, verify=_tls())


def redirect_uri(cfg: Config) -> str:
    """The exact redirect URI registered at the provider (WEB-04): ``{public_url}/login/callback``."""
    return cfg.console.base_url() + "/login/callback"


def _endpoint(doc: Mapping[str, Any], name: str, issuer: str) -> str:
    """An endpoint URL from discovery: absolute, no fragment, ``https`` unless the issuer itself is ``http``."""
    value = doc.get(name)
    if not isinstance(value, str) or len(value) > _MAX_PARAM:
        raise ProviderUnavailable("the login provider's configuration is not usable", debug=f"discovery: no {name}")
    parts = urlsplit(value)
    allowed = ("https", "http") if urlsplit(issuer).scheme == "http" else ("https",)
    if parts.scheme not in allowed or not parts.netloc or parts.fragment:
        raise ProviderUnavailable("the login provider's configuration is not usable", debug=f"discovery: bad {name}")
    return value


async def _metadata(request: Request, client: httpx.AsyncClient, issuer: str, *, now: float) -> Metadata:
    """The provider's discovery document (OIDC Discovery 1.0 §4.3: its ``issuer`` must be exactly ours), cached."""
    cache = _cache(request, issuer)
    if cache.meta is not None and now - cache.meta_at < _META_TTL:
        return cache.meta
    if now - cache.failed_at < _RETRY and cache.meta is None:
        raise ProviderUnavailable("the login provider is not answering; try again shortly", debug="discovery failed recently")
    try:
        doc = await fetch_json(client, issuer + "/.well-known/openid-configuration")
        if not isinstance(doc, dict) or doc.get("issuer") != issuer:
            raise ProviderUnavailable("the login provider's configuration is not usable",
                                      debug="discovery document names a different issuer")  # fmt: skip
        methods = doc.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise ProviderUnavailable("the login provider does not support PKCE S256", debug="no S256 in discovery")
        meta = Metadata(
            authorization_endpoint=_endpoint(doc, "authorization_endpoint", issuer),
            token_endpoint=_endpoint(doc, "token_endpoint", issuer),
            jwks_uri=_endpoint(doc, "jwks_uri", issuer),
            iss_parameter=doc.get("authorization_response_iss_parameter_supported") is True,
        )
    except (httpx.HTTPError, ValueError, ProviderUnavailable) as exc:
        if cache.meta is not None:  # keep the last good document while the provider hiccups
            log.warning("console oidc: discovery refresh failed (%s); keeping the last document", type(exc).__name__)
            return cache.meta
        cache.failed_at = now
        if isinstance(exc, ProviderUnavailable):
            raise
        raise ProviderUnavailable("the login provider is not answering; try again shortly",
                                  debug=f"discovery failed: {type(exc).__name__}") from exc  # fmt: skip
    cache.meta, cache.meta_at = meta, now
    return meta


async def _keys(request: Request, client: httpx.AsyncClient, issuer: str, meta: Metadata, *, kid: object, now: float) -> KeySet:
    """The provider's signing keys from the discovered ``jwks_uri`` only (never a key the token names),
    refreshed when old or on an unknown ``kid`` at most every ``_KEYS_MIN_REFRESH`` seconds."""
    cache = _cache(request, issuer)
    stale = cache.keys is None or now - cache.keys_at >= _KEYS_TTL
    unknown = cache.keys is not None and cache.keys.find(kid) is None and now - cache.keys_at >= _KEYS_MIN_REFRESH
    if stale or unknown:
        try:
            keys = parse_jwks(await fetch_json(client, meta.jwks_uri))
        except (httpx.HTTPError, ValueError) as exc:
            if cache.keys is None:
                raise ProviderUnavailable("the login provider is not answering; try again shortly",
                                          debug=f"jwks fetch failed: {type(exc).__name__}") from exc  # fmt: skip
            log.warning("console oidc: key refresh failed (%s); keeping the last keys", type(exc).__name__)
        else:
            cache.keys, cache.keys_at = keys, now
    assert cache.keys is not None
    return cache.keys


def _challenge(verifier: str) -> str:
    """RFC 7636 §4.2: ``BASE64URL(SHA256(ASCII(code_verifier)))``."""
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


async def start_login(request: Request) -> Response:
    """GET ``/login/oidc?next=/path``: the authorization request (OIDC Core §3.1.2.1) with state, nonce and PKCE S256."""
    ctx, cfg = context(request), config(request)
    settings = cfg.console_oidc
    if not settings.issuer:
        return error_page(request, 404, "login with an OIDC provider is not configured here")
    now = ctx.now()
    try:
        async with _client() as client:
            meta = await _metadata(request, client, settings.issuer, now=now)
    except OAuthError as exc:
        log.warning("console oidc: cannot start a login: %s", exc.debug[:200])
        return error_page(request, exc.status, exc.description)
    # RFC 7636 §4.1: 43-128 characters of the unreserved set; 48 random bytes give 64 base64url characters
    login = LoginState(state=secrets.token_urlsafe(32), nonce=secrets.token_urlsafe(32), verifier=secrets.token_urlsafe(48),
                       next_path=safe_next(request.query_params.get("next")), exp=int(now) + LOGIN_TTL)  # fmt: skip
    query = urlencode({
        "response_type": "code", "client_id": settings.client_id, "redirect_uri": redirect_uri(cfg),
        "scope": " ".join(settings.scopes), "state": login.state, "nonce": login.nonce,
        "code_challenge": _challenge(login.verifier), "code_challenge_method": "S256",
    })  # fmt: skip
    separator = "&" if urlsplit(meta.authorization_endpoint).query else "?"
    response = RedirectResponse(meta.authorization_endpoint + separator + query, status_code=303)
    response.set_cookie(LOGIN_COOKIE, seal_login(ctx.console_key, login), max_age=LOGIN_TTL, path="/", secure=True,
                        httponly=True, samesite="lax")  # fmt: skip
    return response


def _one(request: Request, name: str) -> str | None:
    """A query parameter sent at most once (RFC 6749 §3.1: parameters MUST NOT repeat), bounded."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise AccessDenied("the provider's answer is malformed; start again", debug=f"`{name}` repeated")
    if values and len(values[0]) > _MAX_PARAM:
        raise AccessDenied("the provider's answer is malformed; start again", debug=f"`{name}` too long")
    return values[0] if values else None


async def _exchange(client: httpx.AsyncClient, settings: ConsoleOidcSettings, meta: Metadata, *, code: str,
                    login: LoginState, redirect: str) -> str:  # fmt: skip
    """The ID token for ``code`` (OIDC Core §3.1.3.1), proving the login with the PKCE verifier."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect, "code_verifier": login.verifier}
    headers = {"Accept": "application/json"}
    if settings.client_secret_env:
        secret = os.environ.get(settings.client_secret_env, "")
        if not secret:
            log.error("console oidc: the environment variable named by client_secret_env is empty or unset")
            raise ProviderUnavailable("the console's client secret is not set; tell the administrator",
                                      debug="client secret missing")  # fmt: skip
        # RFC 6749 §2.3.1: both halves form-urlencoded before Basic
        pair = f"{quote(settings.client_id, safe='')}:{quote(secret, safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    else:
        form["client_id"] = settings.client_id
    too_large = ValueError("token response too large")
    try:
        async with client.stream("POST", meta.token_endpoint, data=form, headers=headers) as answer:
            body = await read_at_most(answer.aiter_bytes(), MAX_DOCUMENT_BYTES, lambda: too_large)
            status = answer.status_code
        doc = load_json(body)
    except (httpx.HTTPError, ValueError) as exc:
        raise ProviderUnavailable("the login provider is not answering; try again shortly",
                                  debug=f"token endpoint: {type(exc).__name__}") from exc  # fmt: skip
    if status != 200:
        code_name = doc.get("error") if isinstance(doc, dict) else None
        shown = code_name if isinstance(code_name, str) and _ERROR_CODE.fullmatch(code_name) else "?"
        raise AccessDenied("the login provider refused to complete this login; start again",
                           debug=f"token endpoint answered {status} ({shown})")  # fmt: skip
    token = doc.get("id_token") if isinstance(doc, dict) else None
    if not isinstance(token, str) or not token:
        raise AccessDenied("the login provider sent no ID token; start again", debug="token response without id_token")
    return token


async def _verify(request: Request, client: httpx.AsyncClient, settings: ConsoleOidcSettings, meta: Metadata,
                  token: str, login: LoginState, *, now: float, skew: int) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """The principal and claims of a valid ID token for this login (OIDC Core §3.1.3.7)."""
    try:
        header, peeked = unverified(token)
        if peeked.get("iss") != settings.issuer:
            raise IdentityError("iss is not the configured issuer")
        check_typ(header)
        keys = await _keys(request, client, settings.issuer, meta, kid=header.get("kid"), now=now)
        accept = Acceptance(IdentityKind.OIDC, settings.algorithms, (settings.client_id,), _MAX_ID_TOKEN_LIFETIME, skew)
        render = functools.partial(render_principal, settings.principal)
        identity = await verify_signed(token, header, StaticKeySource(keys), accept, issuer=settings.issuer,
                                       principal=render, now=now)  # fmt: skip
        claims = identity.claims
        if claims.get("iss") != settings.issuer:
            raise IdentityError("iss is not the configured issuer")
        aud = claims.get("aud")
        azp = claims.get("azp")
        if ((isinstance(aud, list) and len(aud) > 1) or azp is not None) and azp != settings.client_id:
            raise IdentityError("azp is not this client")
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not hmac.compare_digest(nonce.encode(), login.nonce.encode()):
            raise IdentityError("nonce is not this login's")
        iat = numeric_date(claims.get("iat"))
        if iat is None or now - iat > LOGIN_TTL + skew:
            raise IdentityError("iat missing or older than the login")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise IdentityError("sub missing")
        principal = identity.principal
    except IdentityError as exc:
        raise AccessDenied("the login provider's ID token is not valid for this login; start again",
                           debug=f"id token: {exc}") from exc  # fmt: skip
    if "{/email}" in settings.principal and claims.get("email_verified") is not True:
        # OIDC Core §5.1: the provider never verified this address; as a principal it would let
        # anyone who typed it be whoever the role lists name; a missing claim is no statement at all
        raise AccessDenied("your e-mail address is not verified by the login provider",
                           debug="email_verified is not true")  # fmt: skip
    return principal, claims


def _groups(cfg: Config, claims: Mapping[str, Any]) -> frozenset[str]:
    """The provider's groups that the configuration names (role groups, approver groups): the cookie stays small."""
    oidc = cfg.console_oidc
    wanted = {*oidc.viewer_groups, *oidc.operator_groups, *oidc.approver_groups}
    wanted.update(g for group in cfg.approver_groups for g in group.idp_groups)
    raw = claims.get(oidc.group_claim, [])
    values = raw if isinstance(raw, list) else [raw]
    return frozenset(v for v in values if isinstance(v, str) and v in wanted)


def _name(claims: Mapping[str, Any], principal: str) -> str:
    for key in ("name", "email"):
        value = claims.get(key)
        if isinstance(value, str) and value.strip():
            return _CONTROL.sub("", value).strip()[:100]
    return principal


def _clear(response: Response) -> Response:
    response.delete_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True, samesite="lax")
    return response


async def _refuse(request: Request, exc: OAuthError, *, principal: str | None = None) -> Response:
    """An HTML refusal, audited as ``console.login``: by the client's address unless the human is proven."""
    ctx = context(request)
    try:
        source = client_address(request)
        await ctx.refuse(exc, kind="console.login", principal=principal, detail={"via": "oidc", "client": source or ""},
                         source=source)  # fmt: skip
    except StoreError:
        return _clear(error_page(request, 503, "the store is not answering; try again shortly"))
    return _clear(error_page(request, exc.status, exc.description))


async def callback(request: Request) -> Response:
    """GET ``/login/callback``: the provider's answer (OIDC Core §3.1.2.5-6) turned into a session."""
    ctx, cfg = context(request), config(request)
    settings = cfg.console_oidc
    if not settings.issuer:
        return error_page(request, 404, "login with an OIDC provider is not configured here")
    now = ctx.now()
    try:
        login = open_login(ctx.console_key, request.cookies.get(LOGIN_COOKIE), now=now)
        state = _one(request, "state") or ""
        if not hmac.compare_digest(state.encode(), login.state.encode()):
            raise AccessDenied("this answer is not for the login this browser started; start again",
                               debug="state differs from the login cookie's (login CSRF)")  # fmt: skip
        if not await ctx.store.spend(login_key(login.state), until=login.exp + 60, now=now):
            raise AccessDenied("this login has been completed already; start again", debug="login state used again")
        error, code, iss = _one(request, "error"), _one(request, "code"), _one(request, "iss")
        if error is not None:
            shown = error if _ERROR_CODE.fullmatch(error) else "?"
            raise AccessDenied("the login provider did not log you in; start again", debug=f"provider error {shown}")
        async with _client() as client:
            meta = await _metadata(request, client, settings.issuer, now=now)
            if (iss is not None or meta.iss_parameter) and iss != settings.issuer:  # RFC 9207 §2.4: mix-up
                raise AccessDenied("this answer is from another provider; start again", debug="iss parameter differs")
            if not code:
                raise AccessDenied("the login provider sent no code; start again", debug="callback without code")
            token = await _exchange(client, settings, meta, code=code, login=login, redirect=redirect_uri(cfg))
            principal, claims = await _verify(request, client, settings, meta, token, login, now=now,
                                              skew=cfg.tokens.clock_skew)  # fmt: skip
    except OAuthError as exc:
        return await _refuse(request, exc)
    except StoreError:
        return _clear(error_page(request, 503, "the store is not answering; try again shortly"))
    groups = _groups(cfg, claims)
    roles = roles_of(cfg, new_session(principal, roles=frozenset(), groups=groups, via="oidc", now=now,
                                      issuer=settings.issuer))  # fmt: skip
    if not roles:
        refused = AccessDenied("you have no role in this console; ask an administrator",
                               debug="no role for this principal or its groups")  # fmt: skip
        return await _refuse(request, refused, principal=principal)
    try:
        response = await start_session(request, principal, roles=roles, groups=groups, via="oidc",
                                       name=_name(claims, principal), next_path=login.next_path,
                                       issuer=settings.issuer)  # fmt: skip
    except StoreError:
        return _clear(error_page(request, 503, "the store is not answering; try again shortly"))
    return _clear(response)


OIDC_ROUTES: list[BaseRoute] = [
    Route("/login/oidc", start_login, methods=["GET"]),
    Route("/login/callback", callback, methods=["GET"]),
]
