"""Render a report as Markdown, one self-contained HTML file, or JSON — the same content in each.

Every value comes from configuration or the store, and some are free text written
by people (a route's owner and justification), so every value is escaped for its
format: HTML-escaped (quotes too) in HTML, whose Content-Security-Policy also
forbids any script or external load; backslash-escaped Markdown punctuation
(CommonMark §2.4) so no value becomes a tag, link or table cell break.
"""

from __future__ import annotations

import html
import json
from typing import Any

from tether.report.frameworks import ASI, LLM, MAESTRO, NIST_FUNCTIONS, NIST_SUBCATEGORIES, nist_function
from tether.report.model import Report, Result
from tether.report.outcome import iso

__all__ = ["FORMATS", "as_json", "coverage", "render", "render_html", "render_json", "render_markdown"]

FORMATS = ("md", "html", "json")
FRAMEWORK_TITLES = {
    "owasp_asi": "OWASP Top 10 for Agentic Applications 2026",
    "owasp_llm": "OWASP Top 10 for LLM Applications 2025",
    "maestro": "CSA MAESTRO layers",
    "nist_ai_rmf": "NIST AI RMF 1.0",
}


# -- shared content -----------------------------------------------------------------------
def _refs(result: Result) -> dict[str, list[dict[str, str]]]:
    return {
        "owasp_asi": [{"id": a, "name": ASI[a]} for a in result.asi],
        "owasp_llm": [{"id": a, "name": LLM[a]} for a in result.llm],
        "maestro": [{"id": m, "name": MAESTRO[m]} for m in result.maestro],
        "nist_ai_rmf": [{"id": n, "function": nist_function(n), "name": NIST_SUBCATEGORIES[n]} for n in result.nist],
    }


def _worst_status(results: list[Result]) -> str:
    if not results:
        return "not covered"
    statuses = {r.status for r in results}
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"


def coverage(report: Report) -> dict[str, list[dict[str, Any]]]:
    """Per framework item: the controls that give evidence for it and their worst status ("not covered" if none)."""

    def rows(items: dict[str, str], refs_of: Any) -> list[dict[str, Any]]:
        out = []
        for key, name in items.items():
            hits = [r for r in report.results if key in refs_of(r)]
            controls = list(dict.fromkeys(r.control for r in hits))
            out.append({"id": key, "name": name, "controls": controls, "status": _worst_status(hits)})
        return out

    nist_items = {**NIST_FUNCTIONS, **NIST_SUBCATEGORIES}
    return {
        "owasp_asi": rows(dict(ASI), lambda r: r.asi),
        "owasp_llm": rows(dict(LLM), lambda r: r.llm),
        "maestro": rows(dict(MAESTRO), lambda r: r.maestro),
        "nist_ai_rmf": rows(nist_items, lambda r: {*r.nist, *(nist_function(n) for n in r.nist)}),
    }


def _summary(report: Report) -> dict[str, Any]:
    statuses = [r.status for r in report.results]
    return {
        **report.counts(),
        "findings": len(report.findings()),
        "results": len(report.results),
        "pass": statuses.count("pass"),
        "warn": statuses.count("warn"),
        "fail": statuses.count("fail"),
        "worst": report.worst(),
    }


def as_json(report: Report) -> dict[str, Any]:
    return {
        "report": "tether posture report",
        "format_version": 1,
        "generated_at": iso(report.generated_at),
        "deployment": {
            "config": report.config_path,
            "issuer": report.issuer,
            "store": report.store,
            "settings_from": report.settings_from,
        },
        "summary": _summary(report),
        "findings": [r.id for r in report.findings()],
        "results": [
            {
                "id": r.id,
                "control": r.control,
                "subject": r.subject,
                "title": r.title,
                "status": r.status,
                "severity": r.severity,
                "summary": r.summary,
                "evidence": [{"name": i.name, "value": i.value, "source": i.source} for i in r.evidence],
                "remediation": r.remediation,
                "mappings": _refs(r),
            }
            for r in report.results
        ],
        "frameworks": FRAMEWORK_TITLES,
        "coverage": coverage(report),
    }


