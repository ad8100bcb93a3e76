"""``tether demo``: the whole story on one machine, every attack refused (issue 3, "What it must show").

Run as the user runs it — the installed console script in a subprocess — and once
in-process through ``run_demo()``. Revocation times are reported, never asserted
(benchmarks are separate); only that both services refused after completion.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tether.demo.acts import ROGUE
from tether.demo.scenario import run_demo

TETHER = Path(sys.prefix) / "bin" / "tether"
ATTACKS = {
    "refused:stolen-token-as-bearer",
    "refused:stolen-token-other-key",
    "refused:proof-replay",
    "refused:wrong-audience",
    "refused:scope-widening",
    "refused:after-completion",
    "refused:exchange-after-completion",
    "refused:gateway-outside-allowlist",
    "refused:rogue-after-suspension",
    # issue 15: the MCP act
    "refused:mcp-outside-allowlist",
    "refused:mcp-tool-scope",
    "refused:mcp-token-for-another-server",
    "refused:mcp-after-completion",
    "refused:mcp-rug-pull",
    # issue 16: the mTLS act (a certificate-bound token with another SVID, none, a forged Client-Cert)
    "refused:mtls-other-certificate",
    "refused:mtls-no-certificate",
    "refused:mtls-spoofed-client-cert",
    "refused:mtls-after-completion",
    # issue 17: the approval act (a non-member, the agent itself, a forged link, changed arguments, a second use)
    "refused:approval-outside-group",
    "refused:approval-by-the-agent",
    "refused:approval-forged-link",
    "refused:approval-changed-arguments",
    "refused:approval-used-twice",
}
#: A compact JWS (any token, proof or SVID) — none may appear in the demo's output (BCP-13).
JWS = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TETHER), "demo", *args], capture_output=True, text=True, timeout=120, check=False)


def _check_result(result: dict[str, Any]) -> None:
    assert result["ok"] is True, result["checks"]
    checks = result["checks"]
    assert set(checks) >= ATTACKS, sorted(checks)
    refused = {name: value for name, value in checks.items() if name.startswith("refused:")}
    assert refused and all(value is True for value in refused.values()), refused
    assert checks["delegation:act-chain"] is True
    assert set(result["revocation_ms"]) == {"B", "C"}
    assert all(isinstance(v, int | float) for v in result["revocation_ms"].values())
    # issue 8: the gateway hides the legacy key; the monitor catches the rogue agent
    assert checks["gateway:key-never-seen"] is True
    assert checks["monitor:rogue-suspended"] is True
    assert checks["monitor:alerts-in-metrics"] is True
    assert checks["mtls:certificate-bound"] is True
    # issue 15: an agent on the MCP SDK lists and calls tools at a protected server and through the gateway
    assert checks["mcp:protected-call"] is True and checks["mcp:gateway-call"] is True
    # issue 17: a held payment approved by a scripted member of finance went through once
    assert checks["approval:held-then-paid"] is True
    # issue 19: a hop across trust domains, and A's task completion ending B's linked task
    assert checks["federation:crossed"] is True and checks["federation:hop-at-b"] is True
    assert checks["federation:revocation-crossed"] is True


def _tether(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TETHER), *args], capture_output=True, text=True, timeout=120, check=False)


def _check_kept_deployment(kept: Path) -> None:
    """Issue 8, "what it must show": on the demo deployment, the rogue agent's alerts are listed
    by ``tether alerts`` and ``tether report`` writes readable HTML with a finding for the
    bearer exception that expires in 10 days."""
    config = str(kept / "tether.toml")
    alerts = _tether("alerts", "--json", "--config", config)
    assert alerts.returncode == 0, alerts.stderr
    # a replay alert names the rogue only as claimed: a replay proves nothing about who sent it
    detectors = {a["detector"] for a in json.loads(alerts.stdout)
                 if ROGUE in (a["agent"], a["evidence"].get("claimed_principal"))}  # fmt: skip
    assert {"dpop_replay", "refusal_burst"} <= detectors
    out = kept / "report.html"
    report = _tether("report", "--config", config, "--format", "html", "--out", str(out))
    assert report.returncode == 0, report.stderr
    html = out.read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert "legacy-crm" in html and "team-crm" in html and "expires in 10 days" in html
    gated = _tether("report", "--config", config, "--format", "json", "--fail-on", "medium")
    assert gated.returncode == 1  # the expiring exception is a medium finding: the gate closes


@pytest.mark.slow
def test_demo_json_subprocess_every_attack_refused(tmp_path: Path) -> None:
    kept = tmp_path / "demo"
    done = _run("--json", "--dir", str(kept))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    _check_result(result)
    _check_kept_deployment(kept)
    kinds = [step["kind"] for step in result["steps"]]
    for kind in ("setup", "task", "identity", "token", "call", "attack"):
        assert kind in kinds, kinds
    assert not JWS.search(done.stdout), "a token or proof was printed"
    assert not JWS.search(done.stderr), "a token or proof was logged"


@pytest.mark.slow
def test_demo_timeline_subprocess_exits_zero() -> None:
    done = _run()
    assert done.returncode == 0, done.stderr[-2000:]
    assert "all checks passed" in done.stdout
    assert f"attacks refused: {len(ATTACKS)}/{len(ATTACKS)}" in done.stdout
    assert not JWS.search(done.stdout + done.stderr)


def test_run_demo_in_process() -> None:
    result = run_demo()
    assert result.ok, result.checks
    _check_result(result.as_json())
    chain = next(s for s in result.steps if s.title.startswith("B → C"))
    assert chain.detail["c_saw"]["actors"] == ["spiffe://tether.local/svc/search", "spiffe://tether.local/agent/research"]
    assert chain.detail["c_saw"]["subject"] == "user:alice"
