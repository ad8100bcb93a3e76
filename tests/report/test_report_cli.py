"""``tether report`` as the real executable: formats, ``--out``, ``--fail-on`` exit codes, ``--measure``.

The deployment is real (``tether init`` into a temporary directory, SQLite or
PostgreSQL + Redis) with a bearer exception expiring in five days — the "must show"
of issue 8: the HTML report has a finding for it, with its owner and days.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from helpers import RunningSts, make_deployment
from tether.cli.main import app
from tether.config import Config
from tether.gateway.vault import put_secret
from tether.keys.sealed import load_master_key
from tether.store.open import open_store

TETHER = str(Path(sys.prefix) / "bin" / "tether")
SECRET_VALUE = "sk_live_legacy_Q7zX9"
WEBHOOK_TOKEN = "T0K3N-do-not-print"
OWNER = "team-legacy <ops@example.org>"


def tether(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update({"COLUMNS": "200", "NO_COLOR": "1"})
    return subprocess.run([TETHER, *args], capture_output=True, text=True, timeout=timeout, check=False, env=env)


def invoke(*args: str) -> Result:
    """The same command in-process (fast): the exit codes and streams of the real CLI."""
    return CliRunner().invoke(app, ["report", *args], env={"COLUMNS": "200", "NO_COLOR": "1"})


def route_toml(expires: dt.date) -> str:
    return f"""
[gateway]
url = "http://127.0.0.1:8710"

[[gateway.routes]]
name = "legacy-crm"
upstream = "https://crm.example"
secret = "crm-key"
allow = ["GET /v1/items"]
owner = "{OWNER}"
justification = "the vendor API only takes a static key"
expires = {expires.isoformat()}

[monitor]
webhook_url = "https://hooks.example/services/{WEBHOOK_TOKEN}"
"""


def store_secret(config: Config) -> None:
    async def run() -> None:
        store = await open_store(config)
        try:
            await put_secret(store, load_master_key(config.master_key_file), "crm-key", SECRET_VALUE.encode(),
                             now=time.time(), actor="test:operator")  # fmt: skip
        finally:
            await store.aclose()

    asyncio.run(run())


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    expires = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=5)
    config = make_deployment(tmp_path_factory.mktemp("report"), extra_toml=route_toml(expires))
    store_secret(config)
    assert config.path is not None
    yield Path(config.path)


def test_html_report_has_the_expiring_bearer_exception_with_owner_and_days(deployment: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    run = tether("report", "--config", str(deployment), "--format", "html", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert f"report written to {out}" in run.stdout and "1 high" in run.stdout
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert "BEARER-01[legacy-crm]" in page
    assert "bearer exception `legacy-crm` (owner team-legacy &lt;ops@example.org&gt;) expires in 5 day(s)" in page
    assert "<td>days to expiry</td><td>5</td>" in page
    assert "<td>owner</td><td>team-legacy &lt;ops@example.org&gt;</td>" in page
    assert "<td>vault secret</td><td>crm-key (present)</td>" in page


def test_BCP_13_no_secret_in_any_format(deployment: Path) -> None:
    for fmt in ("md", "html", "json"):
        run = invoke("--config", str(deployment), "--format", fmt)
        assert run.exit_code == 0, run.stderr
        assert SECRET_VALUE not in run.stdout and WEBHOOK_TOKEN not in run.stdout and "hooks.example" not in run.stdout
        assert "crm-key" in run.stdout  # the vault entry is named, never shown


def test_json_to_stdout_and_markdown_by_default(deployment: Path) -> None:
    data = json.loads(invoke("-c", str(deployment), "-f", "json").stdout)
    assert "BEARER-01[legacy-crm]" in data["findings"] and data["summary"]["high"] == 1
    bearer = next(r for r in data["results"] if r["id"] == "BEARER-01[legacy-crm]")
    assert (bearer["status"], bearer["severity"]) == ("warn", "high")
    assert {"name": "days to expiry", "value": "5"}.items() <= next(
        e for e in bearer["evidence"] if e["name"] == "days to expiry"
    ).items()
    text = invoke("-c", str(deployment)).stdout
    assert text.startswith("# tether posture report") and "BEARER-01\\[legacy-crm\\]" in text


@pytest.mark.parametrize(("threshold", "code"), [("high", 1), ("medium", 1), ("critical", 0)])
def test_fail_on_exits_1_at_or_above_the_threshold(deployment: Path, tmp_path: Path, threshold: str, code: int) -> None:
    out = tmp_path / "r.json"
    run = invoke("-c", str(deployment), "-f", "json", "--out", str(out), "--fail-on", threshold)
    assert run.exit_code == code, run.stderr
    assert json.loads(out.read_text(encoding="utf-8"))["summary"]["high"] == 1  # written before the verdict
    if code:
        assert f"at or above --fail-on {threshold}" in run.stderr and len(run.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "pdf"], "Invalid value for '--format'"),
        (["--fail-on", "severe"], "Invalid value for '--fail-on'"),
        (["--config", "/nonexistent/tether.toml"], "not found; run tether init"),
    ],
)
def test_bad_arguments_and_config_exit_2(deployment: Path, args: list[str], message: str) -> None:
    run = invoke("-c", str(deployment), *args)
    assert run.exit_code == 2 and message in run.stderr and "Traceback" not in run.stderr


def test_unreadable_store_still_reports_and_gates(tmp_path: Path) -> None:
    path = tmp_path / "tether.toml"
    path.write_text('issuer = "https://sts.example.org"\n', encoding="utf-8")
    run = invoke("-c", str(path), "--fail-on", "high")
    assert run.exit_code == 1 and "Traceback" not in run.stderr
    assert "AUD-01" in run.stdout and "run tether init" in run.stdout
    assert not (tmp_path / ".tether").exists()


def test_measure_times_a_revocation_at_the_running_sts(sts: RunningSts) -> None:
    assert sts.config.path is not None
    data = json.loads(tether("report", "-c", str(sts.config.path), "-f", "json", "--measure").stdout)
    revocation = next(r for r in data["results"] if r["control"] == "REV-01")
    lag = next(e for e in revocation["evidence"] if e["name"] == "measured revocation lag")
    assert lag["value"].endswith("s") and float(lag["value"][:-1]) >= 0
    cancelled = [r for r in sts.audit() if r.kind == "task.cancelled"]
    created = [r for r in sts.audit() if r.kind == "task.created" and str(r.detail["agent"]).endswith("/report-probe")]
    assert len(created) == 1 and [r.task for r in cancelled] == [created[0].task]


def test_measure_without_a_running_sts_is_a_finding_not_a_crash(deployment: Path) -> None:
    data = json.loads(invoke("-c", str(deployment), "-f", "json", "--measure").stdout)
    revocation = next(r for r in data["results"] if r["control"] == "REV-01")
    assert revocation["severity"] == "low" and "could not be measured" in revocation["summary"]
