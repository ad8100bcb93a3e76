"""Console login with a real OpenID Provider (node ``oidc-provider``) over loopback HTTP (SECURITY WEB-04, WEB-05).

The provider requires PKCE S256 and client_secret_basic for the console's client, signs ES256 ID
tokens and logs its accounts in through its own forms. Attacks that need the provider to issue
something unusual (an ID token with another nonce, a code bound to another verifier) are made the
way an attacker would: by running an authorization request of their own against the real provider.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from oidckit import CLIENT_ID, SECRET_ENV, OidcBrowser, OidcConsole, oidc_console

from tether.console.oidc import LOGIN_COOKIE
from tether.console.web import COOKIE
from tether.rules.console_session import LoginState, open_login, open_session, seal_login

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