def render_json(report: Report) -> str:
    return json.dumps(as_json(report), indent=2, ensure_ascii=False) + "\n"


# -- Markdown -----------------------------------------------------------------------------
_MD_SPECIAL = "\\`*[]<>|#!"


def md(value: object) -> str:
    """One line of literal text: Markdown punctuation backslash-escaped, line breaks flattened.

    ``_`` is escaped only at a word boundary: inside a word (``session_ttl``) it cannot
    start emphasis (CommonMark §6.2), and leaving it keeps the raw file readable.
    """
    text = " ".join(str(value).split())
    if not text.isprintable():  # an ESC would start a terminal escape sequence where the report is read
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    out = []
    for i, c in enumerate(text):
        inner = c == "_" and 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()
        out.append("\\" + c if c in _MD_SPECIAL or (c == "_" and not inner) else c)
    return "".join(out)


def _ref_text(result: Result) -> str:
    refs = _refs(result)
    parts = [
        "OWASP " + ", ".join(f"{a['id']} {a['name']}" for a in refs["owasp_asi"]),
        "MAESTRO " + ", ".join(f"{m['id']} {m['name']}" for m in refs["maestro"]),
        "NIST AI RMF " + ", ".join(n["id"] for n in refs["nist_ai_rmf"]),
    ]
    if refs["owasp_llm"]:
        parts.insert(1, "OWASP LLM " + ", ".join(f"{a['id']} {a['name']}" for a in refs["owasp_llm"]))
    return "; ".join(parts)


def _label(result: Result) -> str:
    return result.status.upper() + (f" ({result.severity})" if result.severity else "")


def render_markdown(report: Report) -> str:
    summary = _summary(report)
    lines = [
        "# tether posture report",
        "",
        f"Generated {md(iso(report.generated_at))} for {md(report.issuer)} "
        f"(config {md(report.config_path)}, store {md(report.store)}).",
        "",
        f"Settings read from {md(report.settings_from)}.",
        "",
        "## Summary",
        "",
        "| critical | high | medium | low | info |",
        "| --- | --- | --- | --- | --- |",
        "| " + " | ".join(str(summary[s]) for s in ("critical", "high", "medium", "low", "info")) + " |",
        "",
        f"{summary['results']} results: {summary['pass']} pass, {summary['warn']} warn, {summary['fail']} fail.",
        "",
        "## Findings",
        "",
    ]
    findings = report.findings()
    if findings:
        lines += ["| severity | status | control | finding | remediation |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r.severity} | {r.status} | {md(r.id)} | {md(r.summary)} | {md(r.remediation)} |" for r in findings]
    else:
        lines.append("No findings.")
    lines += ["", "## Controls", ""]
    for r in report.results:
        lines += [
            f"### {md(r.id)}: {md(r.title)} — {_label(r)}",
            "",
            md(r.summary),
            "",
            "| evidence | value | source |",
            "| --- | --- | --- |",
        ]
        lines += [f"| {md(i.name)} | {md(i.value)} | {md(i.source)} |" for i in r.evidence]
        lines += ["", f"Remediation: {md(r.remediation)}", "", f"Maps to: {md(_ref_text(r))}", ""]
    lines += ["## Framework coverage", ""]
    for key, rows in coverage(report).items():
        lines += [f"### {FRAMEWORK_TITLES[key]}", "", "| id | name | controls | status |", "| --- | --- | --- | --- |"]
        lines += [
            f"| {md(row['id'])} | {md(row['name'])} | {md(', '.join(row['controls']) or '—')} | {row['status']} |"
            for row in rows
        ]
        lines.append("")
    return "\n".join(lines)


