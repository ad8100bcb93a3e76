"""The console in a real browser: one-time links and CSRF (SECURITY WEB-02, WEB-03, WEB-04)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from browserkit import launch, logged_in
from consolekit import RunningConsole, running_console
from playwright.sync_api import Browser


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningConsole]:
    with running_console(tmp_path_factory.mktemp("console")) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from launch()


def test_web04_link_logs_in_in_a_browser_and_a_reused_link_is_refused(console: RunningConsole, browser: Browser) -> None:
    link = console.link("viewer", "console:vic")
    context, page = logged_in(browser, link)
    assert "console:vic" in page.locator("header").inner_text()
    other = browser.new_context()
    again = other.new_page()
    again.goto(link)
    again.get_by_role("button", name="Log in").click()
    assert "used already" in again.locator("main").inner_text()
    assert not [c for c in other.cookies() if c["name"].startswith("__Host-")]
    context.close()
    other.close()


def test_web02_forged_csrf_token_in_the_form_is_refused(console: RunningConsole, browser: Browser) -> None:
    context, page = logged_in(browser, console.link("viewer", "console:fay"))
    page.locator("form.who input[name=csrf]").evaluate("el => el.value = 'forged'")
    page.get_by_role("button", name="Log out").click()
    assert "CSRF" in page.locator("main").inner_text()
    page.goto(console.url + "/")
    assert "console:fay" in page.locator("header").inner_text()  # still logged in: the forged POST did nothing
    context.close()


def test_web03_no_inline_script_runs_and_csp_reports_nothing_on_a_page(console: RunningConsole, browser: Browser) -> None:
    context, page = logged_in(browser, console.link("viewer"))
    violations: list[str] = []
    page.on("console", lambda message: violations.append(message.text) if "Content Security Policy" in message.text else None)
    page.goto(console.url + "/")
    page.wait_for_load_state("networkidle")
    assert violations == []
    context.close()
