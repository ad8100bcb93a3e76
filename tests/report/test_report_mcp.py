"""Report rows for MCP routes: registered and allowlisted (LLM06), pinned and verifying, no drift (LLM03)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import pytest
from snapshots import TODAY, audit, healthy, only, store

from helpers import make_deployment
from tether.audit.chain import AuditEvent
from tether.mcp.pins import pin_tools, pins_path, save_pins
from tether.report.controls import run_controls
from tether.report.evidence import gather
from tether.report.model import Evidence, McpRouteFacts, PinFacts
from tether.report.render import as_json, render_markdown
from tether.store.open import open_store

VALID = PinFacts("valid", ("list_directory", "read_file"), 1_799_000_000.0, "operator:cli")


def mcp_route(*, tools: tuple[str, ...] = ("read_file",), pins: PinFacts = VALID, days: int = 90,
              secret: str = "") -> McpRouteFacts:  # fmt: skip
    return McpRouteFacts(name="files", owner="team-docs", justification="agents read the shared drive",
                         expires=TODAY + dt.timedelta(days=days), upstream="files-server", transport="stdio",
                         tools=tools, secret=secret, pins=pins)  # fmt: skip


def with_route(route: McpRouteFacts, **changes: Any) -> Evidence:
    return healthy(mcp_routes=(route,), **changes)


def test_no_mcp_routes_pass_and_a_pinned_allowlisted_route_passes() -> None:
    report = run_controls(healthy())
    assert all(only(report, c).status == "pass" for c in ("TOOL-01", "TOOL-02", "TOOL-03"))
    report = run_controls(with_route(mcp_route()))
    for control in ("TOOL-01", "TOOL-02"):
        assert only(report, control, "files").status == "pass"
    assert only(report, "TOOL-03").status == "pass"
    assert only(report, "TOOL-01", "files").llm == ("LLM06",)
    assert only(report, "TOOL-02", "files").llm == ("LLM03", "LLM06")


def test_a_wildcard_allowlist_is_excessive_agency() -> None:
    result = only(run_controls(with_route(mcp_route(tools=("*",)))), "TOOL-01", "files")
    assert (result.status, result.severity) == ("warn", "medium") and "every tool" in result.summary
    assert "LLM06" in result.remediation and "list_directory, read_file" in result.remediation


def test_an_expired_mcp_route_fails_and_a_missing_vault_secret_fails() -> None:
    assert only(run_controls(with_route(mcp_route(days=-1))), "TOOL-01", "files").status == "fail"
    result = only(run_controls(with_route(mcp_route(secret="nope-key"))), "TOOL-01", "files")
    assert result.status == "fail" and "nope-key" in result.summary
    assert only(run_controls(with_route(mcp_route(secret="crm-key"))), "TOOL-01", "files").status == "pass"


@pytest.mark.parametrize(
    ("pins", "status", "severity"),
    [
        (PinFacts("missing"), "fail", "medium"),
        (PinFacts("refused", problem="does not verify"), "fail", "high"),
        (PinFacts("unverified", problem="the master key could not be read"), "warn", "low"),
    ],
)
def test_mcp_pins_missing_refused_unverified(pins: PinFacts, status: str, severity: str) -> None:
    result = only(run_controls(with_route(mcp_route(pins=pins))), "TOOL-02", "files")
    assert (result.status, result.severity) == (status, severity)
    assert ("tether mcp pin files" in result.remediation) == (status == "fail")


def test_an_allowlisted_tool_never_pinned_is_noted() -> None:
    result = only(run_controls(with_route(mcp_route(tools=("read_file", "write_file")))), "TOOL-02", "files")
    assert (result.status, result.severity) == ("warn", "low") and "write_file" in result.summary


def test_drift_records_are_a_high_finding() -> None:
    drifted = store(audit=audit(mcp_drift={"files": 3}, mcp_drift_tools={"files": ("read_file",)}))
    result = only(run_controls(with_route(mcp_route(), store=drifted)), "TOOL-03")
    assert (result.status, result.severity) == ("warn", "high")
    assert "read_file" in result.summary and "tether mcp tools files" in result.remediation
    unreadable = dataclasses.replace(store(), error="database locked", audit=None)
    assert only(run_controls(with_route(mcp_route(), store=unreadable)), "TOOL-03").status == "fail"
    assert only(run_controls(healthy(store=unreadable)), "TOOL-03").status == "pass"  # no MCP routes: nothing to read


def test_llm_mapping_is_rendered() -> None:
    report = run_controls(with_route(mcp_route()))
    data = as_json(report)
    row = next(r for r in data["results"] if r["id"] == "TOOL-01[files]")
    assert {"id": "LLM06", "name": "Excessive Agency"} in row["mappings"]["owasp_llm"]
    coverage = {c["id"]: c for c in data["coverage"]["owasp_llm"]}
    assert coverage["LLM03"]["controls"] == ["TOOL-02", "TOOL-03"] and coverage["LLM01"]["status"] == "not covered"
    assert "OWASP LLM LLM06 Excessive Agency" in render_markdown(report)


def test_gathered_from_a_deployment_with_pins_and_drift(tmp_path: Path) -> None:
    route = ('\n[[gateway.mcp]]\nname = "files"\ncommand = ["files-server"]\ntools = ["read_file"]\n'
             'owner = "team-docs"\njustification = "agents read the shared drive"\nexpires = 2099-01-01\n')  # fmt: skip
    config = make_deployment(tmp_path, extra_toml=route)

    def gathered() -> Evidence:
        return asyncio.run(gather(config, now=time.time(), env={}))

    assert gathered().mcp_routes[0].pins.state == "missing"
    save_pins(config, pin_tools("files", [{"name": "read_file", "description": "Read."}], now=time.time(), by="op"))
    facts = gathered().mcp_routes[0]
    assert facts.pins.state == "valid" and facts.pins.tools == ("read_file",) and facts.upstream == "files-server"
    path = pins_path(config, "files")
    document = json.loads(path.read_text())
    document["tools"]["write_file"] = document["tools"]["read_file"]
    path.write_text(json.dumps(document))
    assert gathered().mcp_routes[0].pins.state == "refused"

    async def drift() -> None:
        store_ = await open_store(config)
        try:
            event = AuditEvent(kind="mcp.drift", outcome="refused", principal="spiffe://tether.local/agent/a",
                               error="access_denied", detail={"route": "files", "tool": "read_file"})  # fmt: skip
            await store_.append_audit(event, now=time.time())
        finally:
            await store_.aclose()

    asyncio.run(drift())
    evidence = gathered()
    assert evidence.store.audit is not None and evidence.store.audit.mcp_drift == {"files": 1}
    assert only(run_controls(evidence), "TOOL-03").severity == "high"
