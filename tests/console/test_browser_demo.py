"""The console in Chromium over real data: the demo's tasks, a live tree, the kill switch, roles (WEB-02, WEB-05).

One module runs ``tether demo``'s scenario into a kept directory and serves that deployment's
console (a demo task's tree); a second deployment gets a fresh lineage (session → hop → actor
hop) whose tree must turn revoked in an open page, without a reload, when the orchestrator
completes the task through the STS's admin API. ``TETHER_SCREENSHOTS=1`` saves the README's
screenshots (``docs/console/``) from these pages.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from browserkit import chromium_path, launch, logged_in, off_loop, shoot
from consolekit import RunningConsole, console_for, running_console
from pageskit import RESOURCES, Lineage, end_by_admin_api, make_lineage
from playwright.sync_api import Browser, Page, expect

from tether.clock import ManualClock
from tether.config import load_config
from tether.demo.scenario import run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningConsole]:
    chromium_path()  # skipped (failed under CI=true) before the demo runs for a browser that is not there
    directory = tmp_path_factory.mktemp("demo") / "deployment"
    result = run_demo(directory)
    assert result.ok, "the demo's own checks failed"
    with console_for(load_config(directory / "tether.toml"), ManualClock()) as running:
        yield running


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningConsole]:
    with running_console(tmp_path_factory.mktemp("live"), extra_toml=RESOURCES) as running:
        yield running


@pytest.fixture(scope="module")
def browser(demo: RunningConsole, live: RunningConsole) -> Iterator[Browser]:
    """Launched after both deployments: Playwright's sync API keeps an event loop running in this thread."""
    yield from launch()


def _nodes(page: Page) -> list[str]:
    return [str(jti) for jti in page.locator("li[role=treeitem]").evaluate_all("els => els.map(e => e.dataset.jti)")]


def test_open_a_demo_task_and_see_its_tree(demo: RunningConsole, browser: Browser) -> None:
    context, page = logged_in(browser, demo.link("operator", "console:demo"))
    shoot(page, "overview")
    page.get_by_role("link", name="Tasks", exact=True).click()
    shoot(page, "tasks")
    rows = page.locator("table a[href^='/tasks/tsk_']")
    assert rows.count() >= 3  # the demo's tasks
    best, most = "", 0
    for href in rows.evaluate_all("els => els.map(e => e.getAttribute('href'))"):
        page.goto(demo.url + href)
        count = page.locator("li[role=treeitem]").count()
        if count > most:
            best, most = href, count
    page.goto(demo.url + best)
    assert most >= 2 and page.locator("ul[role=tree]").is_visible()
    kinds = page.locator("li[role=treeitem] .badge.kind").all_inner_texts()
    assert any(k.startswith("session") for k in kinds) and any(k.startswith("hop") for k in kinds)
    assert page.locator("li[role=treeitem].cut").count() == most  # the demo ended its tasks: every branch cut
    shoot(page, "task-demo")
    for name in ("agents", "alerts", "audit", "policies", "exceptions", "approvals"):
        page.goto(f"{demo.url}/{name}")
        assert page.locator("h1").count() == 1
        shoot(page, name)
    context.close()


def test_tree_turns_revoked_without_a_reload_when_the_task_completes(live: RunningConsole, browser: Browser) -> None:
    lineage: Lineage = off_loop(lambda: make_lineage(live.sts, purpose="nightly report"))
    context, page = logged_in(browser, live.link("viewer", "console:watcher"))
    page.goto(f"{live.url}/tasks/{lineage.id}")
    assert set(_nodes(page)) == set(lineage.jtis.values())
    assert page.locator("li[role=treeitem].cut").count() == 0
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads or navigates
    shoot(page, "task-live")
    off_loop(lambda: end_by_admin_api(live.sts, lineage.id))
    expect(page.locator("li[role=treeitem].cut")).to_have_count(3, timeout=15_000)
    expect(page.locator("[data-role=task-state]")).to_have_text("completed", timeout=15_000)
    assert page.evaluate("window.__sameDocument") is True
    assert (
        page.locator("[data-role=sum-revoked]").inner_text() == "3" and page.locator("[data-role=sum-live]").inner_text() == "0"
    )
    shoot(page, "task-revoked")
    context.close()


