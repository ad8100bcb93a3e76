"""The console's record pages over a real STS and store: alerts, bearer exceptions, policies, audit
(SECURITY WEB-03: every value from the store escaped, bad parameters a 400 page, never a 500)."""

from __future__ import annotations

import datetime as dt
import html
import json
import re
from collections.abc import Iterator

import pytest
from consolekit import RunningConsole, running_console
from recordskit import append, cells, checkpoint

from services import store_sql
from tether.console.pages.records import CHAIN_CACHE, without_userinfo

HOSTILE = "<script>alert(1)</script>\"'&\u202egnp.exe"
EXPIRED = (dt.date.today() - dt.timedelta(days=30)).isoformat()

EXTRA = f"""
[console]
page_size = 2

[gateway]
url = "http://127.0.0.1:9"
port = 9

[[gateway.routes]]
name = "crm"
upstream = "http://127.0.0.1:9/api"
secret = "crm-key"
allow = ["GET /v1/items", "GET /v1/items/*", "POST /v1/items"]
owner = "team-legacy"
justification = {json.dumps("vendor only takes a static key <script>alert(1)</script>")}
expires = {EXPIRED}

[[gateway.routes]]
name = "billing"
upstream = "http://billing-user:s3cr3t-in-url@127.0.0.1:9/billing"
secret = "billing-key"
allow = ["GET /invoices"]
owner = "team-billing"
justification = "legacy billing API"
expires = 2099-12-31

[[gateway.mcp]]
name = "files"
command = ["python3", "files.py"]
tools = ["read_file", "list_directory"]
owner = "team-tools"
justification = "agents read the shared drive"
expires = 2099-12-31
"""


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningConsole]:
    with running_console(tmp_path_factory.mktemp("records"), extra_toml=EXTRA) as running:
        yield running


def _now(console: RunningConsole) -> float:
    return console.sts.clock.now()


def assert_escaped(page: str) -> None:
    """WEB-03: the hostile text appears only escaped: no live tag, no raw bidi override."""
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "\u202e" not in page and "\\u202e" in page


# -- alerts ---------------------------------------------------------------------------------------


def test_alerts_newest_first_paged_with_before(console: RunningConsole) -> None:
    config = console.sts.config
    seqs = []
    for n in range(3):
        detail = {"detector": "rate_spike", "severity": "high", "agent": "spiffe://tether.local/agent/a",
                  "reason": f"alert number {n}", "evidence": {"rate": n}, "actions": ["alert"]}  # fmt: skip
        seqs.append(append(config, "alert.raised", now=_now(console), outcome="alert", task="tsk_alerts", detail=detail).seq)
    browser = console.login("viewer")
    first = browser.get("/alerts")
    assert first.status_code == 200
    assert cells(first.text, "Reason")[:2] == ["alert number 2", "alert number 1"]
    older = re.search(r'href="/alerts\?before=(\d+)"', first.text)
    assert older is not None and int(older.group(1)) <= seqs[1]
    second = browser.get(f"/alerts?before={older.group(1)}")
    assert second.status_code == 200
    assert "alert number 0" in cells(second.text, "Reason") and "alert number 2" not in second.text
    assert "rate_spike" in first.text and "high" in first.text


def test_web03_alert_fields_are_escaped(console: RunningConsole) -> None:
    detail = {"detector": "x", "severity": "low", "agent": HOSTILE, "reason": HOSTILE, "evidence": {"k": HOSTILE}}
    append(console.sts.config, "alert.raised", now=_now(console), outcome="alert", detail=detail)
    page = console.login("viewer").get("/alerts")
    assert page.status_code == 200
    assert_escaped(page.text)


@pytest.mark.parametrize("query", ["before=abc", "before=-1", "before=0", "before=1e9", "before=99999999999999999999999"])
def test_web03_bad_before_is_a_400_page(console: RunningConsole, query: str) -> None:
    browser = console.login("viewer")
    for path in ("/alerts", "/audit"):
        page = browser.get(f"{path}?{query}")
        assert page.status_code == 400, (path, query, page.text[:200])
        assert "text/html" in page.headers["content-type"] and "Traceback" not in page.text


# -- bearer exceptions ----------------------------------------------------------------------------


def test_exceptions_show_owner_expiry_and_calls(console: RunningConsole) -> None:
    config = console.sts.config
    for _ in range(3):
        append(config, "gateway.call", now=_now(console), principal="agent", detail={"route": "crm", "method": "GET"})
    append(config, "gateway.call", now=_now(console), principal="agent", detail={"route": "billing", "method": "GET"})
    append(config, "mcp.call", now=_now(console), principal="agent", detail={"route": "files", "tool": "read_file"})
    before = _utc_day(console)
    page = console.login("viewer").get("/exceptions")
    after = _utc_day(console)
    assert page.status_code == 200
    routes, calls = cells(page.text, "Route"), cells(page.text, "Calls")
    assert routes == ["crm", "billing", "files"]
    assert calls == ["3", "1", "1"]
    expires = cells(page.text, "Expires")
    # counted from the UTC day the page was rendered on: a run across midnight sees 31
    ago = {f"expired {(day - dt.date.fromisoformat(EXPIRED)).days} days ago" for day in (before, after)}
    assert any(text in expires[0] for text in ago) and "days left" in expires[1]
    assert "team-legacy" in cells(page.text, "Owner")
    assert "GET /v1/items/*" in cells(page.text, "Allowlist")[0]
    assert "among the newest 5000 audit records" in page.text
    assert "<script>alert(1)" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "s3cr3t-in-url" not in page.text and "billing-user" not in page.text  # userinfo never shown
    assert "http://[redacted]@127.0.0.1:9/billing" in cells(page.text, "Upstream")[1]


