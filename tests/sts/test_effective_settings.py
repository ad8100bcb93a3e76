"""Environment overrides are visible, and the report reads the running STS (issue 21 finding 3).

``TETHER_POLICY_MODE=shadow`` or ``TETHER_DPOP_NONCE=false`` in the STS's environment used to
change a running STS silently, while ``tether report`` read the operator's own shell and
reported "pass". Now each security-relevant override is a warning and an audited
``config.override`` record at start, an admin reads the effective settings (with their
sources and the policy version in force) at ``GET /settings``, and the report asks the STS.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from helpers import Client, RunningSts, admin_token, create_task, running_sts
from tether.cli.main import app


@pytest.fixture
def overridden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Iterator[RunningSts]:
    monkeypatch.setenv("TETHER_POLICY_MODE", "shadow")
    monkeypatch.setenv("TETHER_DPOP_NONCE", "false")
    monkeypatch.setenv("TETHER_AUDIT_REFUSAL_BUCKETS", "5")  # changes what is recorded: security-relevant
    monkeypatch.setenv("TETHER_LOGGING_LEVEL", "info")  # operational: logged at info, not audited
    caplog.set_level(logging.INFO, logger="tether.sts")
    with running_sts(tmp_path) as sts:
        # the operator's shell, where the report runs, does not have the server's variables
        for name in ("TETHER_POLICY_MODE", "TETHER_DPOP_NONCE", "TETHER_AUDIT_REFUSAL_BUCKETS", "TETHER_LOGGING_LEVEL"):
            monkeypatch.delenv(name)
        yield sts


def settings(sts: RunningSts) -> dict[str, Any]:
    client, token = admin_token(sts)
    response = client.api("GET", "/settings", token)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def report(sts: RunningSts) -> dict[str, Any]:
    run = CliRunner().invoke(app, ["report", "-c", str(sts.config.path), "-f", "json"])
    data: dict[str, Any] = json.loads(run.stdout)
    return data


def result(data: dict[str, Any], control: str) -> dict[str, Any]:
    return next(r for r in data["results"] if r["id"] == control)


def test_security_relevant_overrides_are_warned_and_audited_at_start(
    overridden: RunningSts, caplog: pytest.LogCaptureFixture
) -> None:
    (record,) = [r for r in overridden.audit() if r.kind == "config.override"]
    assert record.detail["overrides"] == {
        "audit.refusal_buckets": {"env": "TETHER_AUDIT_REFUSAL_BUCKETS", "value": 5},
        "dpop.nonce": {"env": "TETHER_DPOP_NONCE", "value": False},
        "policy.mode": {"env": "TETHER_POLICY_MODE", "value": "shadow"},
    }
    started = caplog.get_records("setup")  # the STS started in the fixture
    warned = [r.getMessage() for r in started if r.levelno == logging.WARNING and "override" in r.getMessage()]
    assert any("TETHER_POLICY_MODE sets policy.mode" in m for m in warned), warned
    informed = [r.getMessage() for r in started if r.levelno == logging.INFO and "override" in r.getMessage()]
    assert any("TETHER_LOGGING_LEVEL sets logging.level" in m for m in informed), informed


def test_an_admin_reads_the_effective_settings_and_the_policy_in_force(overridden: RunningSts) -> None:
    body = settings(overridden)
    assert body["settings"]["policy.mode"] == {"value": "shadow", "source": "env TETHER_POLICY_MODE"}
    assert body["settings"]["dpop.max_age"]["source"] in ("file", "default")
    assert body["settings"]["postgres.dsn"]["value"] in ("", "(hidden)")  # never a credential
    assert set(body["overrides"]) >= {"policy.mode", "dpop.nonce"}
    assert body["policy"]["version"] and body["policy"]["mode"] == "shadow"
    assert body["policy"]["resolved_dir"] == str(overridden.config.policy_dir.resolve())


def test_settings_need_an_admin(overridden: RunningSts) -> None:
    task = create_task(overridden)
    agent = Client(overridden)
    session = agent.session(task["id"]).json()["access_token"]
    refused = agent.api("GET", "/settings", session)
    assert refused.status_code == 403 and refused.json()["error"] == "insufficient_scope"
    anonymous = agent.http.get(overridden.url + "/settings")
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "invalid_token"


def test_report_reads_the_running_sts_not_the_operators_shell(overridden: RunningSts) -> None:
    data = report(overridden)
    assert data["deployment"]["settings_from"] == f"the running STS at {overridden.url}"
    mode = result(data, "POL-03")
    assert mode["status"] == "fail", mode  # the file says enforce; the server runs shadow
    assert any(e["value"] == "shadow" and "TETHER_POLICY_MODE" in e["source"] for e in mode["evidence"]), mode


def test_positive_control_no_override_no_record_and_the_report_passes(sts: RunningSts) -> None:
    assert not [r for r in sts.audit() if r.kind == "config.override"]
    data = report(sts)
    assert data["deployment"]["settings_from"] == f"the running STS at {sts.url}"
    assert result(data, "POL-03")["status"] == "pass"


def test_report_says_when_it_could_not_ask_the_sts(tmp_path: Path) -> None:
    with running_sts(tmp_path) as sts:
        path = sts.config.path
    run = CliRunner().invoke(app, ["report", "-c", str(path), "-f", "json"])
    data = json.loads(run.stdout)
    assert data["deployment"]["settings_from"].startswith("the configuration file; the running STS at")