def test_operator_blocks_an_agent_through_the_confirmation_step(live: RunningConsole, browser: Browser) -> None:
    lineage: Lineage = off_loop(lambda: make_lineage(live.sts))
    agent = str(lineage.task["agent"])
    context, page = logged_in(browser, live.link("operator", "console:oncall"))
    page.goto(live.url + "/agents")
    row = page.locator("tr", has_text=agent)
    row.get_by_role("link", name="Block").click()
    assert agent in page.locator("main").inner_text()  # the confirmation page says who and what
    page.locator("main form button[type=submit]").click()
    page.goto(live.url + "/agents")
    blocked = page.locator("tr", has_text=agent).filter(has=page.get_by_role("link", name="Unblock"))
    expect(blocked).to_have_count(1)
    assert "No agent holds a live task" in page.locator("main").inner_text()  # its task ended with the block
    refused = off_loop(lambda: lineage.agent.hop(lineage.session, "http://127.0.0.1:9001"))
    assert refused.status_code in (400, 401, 403)  # the agent's tokens died with the block
    record = off_loop(lambda: live.sts.last_audit("principal.blocked"))
    assert record.principal == "console:oncall" and record.detail["via"] == "console"
    blocked.get_by_role("link", name="Unblock").click()
    page.locator("main form button[type=submit]").click()
    page.goto(live.url + "/agents")
    expect(page.locator("tr", has_text=agent)).to_have_count(0)
    context.close()


def test_web05_a_viewer_sees_no_actions_and_a_forged_post_is_refused(live: RunningConsole, browser: Browser) -> None:
    lineage: Lineage = off_loop(lambda: make_lineage(live.sts))
    context, page = logged_in(browser, live.link("viewer", "console:vera"))
    page.goto(f"{live.url}/tasks/{lineage.id}")
    assert page.locator("ul.actions").count() == 0
    csrf = page.locator("form.who input[name=csrf]").input_value()
    status = page.evaluate(
        """async ([url, csrf]) => (await fetch(url, {method: "POST", body: new URLSearchParams({csrf}),
                                                    redirect: "manual"})).status""",
        [f"{live.url}/tasks/{lineage.id}/complete", csrf],
    )
    assert status == 403
    page.reload()
    assert page.locator("li[role=treeitem].cut").count() == 0  # nothing was revoked
    record = off_loop(lambda: live.sts.last_audit("console.refused"))
    assert record.principal == "console:vera"
    context.close()


_WIDE = """() => [...document.querySelectorAll('body *')]
  .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1 || e.scrollWidth > e.clientWidth + 1)
  .slice(0, 5).map(e => `${e.tagName}.${e.className}: ${(e.textContent || '').slice(0, 60)}`)"""


def test_pages_fit_a_phone_screen_and_work_by_keyboard(demo: RunningConsole, browser: Browser) -> None:
    context, page = logged_in(browser, demo.link("viewer", "console:phone"), width=390, height=844)
    page.goto(demo.url + "/tasks")
    first_task = page.locator("table a[href^='/tasks/tsk_']").first.get_attribute("href")
    for path in ("/", "/tasks", str(first_task), "/agents", "/alerts", "/audit", "/policies", "/exceptions", "/approvals"):
        page.goto(demo.url + path)
        page.wait_for_load_state("load")
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        wide = page.evaluate(_WIDE) if overflow > 1 else []
        assert overflow <= 1, f"{path} is {overflow}px wider than a phone: {wide}"
    page.goto(demo.url + str(first_task))
    shoot(page, "phone-task")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    context.close()
