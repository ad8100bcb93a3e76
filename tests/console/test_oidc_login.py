"""Console login with a real OpenID Provider (node ``oidc-provider``) over loopback HTTP (SECURITY WEB-04, WEB-05).

The provider requires PKCE S256 and client_secret_basic for the console's client, signs ES256 ID
tokens and logs its accounts in through its own forms. Attacks that need the provider to issue
something unusual (an ID token with another nonce, a code bound to another verifier) are made the
way an attacker would: by running an authorization request of their own against the real provider.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import httpx
import pytest
from joserfc.jwk import ECKey
from oidckit import CLIENT_ID, SECRET_ENV, OidcBrowser, OidcConsole, oidc_console
from starlette.datastructures import State

from tether.console.oidc import LOGIN_COOKIE, ProviderUnavailable, _metadata, _verify
from tether.console.web import COOKIE
from tether.errors import AccessDenied
from tether.identity.checks import unverified
from tether.rules.console_session import LoginState, open_login, open_session, seal_login
from tether.rules.jws import sign_compact

ACCOUNTS = {
    "alice": {"email": "alice@example.com", "email_verified": True, "name": "Alice", "groups": ["tether-viewers", "payroll"]},
    "olga": {"email": "olga@example.com", "email_verified": True, "name": "Olga", "groups": []},
    "eve": {"email": "eve@example.com", "email_verified": False, "name": "Eve", "groups": ["tether-operators"]},
    "nora": {"email": "nora@example.com", "email_verified": True, "name": "Nora", "groups": ["payroll"]},
}


@pytest.fixture(scope="module")
def oidc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcConsole]:
    os.environ[SECRET_ENV] = "s3cret/with+odd=chars"  # form-urlencoded before Basic (RFC 6749 §2.3.1)
    try:
        with oidc_console(tmp_path_factory.mktemp("oidc"), accounts=ACCOUNTS, secret=os.environ[SECRET_ENV],
                          console_toml='operators = ["user:olga@example.com"]',
                          oidc_toml='viewer_groups = ["tether-viewers"]\noperator_groups = ["tether-operators"]',
                          ) as running:  # fmt: skip
            yield running
    finally:
        os.environ.pop(SECRET_ENV, None)


def _challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _login_state(oidc: OidcConsole, browser: OidcBrowser) -> LoginState:
    return open_login(oidc.console.key, browser.login_cookie, now=oidc.console.sts.clock.now())


def _session_of(oidc: OidcConsole, browser: OidcBrowser) -> tuple[str, frozenset[str], frozenset[str], str]:
    cfg = oidc.console.runtime.config.console
    session = open_session(oidc.console.key, browser.cookie, now=oidc.console.sts.clock.now(), idle=cfg.session_idle,
                           max_age=cfg.session_max)  # fmt: skip
    return session.principal, session.roles, session.groups, session.via


def _own_authorization(oidc: OidcConsole, login: LoginState, *, nonce: str, verifier: str) -> str:
    """An authorization request an attacker builds for the console's client, with their own nonce/verifier."""
    query = urlencode({
        "response_type": "code", "client_id": CLIENT_ID, "redirect_uri": oidc.console.url + "/login/callback",
        "scope": "openid email profile", "state": login.state, "nonce": nonce,
        "code_challenge": _challenge(verifier), "code_challenge_method": "S256",
    })  # fmt: skip
    return f"{oidc.op.issuer}/auth?{query}"


def test_web04_full_login_gives_a_viewer_session_by_group(oidc: OidcConsole) -> None:
    browser = oidc.browser()
    done = browser.login("alice", "/tasks")
    assert done.status_code == 303 and done.headers["location"] == "/tasks", done.text[:300]
    assert browser.cookie and browser.login_cookie is None  # the login cookie serves one callback
    principal, roles, groups, via = _session_of(oidc, browser)
    assert (principal, roles, via) == ("user:alice@example.com", frozenset({"viewer"}), "oidc")
    assert groups == {"tether-viewers"}  # "payroll" is named nowhere in the configuration: not kept
    assert browser.get("/").status_code == 200
    record = oidc.console.sts.last_audit("console.login")
    assert record.outcome == "ok" and record.principal == "user:alice@example.com" and record.detail["via"] == "oidc"


