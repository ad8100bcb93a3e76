"""Review: login CSRF through a one-time link (SECURITY WEB-04 "bound to the login", WEB-02).

Anyone who holds a link of their own (a viewer, say) can put it in a form on their own site; a
victim who visits that page is logged in to the console as the attacker, and what the victim
then does or reads is the attacker's session (OWASP: login CSRF). The link has no session to
bind a CSRF token to, so ``POST /login/link`` refuses a request the browser marks as sent by
another site (``Sec-Fetch-Site: cross-site`` or ``same-site``, Fetch Metadata); the console's own
button sends ``same-origin``. (An ``Origin`` check would not do: with ``Referrer-Policy:
no-referrer`` browsers send ``Origin: null`` even for the console's own forms.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from browserkit import launch, logged_in
from consolekit import RunningConsole, running_console
from playwright.sync_api import Browser, Route


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningConsole]:
    with running_console(tmp_path_factory.mktemp("review-login-csrf")) as running:
        yield running


def _token(console: RunningConsole, role: str, principal: str) -> str:
    return console.link(role, principal).split("?t=", 1)[1]


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_web04_link_post_sent_by_another_site_is_refused(console: RunningConsole, site: str) -> None:
    token = _token(console, "viewer", "console:mallory-login")
    victim = console.browser()
    refused = victim.post("/login/link", {"t": token}, headers={"Sec-Fetch-Site": site, "Origin": "null"})
    assert refused.status_code == 403 and victim.cookie is None
    assert refused.headers.get("set-cookie") is None
    # refused before it was spent: the link's owner can still use it on the console itself
    own = console.browser()
    assert own.post("/login/link", {"t": token}, headers={"Sec-Fetch-Site": "same-origin"}).status_code == 303
    assert own.cookie


def test_web04_link_post_from_the_console_itself_or_a_typed_address_logs_in(console: RunningConsole) -> None:
    for fetch_site in ("same-origin", "none", None):
        headers = {"Sec-Fetch-Site": fetch_site} if fetch_site else {}
        browser = console.browser()
        done = browser.post("/login/link", {"t": _token(console, "viewer", "console:ok")}, headers=headers)
        assert done.status_code == 303 and browser.cookie, (fetch_site, done.text[:200])


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from launch()


def test_web04_login_csrf_from_another_site_in_a_real_browser(console: RunningConsole, browser: Browser) -> None:
    token = _token(console, "viewer", "console:mallory-browser")
    evil = "http://evil.example/"
    page_html = (f'<form method="post" action="{console.url}/login/link"><input type="hidden" name="t" value="{token}">'
                 '<button type="submit">Win a prize</button></form>')  # fmt: skip
    context = browser.new_context()
    context.set_default_timeout(10_000)
    page = context.new_page()

    def serve(route: Route) -> None:
        route.fulfill(status=200, content_type="text/html", body=page_html)

    page.route(evil, serve)
    page.goto(evil)
    page.get_by_role("button", name="Win a prize").click()
    page.wait_for_load_state()
    assert not [c for c in context.cookies() if c["name"].startswith("__Host-")], "victim logged in as mallory"
    context.close()
    # the console's own two-step flow still works in the same browser
    own, _ = logged_in(browser, console.link("viewer", "console:own"))
    assert [c for c in own.cookies() if c["name"].startswith("__Host-")]
    own.close()
