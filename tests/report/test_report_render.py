"""Markdown, HTML and JSON carry the same findings; every value is escaped for its format."""

from __future__ import annotations

import json
import re

import pytest
from snapshots import healthy, route

from tether.report.controls import run_controls
from tether.report.model import Report
from tether.report.render import coverage, esc, md, render, render_html, render_json, render_markdown

HOSTILE_OWNER = '<script>alert("owned")</script> & "quotes" | pipes\nnew line'


def expiring_report(owner: str = "team-legacy") -> Report:
    return run_controls(healthy({"dpop.max_age": 600}, routes=(route(days=5, owner=owner),)))


def test_markdown_has_summary_counts_then_findings_then_controls() -> None:
    text = render_markdown(expiring_report())
    order = [text.index(f"## {title}") for title in ("Summary", "Findings", "Controls", "Framework coverage")]
    assert order == sorted(order)
    assert "| 0 | 1 | 0 | 1 | 0 |" in text  # critical high medium low info
    finding = next(line for line in text.splitlines() if line.startswith("| high | warn | BEARER-01"))
    assert "expires in 5 day(s)" in finding and "team-legacy" in finding
    assert "### BEARER-01\\[legacy-crm\\]: Bearer exceptions are owned, justified and current — WARN (high)" in text
    assert "| days to expiry | 5 |" in text
    assert "ASI03 Identity and Privilege Abuse" in text and "L6 Security and Compliance" in text and "MANAGE 3.1" in text


def test_markdown_without_findings_says_so() -> None:
    text = render_markdown(run_controls(healthy()))
    assert "No findings." in text and "| 0 | 0 | 0 | 0 | 0 |" in text


def test_markdown_escapes_values_so_they_stay_text_in_one_cell() -> None:
    text = render_markdown(expiring_report(HOSTILE_OWNER))
    assert not re.search(r"(?<!\\)<", text)  # every "<" is backslash-escaped: no value can open a tag
    owner_row = next(line for line in text.splitlines() if line.startswith("| owner |"))
    cells = re.split(r"(?<!\\)\|", owner_row)[1:-1]  # split on unescaped pipes only
    assert len(cells) == 3, cells
    assert "\\<script\\>" in owner_row and "new line" in owner_row


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("session_ttl", "session_ttl"),
        ("_emphasis_", "\\_emphasis\\_"),
        ("*bold* [link](x) `code`", "\\*bold\\* \\[link\\](x) \\`code\\`"),
        ("a|b", "a\\|b"),
        ("two\nlines", "two lines"),
        ("<img src=x>", "\\<img src=x\\>"),
    ],
)
def test_md_escape(raw: str, escaped: str) -> None:
    assert md(raw) == escaped


def test_html_is_self_contained_with_summary_at_the_top() -> None:
    page = render_html(expiring_report())
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert "<style>" in page and "<link" not in page and "<script" not in page and "<img" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # no external resource of any kind
    assert page.index("Summary") < page.index("Findings") < page.index("<h2>Controls</h2>")
    assert '<span class="badge high">high</span> 1' in page
    assert "bearer exception `legacy-crm` (owner team-legacy) expires in 5 day(s)" in page


def test_html_escapes_every_value_a_route_owner_script_is_text() -> None:
    page = render_html(expiring_report(HOSTILE_OWNER))
    assert "<script" not in page
    assert "&lt;script&gt;alert(&quot;owned&quot;)&lt;/script&gt; &amp; &quot;quotes&quot;" in page
    assert '"owned"' not in page  # no raw quote could close an attribute


def test_json_has_the_same_content_as_the_report() -> None:
    report = expiring_report()
    data = json.loads(render_json(report))
    assert data["summary"]["high"] == 1 and data["summary"]["low"] == 1 and data["summary"]["worst"] == "high"
    assert data["summary"]["results"] == len(report.results)
    assert data["findings"] == [r.id for r in report.findings()] == ["BEARER-01[legacy-crm]", "DPOP-01"]
    assert [r["id"] for r in data["results"]] == [r.id for r in report.results]
    bearer = next(r for r in data["results"] if r["id"] == "BEARER-01[legacy-crm]")
    assert bearer["status"] == "warn" and bearer["severity"] == "high" and bearer["subject"] == "legacy-crm"
    assert {"name": "days to expiry", "value": "5", "source": bearer["evidence"][3]["source"]} == bearer["evidence"][3]
    assert {"id": "ASI03", "name": "Identity and Privilege Abuse"} in bearer["mappings"]["owasp_asi"]
    govern = {"id": "GOVERN 6.1", "function": "GOVERN", "name": "policies address risks of third-party entities"}
    assert govern in bearer["mappings"]["nist_ai_rmf"]
    first = data["coverage"]["owasp_asi"][0]
    assert first == {"id": "ASI01", "name": "Agent Goal Hijack", "controls": [], "status": "not covered"}


def test_json_keeps_hostile_text_as_data() -> None:
    data = json.loads(render_json(expiring_report(HOSTILE_OWNER)))
    bearer = next(r for r in data["results"] if r["control"] == "BEARER-01")
    assert bearer["evidence"][0] == {"name": "owner", "value": HOSTILE_OWNER, "source": bearer["evidence"][0]["source"]}


def test_every_result_appears_in_every_format() -> None:
    report = expiring_report()
    texts = {fmt: render(report, fmt) for fmt in ("md", "html", "json")}
    for result in report.results:
        assert md(result.id) in texts["md"] and md(result.summary) in texts["md"]
        assert esc(result.id) in texts["html"] and esc(result.summary) in texts["html"]
        assert result.id in texts["json"]


def test_coverage_marks_uncovered_items_and_worst_status() -> None:
    rows = {row["id"]: row for row in coverage(expiring_report())["owasp_asi"]}
    assert rows["ASI01"]["status"] == rows["ASI05"]["status"] == rows["ASI06"]["status"] == "not covered"
    assert "BEARER-01" in rows["ASI04"]["controls"] and rows["ASI04"]["status"] == "warn"
    assert rows["ASI08"]["status"] == "pass"
    nist = {row["id"]: row for row in coverage(expiring_report())["nist_ai_rmf"]}
    assert "BEARER-01" in nist["GOVERN"]["controls"] and "BEARER-01" in nist["GOVERN 6.1"]["controls"]


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown report format"):
        render(expiring_report(), "pdf")
