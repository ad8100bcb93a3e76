"""The overview's figures and the agents page with its kill switch, over real HTTP (WEB-02, WEB-05)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from consolekit import Browser, RunningConsole, running_console
from pageskit import RESOURCES, SERVICE_B, audit_of, end_by_admin_api, make_lineage, with_store

from helpers import AGENT, Client, create_task
from tether.audit.anonymous import AnonymousRefusals
from tether.audit.chain import AuditEvent
from tether.store.protocol import Store


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningConsole]:
    with running_console(tmp_path_factory.mktemp("pages-agents"), extra_toml=RESOURCES) as running:
        yield running


def _refusals(page: str, error: str) -> int:
    found = re.search(rf"<code>{re.escape(error)}</code> (\d+)", page)
    return int(found.group(1)) if found else 0


def _issued(page: str) -> int:
    found = re.search(r"(\d+) tokens issued in the last minute", page)
    assert found is not None, page
    return int(found.group(1))


def test_overview_counts_tasks_exchanges_and_feed(console: RunningConsole) -> None:
    viewer = console.login("viewer")
    first = viewer.get("/")
    assert first.status_code == 200 and "no revocation in force" in first.text
    lineage = make_lineage(console.sts)
    create_task(console.sts)
    page = viewer.get("/").text
    live = re.search(r'<a href="/tasks\?state=active">(\d+)</a>', page)
    assert live is not None and int(live.group(1)) == 2
    issued = [r for r in console.sts.audit() if r.kind == "token.issued" and r.outcome == "ok"]
    assert _issued(page) == len(issued) >= 3  # session, hop, actor hop (and the admin's own tokens)
    end_by_admin_api(console.sts, lineage.id)
    after = viewer.get("/").text
    assert "newest entry <code>#" in after and "no revocation in force" not in after
    assert re.search(r'state-completed">completed</span> 1</a>', after)
    assert 'href="/tasks?state=active"' in after and 'href="/alerts"' in after and "Store" in after


def test_overview_counts_anonymous_refusal_summaries_as_what_they_stand_for(console: RunningConsole) -> None:
    viewer = console.login("viewer")
    before = _refusals(viewer.get("/").text, "invalid_dpop_proof")

    async def refuse_six(store: Store) -> None:
        counted = AnonymousRefusals(lambda event, now: store.append_audit(event, now=now), interval=60)
        now = console.sts.clock.now()
        event = AuditEvent(kind="token.refused", outcome="refused", error="invalid_dpop_proof", detail={"reason": "x"})
        for _ in range(6):
            await counted.record(event, source="203.0.113.9", now=now)
        await counted.flush(now, everything=True)  # one record at once, then one summary standing for five

    with_store(console.runtime.config, refuse_six)
    assert _refusals(viewer.get("/").text, "invalid_dpop_proof") == before + 6


def test_overview_lists_the_latest_alerts(console: RunningConsole) -> None:
    async def alert(store: Store) -> None:
        event = AuditEvent(
            kind="alert.raised", outcome="ok", principal=AGENT, detail={"detector": "rate_spike", "reason": "<b>burst</b>"}
        )
        await store.append_audit(event, now=console.sts.clock.now())

    with_store(console.runtime.config, alert)
    page = console.login("viewer").get("/").text
    assert "rate_spike" in page and "&lt;b&gt;burst&lt;/b&gt;" in page and "<b>burst" not in page


def _holding(browser: Browser, agent: str) -> tuple[int, int] | None:
    page = browser.get("/agents").text
    found = re.search(rf'<code>{re.escape(agent)}</code></a></td>\s*<td data-label="Live tasks">(\d+)</td>\s*'
                      r'<td data-label="Live tokens">(\d+)</td>', page)  # fmt: skip
    return (int(found.group(1)), int(found.group(2))) if found else None


def test_agents_page_shows_holdings_and_an_operator_blocks_and_unblocks(console: RunningConsole) -> None:
    agent = "spiffe://tether.local/agent/research"
    assert agent == AGENT
    lineage = make_lineage(console.sts)
    operator = console.login("operator", "console:olga")
    held = _holding(operator, AGENT)
    assert held is not None and held[0] >= 1 and held[1] >= 3
    viewer = console.login("viewer")
    assert "/principals/block/confirm" not in viewer.get("/agents").text  # a viewer sees no action
    confirm = operator.get("/principals/block/confirm", params={"kind": "agent", "value": AGENT})
    assert confirm.status_code == 200 and "every token derived from them is revoked at once" in confirm.text
    assert 'name="value" value="spiffe://tether.local/agent/research"' in confirm.text
    assert lineage.agent.hop(lineage.session, SERVICE_B).status_code == 200  # the GET changed nothing
    done = operator.post("/principals/block", {"csrf": operator.csrf("/agents"), "kind": "agent", "value": AGENT})
    assert done.status_code == 303 and done.headers["location"] == "/agents"
    assert lineage.agent.hop(lineage.session, SERVICE_B).status_code == 400  # the STS refuses it now
    record = audit_of(console, "principal.blocked")[-1]
    assert record.principal == "console:olga" and record.detail["agent"] == AGENT and record.detail["via"] == "console"
    page = operator.get("/agents").text
    assert "Blocked principals" in page and "Nobody is blocked" not in page and f"<code>{AGENT}</code>" in page
    assert _holding(operator, AGENT) is None  # its tasks ended with the block
    lifted = operator.post("/principals/unblock", {"csrf": operator.csrf("/agents"), "kind": "agent", "value": AGENT})
    assert lifted.status_code == 303 and "Nobody is blocked" in operator.get("/agents").text
    task = create_task(console.sts)
    assert Client(console.sts).session(task["id"]).status_code == 200  # exchanges work again


def test_an_operator_blocks_a_subject_from_the_form(console: RunningConsole) -> None:
    subject = "user:carol"
    lineage = make_lineage(console.sts, on_behalf_of=subject)
    operator = console.login("operator", "console:olga")
    assert 'action="/principals/block/confirm"' in operator.get("/agents").text  # the block form (a GET)
    confirm = operator.get("/principals/block/confirm", params={"kind": "subject", "value": subject})
    assert confirm.status_code == 200 and "subject user:carol" in confirm.text
    done = operator.post("/principals/block", {"csrf": operator.csrf("/agents"), "kind": "subject", "value": subject})
    assert done.status_code == 303
    assert lineage.agent.hop(lineage.session, SERVICE_B).status_code == 400
    page = operator.get("/agents").text
    assert re.search(r"<td data-label=\"Kind\">subject</td>\s*<td data-label=\"Principal\"><code>user:carol</code>", page)
    operator.post("/principals/unblock", {"csrf": operator.csrf("/agents"), "kind": "subject", "value": subject})
    assert "Nobody is blocked" in operator.get("/agents").text
