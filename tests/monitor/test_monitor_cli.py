"""``tether alerts`` over a deployment's store (no STS running): the table from the real executable,
the rest in-process through typer's runner."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import make_deployment
from tether.audit.chain import AuditEvent
from tether.cli.main import app
from tether.config import Config
from tether.store.open import open_store

TETHER = str(Path(sys.prefix) / "bin" / "tether")
AGENT = "spiffe://tether.local/agent/research"


def tether(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update({"COLUMNS": "250", "NO_COLOR": "1"})
    return subprocess.run([TETHER, *args], capture_output=True, text=True, timeout=60, check=False, env=env)


def alerts_json(*args: str) -> list[dict[str, object]]:
    result = CliRunner().invoke(app, ["alerts", "--json", *args])
    assert result.exit_code == 0, result.output
    value: list[dict[str, object]] = json.loads(result.stdout)
    return value


def seed(config: Config, alerts: list[tuple[float, str, str]]) -> None:
    """``(age in seconds, detector, severity)`` alerts, with unrelated records around them."""

    async def write() -> None:
        store = await open_store(config)
        try:
            for age, detector, severity in alerts:
                now = time.time() - age
                await store.append_audit(AuditEvent(kind="token.issued", outcome="ok", principal=AGENT), now=now)
                detail = {"detector": detector, "severity": severity, "reason": f"{detector} happened", "agent": AGENT,
                          "evidence": {"count": 3}, "actions": ["alert"]}  # fmt: skip
                event = AuditEvent(kind="alert.raised", outcome="alert", principal="monitor", task="tsk_1", detail=detail)
                await store.append_audit(event, now=now)
        finally:
            await store.aclose()

    asyncio.run(write())


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    config = make_deployment(tmp_path / "d")
    seed(config, [(3600, "new_audience", "medium"), (120, "refusal_burst", "high"), (10, "dpop_replay", "high")])
    assert config.path is not None
    return config.path


def test_alerts_table_lists_newest_first(deployment: Path) -> None:
    result = tether("alerts", "--config", str(deployment))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for column in ("time", "detector", "severity", "agent", "task", "reason"):
        assert column in out
    assert out.index("dpop_replay") < out.index("refusal_burst") < out.index("new_audience")
    assert "alerts (3)" in out and AGENT in out and "tsk_1" in out


def test_alerts_json_since_and_limit(deployment: Path) -> None:
    everything = alerts_json("--config", str(deployment))
    assert [a["detector"] for a in everything] == ["dpop_replay", "refusal_burst", "new_audience"]
    first = everything[0]
    assert first["severity"] == "high" and first["agent"] == AGENT and first["task"] == "tsk_1"
    assert first["evidence"] == {"count": 3} and first["reason"] == "dpop_replay happened"
    recent = alerts_json("--config", str(deployment), "--since", "600")
    assert [a["detector"] for a in recent] == ["dpop_replay", "refusal_burst"]
    newest = alerts_json("--config", str(deployment), "--limit", "1")
    assert [a["detector"] for a in newest] == ["dpop_replay"]


def test_alerts_with_none_recorded_is_an_empty_list(tmp_path: Path) -> None:
    config = make_deployment(tmp_path / "empty")
    assert alerts_json("--config", str(config.path)) == []


@pytest.mark.parametrize("args", [["--since", "0"], ["--limit", "0"], ["--limit", "x"]])
def test_alerts_bad_arguments_exit_2(deployment: Path, args: list[str]) -> None:
    result = CliRunner().invoke(app, ["alerts", "--config", str(deployment), *args])
    assert (result.exit_code == 2 and result.exception is None) or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output


def test_alerts_missing_config_exits_2_with_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["alerts", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "not found" in lines[0]