def test_web05_operator_role_from_the_console_operators_list(oidc: OidcConsole) -> None:
    browser = oidc.browser()
    assert browser.login("olga").status_code == 303
    principal, roles, _, _ = _session_of(oidc, browser)
    assert principal == "user:olga@example.com" and roles == {"viewer", "operator"}


def test_web04_authorization_request_has_s256_state_nonce_and_exact_redirect_uri(oidc: OidcConsole) -> None:
    browser = oidc.browser()
    url = browser.start("/")
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == oidc.op.issuer
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    login = _login_state(oidc, browser)
    assert query["response_type"] == "code" and query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == oidc.console.url + "/login/callback"
    assert query["code_challenge_method"] == "S256"
    assert 43 <= len(login.verifier) <= 128 and query["code_challenge"] == _challenge(login.verifier)
    assert query["state"] == login.state and query["nonce"] == login.nonce and login.state != login.nonce
    assert "openid" in query["scope"].split()
    other = oidc.browser()
    other.start("/")
    assert _login_state(oidc, other).state != login.state and _login_state(oidc, other).nonce != login.nonce
    cookie = other.get("/login/oidc").headers["set-cookie"]
    assert cookie.startswith(f"{LOGIN_COOKIE}=")
    lowered = cookie.lower()
    assert "secure" in lowered and "httponly" in lowered and "samesite=lax" in lowered and "path=/" in lowered
    assert "domain" not in lowered


def test_web04_callback_with_a_wrong_state_is_refused_and_audited_by_address(oidc: OidcConsole) -> None:
    browser = oidc.browser()
    callback = browser.authorize(browser.start(), "alice")
    login = _login_state(oidc, browser)
    forged = callback.replace(f"state={login.state}", "state=" + login.state[:-2] + "xy")
    assert forged != callback
    refused = browser.finish(forged)
    assert refused.status_code == 403 and "not for the login this browser started" in refused.text
    assert browser.cookie is None
    record = oidc.console.sts.last_audit("console.login")
    assert record.outcome == "refused" and record.principal is None and record.error == "access_denied"
    assert "state" in record.detail["reason"] and record.detail["client"] == "127.0.0.1"


def test_web04_callback_without_or_with_a_forged_or_expired_login_cookie_is_refused(oidc: OidcConsole) -> None:
    browser = oidc.browser()
    callback = browser.authorize(browser.start(), "alice")
    login = _login_state(oidc, browser)
    browser.login_cookie = None
    assert browser.finish(callback).status_code == 403
    payload, tag = seal_login(oidc.console.key, login).split(".")
    browser.login_cookie = payload + "." + ("A" if tag[0] != "A" else "B") + tag[1:]
    assert browser.finish(callback).status_code == 403
    now = int(oidc.console.sts.clock.now())
    expired = LoginState(login.state, login.nonce, login.verifier, "/", now - 1)
    browser.login_cookie = seal_login(oidc.console.key, expired)
    refused = browser.finish(callback)
    assert refused.status_code == 403 and "expired" in refused.text
    assert browser.cookie is None


def test_web04_replayed_callback_is_refused(oidc: OidcConsole) -> None:
    browser = oidc.browser()
    callback = browser.authorize(browser.start(), "alice")
    copy = browser.login_cookie
    assert browser.finish(callback).status_code == 303 and browser.cookie
    thief = oidc.browser()
    thief.login_cookie = copy  # a copy of the login cookie and the callback URL
    again = thief.finish(callback)
    assert again.status_code == 403 and "completed already" in again.text
    assert thief.cookie is None
    assert browser.finish(callback).status_code == 403  # the browser itself holds no login cookie any more


