"""Logging in to the console in a real browser with a real OIDC provider (node oidc-provider) on loopback (WEB-04)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from browserkit import launch, off_loop
from oidckit import SECRET_ENV, OidcConsole, oidc_console
from playwright.sync_api import Browser

ACCOUNTS = {"olive": {"email": "olive@example.com", "email_verified": True, "name": "Olive Ops", "groups": ["oncall"]}}


@pytest.fixture(scope="module")
def oidc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcConsole]:
    os.environ[SECRET_ENV] = "browser-secret"
    try:
        with oidc_console(tmp_path_factory.mktemp("oidc"), accounts=ACCOUNTS, secret="browser-secret",
                          console_toml="", oidc_toml='operator_groups = ["oncall"]') as running:  # fmt: skip
            yield running
    finally:
        os.environ.pop(SECRET_ENV, None)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from launch()


def test_web04_browser_logs_in_with_the_organisations_provider(oidc: OidcConsole, browser: Browser, tmp_path: Path) -> None:
    context = browser.new_context()
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.goto(oidc.console.url + "/agents")  # a protected page: to the login page, remembering where we were
    assert "/login" in page.url
    page.get_by_role("link", name="Log in with").click()
    page.wait_for_url(lambda url: url.startswith(oidc.op.issuer))
    page.locator("input[name=login]").fill("olive")
    page.locator("input[name=password]").fill("any")
    page.locator("button[type=submit]").click()
    page.locator("button[type=submit]").click()  # the provider's consent form
    page.wait_for_url(lambda url: url.startswith(oidc.console.url) and "/login" not in url)
    header = page.locator("header").inner_text()
    assert "Olive Ops" in header and "operator" in header
    assert page.url.endswith("/agents")
    cookies = {c["name"]: c for c in context.cookies(oidc.console.url)}
    session = cookies["__Host-tether-session"]
    assert session["secure"] and session["httpOnly"] and session["sameSite"] == "Lax" and session["path"] == "/"
    assert "__Host-tether-login" not in cookies  # one login cookie serves one callback
    record = off_loop(lambda: oidc.console.sts.last_audit("console.login"))
    assert record.principal == "user:olive@example.com" and record.detail["via"] == "oidc"
    context.close()
