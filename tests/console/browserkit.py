"""Browser tests of the console: Playwright for Python driving the system's Chromium.

Playwright's own browser download is not reachable here, so the tests launch Debian's
``chromium`` (``/usr/bin/chromium``; ``scripts/test`` installs it with apt when missing) through
``executable_path``. Without it a test is skipped on a laptop and fails under ``CI=true``: a browser
test that silently does not run proves nothing.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

__all__ = ["SCREENSHOTS", "chromium_path", "launch", "logged_in", "off_loop", "shoot"]

#: where ``TETHER_SCREENSHOTS=1`` writes the README's screenshots
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"


T = TypeVar("T")


def off_loop(fn: Callable[[], T]) -> T:
    """Run ``fn`` (which may call ``asyncio.run``) in a thread: Playwright's sync API keeps an event loop
    running in the test's own thread while a browser is open."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn).result(timeout=60)


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    reason = "Debian's chromium is not installed (apt-get install -y chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser test cannot run under CI: {reason}")
    pytest.skip(reason)


def launch() -> Iterator[Browser]:
    """A headless Chromium for a module's tests (a fixture body)."""
    path = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()


def logged_in(browser: Browser, link: str, *, width: int = 1280, height: int = 900) -> tuple[BrowserContext, Page]:
    """A fresh browser context logged in through ``link`` (the real two-step link flow)."""
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(10_000)
    page = context.new_page()
    page.goto(link)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: "/login" not in url)
    return context, page


def shoot(page: Page, name: str) -> None:
    """Save a screenshot for the README when ``TETHER_SCREENSHOTS=1`` (never in a normal test run)."""
    if os.environ.get("TETHER_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        size = page.viewport_size
        phone = size is not None and size["width"] < 600
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=phone)