def test_web04_id_token_with_another_nonce_is_refused(oidc: OidcConsole) -> None:
    browser = oidc.browser()
    browser.start()
    login = _login_state(oidc, browser)
    # the provider issues a code whose ID token carries a nonce that is not this login's (code injection)
    callback = browser.authorize(_own_authorization(oidc, login, nonce="attacker-nonce", verifier=login.verifier), "alice")
    refused = browser.finish(callback)
    assert refused.status_code == 403 and "ID token is not valid" in refused.text
    assert browser.cookie is None
    record = oidc.console.sts.last_audit("console.login")
    assert record.outcome == "refused" and "nonce" in record.detail["reason"] and record.principal is None


def test_web04_code_bound_to_another_pkce_verifier_is_refused(oidc: OidcConsole) -> None:
    browser = oidc.browser()
    browser.start()
    login = _login_state(oidc, browser)
    stolen_verifier = "v" * 43 + "attacker"
    callback = browser.authorize(_own_authorization(oidc, login, nonce=login.nonce, verifier=stolen_verifier), "alice")
    refused = browser.finish(callback)  # the console sends its own verifier: the provider refuses the code
    assert refused.status_code == 403 and browser.cookie is None
    assert "invalid_grant" in oidc.console.sts.last_audit("console.login").detail["reason"]


def test_web04_provider_error_is_refused(oidc: OidcConsole) -> None:
    browser = oidc.browser()
    browser.start()
    login = _login_state(oidc, browser)
    refused = browser.get("/login/callback", params={"error": "access_denied", "state": login.state})
    assert refused.status_code == 403 and "did not log you in" in refused.text and browser.cookie is None


def test_web04_unverified_email_is_refused(oidc: OidcConsole) -> None:
    browser = oidc.browser()
    refused = browser.login("eve")  # in an operator group, but the address was never verified
    assert refused.status_code == 403 and "not verified" in refused.text
    assert browser.cookie is None
    record = oidc.console.sts.last_audit("console.login")
    assert record.outcome == "refused" and record.principal is None


def test_web05_no_role_is_refused_and_audited_with_the_principal(oidc: OidcConsole) -> None:
    browser = oidc.browser()
    refused = browser.login("nora")
    assert refused.status_code == 403 and "no role in this console" in refused.text
    assert browser.cookie is None and browser.login_cookie is None
    record = oidc.console.sts.last_audit("console.login")
    assert record.outcome == "refused" and record.principal == "user:nora@example.com"


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example"])
def test_web04_next_cannot_redirect_off_site(oidc: OidcConsole, target: str) -> None:
    browser = oidc.browser()
    done = browser.login("alice", target)
    assert done.status_code == 303 and done.headers["location"] == "/"
    assert COOKIE in done.headers["set-cookie"]


def test_login_button_on_the_login_page(oidc: OidcConsole, tmp_path: Path) -> None:
    page = oidc.browser().get("/login", params={"next": "/tasks"})
    assert page.status_code == 200 and "/login/oidc?next=" in page.text and oidc.op.issuer in page.text


def test_web04_callback_naming_another_issuer_is_refused(oidc: OidcConsole) -> None:
    browser = oidc.browser()
    callback = browser.authorize(browser.start(), "alice")
    assert "iss=" in callback  # RFC 9207: the provider names itself in the response
    mixed = callback.replace("iss=" + quote(oidc.op.issuer, safe=""), "iss=" + quote("https://idp.evil.example", safe=""))
    assert mixed != callback
    refused = browser.finish(mixed)
    assert refused.status_code == 403 and "another provider" in refused.text and browser.cookie is None


def _request(oidc: OidcConsole) -> Any:
    """What ``console.oidc`` reads of a request outside a route: the app (its discovery cache)."""
    return SimpleNamespace(app=SimpleNamespace(state=State()))