def _utc_day(console: RunningConsole) -> dt.date:
    return dt.datetime.fromtimestamp(_now(console), dt.UTC).date()


# -- policies -------------------------------------------------------------------------------------


def test_policies_mark_current_version_and_list_shadow_differences(console: RunningConsole) -> None:
    config = console.sts.config
    differs = {"version": "v-test", "decision": "allow", "determining": ["policy0"], "mode": "shadow",
               "shadow": {"decision": "deny", "determining": ["shadow-forbid"]}}  # fmt: skip
    same = {**differs, "shadow": {"decision": "allow", "determining": []}}
    append(config, "token.issued", now=_now(console), principal="spiffe://x/differs", task="tsk_a", detail={"policy": differs})
    append(config, "token.issued", now=_now(console), principal="spiffe://x/same", task="tsk_b", detail={"policy": same})
    page = console.login("viewer").get("/policies")
    assert page.status_code == 200
    current = console.runtime.ctx.policy.version
    assert current and current in page.text and "in force" in page.text
    assert "enforce" in page.text  # the mode
    principals = cells(page.text, "Principal")
    assert "spiffe://x/differs" in principals and "spiffe://x/same" not in principals
    assert "shadow-forbid" in page.text and "among the newest 2000 audit records" in page.text


# -- audit ----------------------------------------------------------------------------------------


def test_audit_search_by_task_principal_and_kind_prefix(console: RunningConsole) -> None:
    config = console.sts.config
    append(config, "approval.requested", now=_now(console), principal="spiffe://t/agent", task="tsk_search")
    append(config, "approval.approved", now=_now(console), principal="user:alice@example.com", task="tsk_search")
    append(config, "token.issued", now=_now(console), principal="spiffe://t/agent", task="tsk_search")
    browser = console.login("viewer")
    by_kind = browser.get("/audit", params={"kind": "approval.", "task": "tsk_search"})
    assert by_kind.status_code == 200
    assert cells(by_kind.text, "Kind") == ["approval.approved", "approval.requested"]
    by_principal = browser.get("/audit", params={"principal": "spiffe://t/agent", "task": "tsk_search"})
    assert cells(by_principal.text, "Kind") == ["token.issued", "approval.requested"]
    exact = browser.get("/audit", params={"kind": "token.issued", "task": "tsk_search"})
    assert cells(exact.text, "Kind") == ["token.issued"]
    unbounded = browser.get("/audit", params={"kind": "approval."})
    assert "Searched at most the newest 20000 records" in unbounded.text


def test_web03_audit_detail_is_escaped_and_truncated(console: RunningConsole) -> None:
    append(console.sts.config, "test.hostile", now=_now(console), principal=HOSTILE, task="tsk_hostile",
           detail={"note": HOSTILE, "long": "x" * 2000})  # fmt: skip
    page = console.login("viewer").get("/audit", params={"task": "tsk_hostile"})
    assert page.status_code == 200
    assert "<script>alert(1)" not in page.text and "\u202e" not in page.text
    assert "&lt;script&gt;" in page.text
    detail = cells(page.text, "Detail")[0]
    assert len(html.unescape(detail)) <= 301 and detail.endswith("…")


@pytest.mark.parametrize("query", [{"kind": "<script>"}, {"kind": "Token.Issued"}, {"task": "a\u0000b"}, {"task": "t" * 201},
                                   {"principal": "p\u202e"}])  # fmt: skip
def test_web03_bad_audit_filters_are_a_400_page(console: RunningConsole, query: dict[str, str]) -> None:
    page = console.login("viewer").get("/audit", params=query)
    assert page.status_code == 400 and "Traceback" not in page.text


def test_audit_chain_status_verifies_the_newest_checkpoint_and_detects_an_edit(console: RunningConsole) -> None:
    config = console.sts.config
    written = checkpoint(config, now=_now(console) + 1)
    assert written is not None
    after = append(config, "test.after-checkpoint", now=_now(console) + 2)
    browser = console.login("viewer")
    console.sts.clock.advance(CHAIN_CACHE + 1)  # past a status another test's view left cached
    page = browser.get("/audit")
    assert page.status_code == 200
    assert "verified</span>" in page.text and f"Newest checkpoint: record {written.seq}" in page.text
    assert "signature verified with the issuer" in page.text
    store_sql(config, "UPDATE audit SET outcome = ? WHERE seq = ?", ("refused", after.seq))
    assert "broken</span>" not in browser.get("/audit").text  # one verification serves CHAIN_CACHE seconds
    console.sts.clock.advance(CHAIN_CACHE + 1)
    broken = browser.get("/audit")
    assert broken.status_code == 200
    assert "broken</span>" in broken.text and f"broken at record {after.seq}" in broken.text
    store_sql(config, "UPDATE audit SET outcome = ? WHERE seq = ?", ("ok", after.seq))  # the module's log stays intact
    console.sts.clock.advance(CHAIN_CACHE + 1)
    assert "verified</span>" in browser.get("/audit").text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:p@api.example/x?q=1", "https://[redacted]@api.example/x?q=1"),
        ("https://token@api.example:8443/", "https://[redacted]@api.example:8443/"),
        ("http://u:p@[::1]:9/", "http://[redacted]@[::1]:9/"),
        ("https://api.example/x", "https://api.example/x"),
    ],
)
def test_upstream_userinfo_is_never_shown(url: str, shown: str) -> None:
    assert without_userinfo(url) == shown