# -- HTML ---------------------------------------------------------------------------------
_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;color:#1d2330}
h1{margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #d8dce4}h3{margin:1.6rem 0 .4rem}
table{border-collapse:collapse;width:100%;margin:.4rem 0 .8rem}th,td{border:1px solid #d8dce4;padding:.3rem .5rem;
text-align:left;vertical-align:top}th{background:#f2f4f8}td{overflow-wrap:anywhere}.meta{color:#5a6272}
.badge{display:inline-block;border-radius:.8rem;padding:0 .55rem;font-size:.8rem;font-weight:600;color:#fff;white-space:nowrap}
.pass{background:#2f7d46}.warn{background:#b7791f}.fail{background:#c53030}.notcovered{background:#8a93a3}
.critical{background:#7b1e1e}.high{background:#c53030}.medium{background:#d97706}.low{background:#2b6cb0}.info{background:#5a6272}
.counts td{text-align:center;font-size:1.3rem;font-weight:600}.control{border-left:4px solid #d8dce4;padding-left:.8rem}
.ctl-fail{border-color:#c53030}.ctl-warn{border-color:#b7791f}.ctl-pass{border-color:#2f7d46}.refs{color:#5a6272;font-size:.9rem}
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _badge(text: str) -> str:
    return f'<span class="badge {esc(text.replace(" ", ""))}">{esc(text)}</span>'


def _table(head: list[str], rows: list[list[str]]) -> str:
    """``rows`` cells must already be escaped HTML."""
    out = ["<table><thead><tr>", *(f"<th>{esc(h)}</th>" for h in head), "</tr></thead><tbody>"]
    out += ["<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows]
    out.append("</tbody></table>")
    return "".join(out)


def _html_result(r: Result) -> str:
    ref_text = _ref_text(r)
    badges = _badge(r.status) + (" " + _badge(r.severity) if r.severity else "")
    evidence = _table(["evidence", "value", "source"], [[esc(i.name), esc(i.value), esc(i.source)] for i in r.evidence])
    return (
        f'<section class="control ctl-{esc(r.status)}" id="{esc(r.id)}"><h3>{esc(r.id)}: {esc(r.title)} {badges}</h3>'
        f"<p>{esc(r.summary)}</p>{evidence}<p><strong>Remediation:</strong> {esc(r.remediation)}</p>"
        f'<p class="refs">Maps to: {esc(ref_text)}</p></section>'
    )


def render_html(report: Report) -> str:
    summary = _summary(report)
    severities = ("critical", "high", "medium", "low", "info")
    counts = _table(list(severities), [[_badge(s) + f" {summary[s]}" for s in severities]]).replace(
        "<table>", '<table class="counts">', 1
    )
    findings = report.findings()
    finding_rows = [
        [
            _badge(r.severity or "info"),
            _badge(r.status),
            f'<a href="#{esc(r.id)}">{esc(r.id)}</a>',
            esc(r.summary),
            esc(r.remediation),
        ]
        for r in findings
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>tether posture report — {esc(report.issuer)}</title><style>{_CSS}</style></head><body>",
        "<h1>tether posture report</h1>",
        f'<p class="meta">Generated {esc(iso(report.generated_at))} for {esc(report.issuer)} '
        f"(config {esc(report.config_path)}, store {esc(report.store)}).</p>",
        f'<p class="meta">Settings read from {esc(report.settings_from)}.</p>',
        "<h2>Summary</h2>",
        counts,
        f"<p>{summary['results']} results: {summary['pass']} pass, {summary['warn']} warn, {summary['fail']} fail.</p>",
        "<h2>Findings</h2>",
        _table(["severity", "status", "control", "finding", "remediation"], finding_rows)
        if findings
        else "<p>No findings.</p>",
        "<h2>Controls</h2>",
        *(_html_result(r) for r in report.results),
        "<h2>Framework coverage</h2>",
    ]
    for key, rows in coverage(report).items():
        parts.append(f"<h3>{esc(FRAMEWORK_TITLES[key])}</h3>")
        parts.append(
            _table(
                ["id", "name", "controls", "status"],
                [
                    [esc(row["id"]), esc(row["name"]), esc(", ".join(row["controls"]) or "—"), _badge(row["status"])]
                    for row in rows
                ],
            )
        )
    parts.append("</body></html>\n")
    return "\n".join(parts)


def render(report: Report, fmt: str) -> str:
    """``fmt`` is one of ``FORMATS``."""
    if fmt == "md":
        return render_markdown(report)
    if fmt == "html":
        return render_html(report)
    if fmt == "json":
        return render_json(report)
    raise ValueError(f"unknown report format {fmt!r} (known: {', '.join(FORMATS)})")