def _real_id_token(oidc: OidcConsole, login: LoginState) -> str:
    """An ID token the provider issued for ``login`` (the test plays the console's part at the token endpoint)."""
    browser = oidc.browser()
    callback = browser.authorize(_own_authorization(oidc, login, nonce=login.nonce, verifier=login.verifier), "alice")
    code = parse_qs(urlsplit(callback).query)["code"][0]
    answer = browser.op.post(f"{oidc.op.issuer}/token", auth=(CLIENT_ID, quote(os.environ[SECRET_ENV], safe="")), data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": oidc.console.url + "/login/callback",
        "code_verifier": login.verifier,
    })  # fmt: skip
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["id_token"]
    return token


def test_web04_id_token_alg_must_be_configured_never_none_or_hmac(oidc: OidcConsole) -> None:
    """The real provider's ES256 ID token verifies; the same claims under `none`, HS256 keyed with the
    provider's public key (algorithm confusion), another key with the provider's `kid`, or with ES256
    left out of ``[console.oidc] algorithms``, never do."""
    settings = oidc.console.runtime.config.console_oidc
    login = LoginState("st-" + "a" * 40, "nonce-" + "b" * 40, "v" * 64, "/", int(oidc.console.sts.clock.now()) + 600)
    token = _real_id_token(oidc, login)
    header, claims = unverified(token)
    assert header["alg"] == "ES256"
    request, now = _request(oidc), oidc.console.sts.clock.now()

    async def verify(token: str, algorithms: tuple[str, ...] = settings.algorithms) -> str:
        async with httpx.AsyncClient(trust_env=False) as client:
            meta = await _metadata(request, client, settings.issuer, now=now)
            chosen = dataclasses.replace(settings, algorithms=algorithms)
            principal, _ = await _verify(request, client, chosen, meta, token, login, now=now, skew=10)
            return principal

    assert asyncio.run(verify(token)) == "user:alice@example.com"
    with pytest.raises(AccessDenied):
        asyncio.run(verify(token, ("RS256",)))
    body = token.split(".")[1]

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    none = b64(json.dumps({"alg": "none", "kid": header["kid"]}).encode()) + "." + body + "."
    jwks = httpx.get(f"{oidc.op.issuer}/jwks", trust_env=False).json()
    secret = json.dumps(jwks["keys"][0]).encode()
    hs_head = b64(json.dumps({"alg": "HS256", "kid": header["kid"]}).encode()) + "." + body
    hs256 = hs_head + "." + b64(hmac.new(secret, hs_head.encode(), hashlib.sha256).digest())
    other = sign_compact({"alg": "ES256", "kid": header["kid"]}, claims, ECKey.generate_key("P-256"), "ES256")
    for forged in (none, hs256, other):
        with pytest.raises(AccessDenied):
            asyncio.run(verify(forged, ("ES256", "HS256")))


def test_web04_discovery_must_name_exactly_the_configured_issuer(oidc: OidcConsole) -> None:
    request, now = _request(oidc), oidc.console.sts.clock.now()
    alias = oidc.op.issuer.replace("127.0.0.1", "localhost")  # the same server, another name: not this issuer

    async def discover(issuer: str) -> str:
        async with httpx.AsyncClient(trust_env=False) as client:
            return (await _metadata(request, client, issuer, now=now)).token_endpoint

    assert asyncio.run(discover(oidc.op.issuer)).startswith(oidc.op.issuer)
    with pytest.raises(ProviderUnavailable):
        asyncio.run(discover(alias))


@pytest.fixture(scope="module")
def public(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcConsole]:
    with oidc_console(tmp_path_factory.mktemp("oidc-public"), accounts=ACCOUNTS, secret=None,
                      console_toml='viewers = ["user:olga@example.com"]', oidc_toml="") as running:  # fmt: skip
        yield running


def test_web04_public_client_logs_in_with_pkce_alone(public: OidcConsole) -> None:
    browser = public.browser()
    done = browser.login("olga", "/tasks")
    assert done.status_code == 303 and done.headers["location"] == "/tasks"
    assert _session_of(public, browser)[:2] == ("user:olga@example.com", frozenset({"viewer"}))
