"""One-time login links and sessions over real HTTP (SECURITY WEB-01, WEB-02, WEB-04)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from consolekit import RunningConsole, running_console

from tether.console.web import COOKIE


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningConsole]:
    with running_console(tmp_path_factory.mktemp("console")) as running:
        yield running


def test_web04_link_logs_in_once_and_a_reused_link_is_refused(console: RunningConsole) -> None:
    browser = console.browser()
    token = console.link("viewer", "console:vera").split("?t=", 1)[1]
    shown = browser.get("/login/link", params={"t": token})
    assert shown.status_code == 200 and "console:vera" in shown.text and browser.cookie is None  # GET spends nothing
    assert browser.post("/login/link", {"t": token}).status_code == 303
    assert browser.get("/").status_code == 200
    again = console.browser().post("/login/link", {"t": token})
    assert again.status_code == 403 and "used already" in again.text
    assert again.headers.get("set-cookie") is None


def test_web04_forged_and_expired_links_are_refused(console: RunningConsole) -> None:
    token = console.link("operator").split("?t=", 1)[1]
    payload, tag = token.split(".")
    forged = payload + "." + ("A" if tag[0] != "A" else "B") + tag[1:]
    browser = console.browser()
    assert browser.post("/login/link", {"t": forged}).status_code == 403
    expired = console.link("operator", ttl=1).split("?t=", 1)[1]
    console.sts.clock.advance(2)
    refused = browser.post("/login/link", {"t": expired})
    assert refused.status_code == 403 and "expired" in refused.text
    assert browser.cookie is None


def test_web01_cookie_is_host_prefixed_secure_httponly_lax(console: RunningConsole) -> None:
    browser = console.browser()
    token = console.link().split("?t=", 1)[1]
    response = browser.post("/login/link", {"t": token})
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"secure", "httponly", "path", "samesite"} <= attributes and "domain" not in attributes
    assert "samesite=lax" in cookie.lower() and "path=/" in cookie.lower()


def test_web01_logout_kills_every_copy_of_the_cookie(console: RunningConsole) -> None:
    browser = console.login("viewer")
    copy = browser.cookie
    csrf = browser.csrf()
    assert browser.post("/logout", {"csrf": csrf}).status_code == 303
    thief = console.browser()
    thief.cookie = copy
    assert thief.get("/").status_code == 303  # to the login page


def test_web01_idle_and_absolute_timeouts(console: RunningConsole) -> None:
    browser = console.login("viewer")
    idle = console.runtime.config.console.session_idle
    console.sts.clock.advance(idle + 1)
    assert browser.get("/").status_code == 303
    browser = console.login("viewer")
    for _ in range(3):  # active all along: only the absolute timeout ends it
        console.sts.clock.advance(idle - 5)
        assert browser.get("/").status_code == 200
    console.sts.clock.advance(console.runtime.config.console.session_max)
    assert browser.get("/").status_code == 303


def test_web02_post_without_or_with_a_foreign_csrf_token_is_refused(console: RunningConsole) -> None:
    alice, mallory = console.login("viewer", "console:alice"), console.login("viewer", "console:mallory")
    assert alice.post("/logout", {"confirm": "yes"}).status_code == 403
    refused = alice.post("/logout", {"csrf": mallory.csrf()})
    assert refused.status_code == 403 and "CSRF" in refused.text
    assert alice.get("/").status_code == 200  # still logged in: the forged logout did nothing
    record = console.sts.last_audit("console.refused")
    # unproven (another site's page could have sent it): named as claimed, never as alice's act
    assert record.principal is None and record.error == "access_denied"
    assert record.detail["claimed_principal"] == "console:alice"


def test_web03_security_headers_on_pages_and_errors(console: RunningConsole) -> None:
    for response in (console.browser().get("/login"), console.browser().get("/no-such-page")):
        csp = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp and "script-src 'self'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["cache-control"] == "no-store"


def test_login_page_never_redirects_off_site(console: RunningConsole, tmp_path: Path) -> None:
    page = console.browser().get("/login", params={"next": "//evil.example/x"})
    assert page.status_code == 200 and "evil.example" not in page.text


def test_web03_a_request_for_another_host_name_is_refused(console: RunningConsole) -> None:
    """DNS rebinding: a page at evil.example resolving to the loopback console gets no console page."""
    refused = console.browser().get("/login", headers={"Host": "evil.example"})
    assert refused.status_code == 400 and "tether" not in refused.text
    assert console.browser().get("/login", headers={"Host": "localhost"}).status_code == 200
