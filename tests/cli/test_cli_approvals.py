"""``tether approvals list|show|approve|deny`` (the real executable) against a real STS over loopback.

The approver's ID token comes from a real OIDC provider on loopback, through ``--id-token-file``
or ``TETHER_APPROVER_TOKEN``; it is never echoed. Exit codes: 0 done, 1 refused, 2 usage.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import one_line, tether

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sts" / "approvals"))

from approvals_api_kit import ALICE, CAROL, EVE, ApprovalsEnv, approvals_env

from tether.cli.approvals import parse_window


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApprovalsEnv]:
    with approvals_env(tmp_path_factory.mktemp("approvals-cli")) as environment:
        yield environment


def token_file(env: ApprovalsEnv, tmp_path: Path, principal: str, **claims: Any) -> Path:
    path = tmp_path / f"{principal.removeprefix('user:')}.jwt"
    path.write_text(env.id_token(principal, **claims) + "\n", encoding="ascii")
    return path


def cli(env: ApprovalsEnv, *args: str, token: Path | None = None, environ: dict[str, str] | None = None) -> Any:
    extra = ["--url", env.sts.url] + (["--id-token-file", str(token)] if token else [])
    return tether("approvals", *args, *extra, env=environ)


def test_cli_list_show_approve(env: ApprovalsEnv, tmp_path: Path) -> None:
    task = env.task(purpose="month-end run")
    approval = env.hold(task)
    alice = token_file(env, tmp_path, ALICE)

    listed = cli(env, "list", "--json", token=alice)
    assert listed.returncode == 0, listed.stderr
    assert approval.id in [a["id"] for a in json.loads(listed.stdout)["approvals"]]

    shown = cli(env, "show", approval.id, token=alice)
    assert shown.returncode == 0, shown.stderr
    for words in ("month-end run", "transfer", "http://127.0.0.1:9001", "pay:write", "[redacted]", "ACME", "finance"):
        assert words in shown.stdout
    assert "hunter2" not in shown.stdout

    approved = cli(env, "approve", approval.id, "--uses", "2", "--window", "10m", "--reason", "ok", "--json", token=alice)
    assert approved.returncode == 0, approved.stderr
    body = json.loads(approved.stdout)
    assert (body["status"], body["decided_by"], body["uses"], body["reason"]) == ("approved", ALICE, 2, "ok")
    assert body["until"] - body["decided_at"] == 600
    assert env.status(approval.id) == "approved"
    token_text = alice.read_text().strip()
    assert token_text not in approved.stdout + approved.stderr + shown.stdout + listed.stdout


def test_cli_deny_with_the_token_from_the_environment(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task())
    environ = {"TETHER_APPROVER_TOKEN": env.id_token(CAROL)}
    denied = cli(env, "deny", approval.id, "--reason", "wrong vendor", environ=environ)
    assert denied.returncode == 0, denied.stderr
    assert "denied" in denied.stdout and "wrong vendor" in denied.stdout
    assert env.status(approval.id) == "denied"


def test_cli_refusal_exits_1_with_the_description(env: ApprovalsEnv, tmp_path: Path) -> None:
    approval = env.hold(env.task(), client=CAROL)  # Carol asked for it: she cannot approve it
    result = cli(env, "approve", approval.id, token=token_file(env, tmp_path, CAROL))
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert "access_denied" in line and "party" in line
    eve = cli(env, "approve", approval.id, token=token_file(env, tmp_path, EVE))
    assert eve.returncode == 1 and "not_found" in one_line(eve.stderr)
    assert env.status(approval.id) == "pending"


def test_cli_bad_token_exits_1(env: ApprovalsEnv, tmp_path: Path) -> None:
    result = cli(env, "list", token=token_file(env, tmp_path, ALICE, aud="other-app"))
    assert result.returncode == 1
    assert "invalid_token" in one_line(result.stderr)


def test_cli_usage_errors_exit_2(env: ApprovalsEnv, tmp_path: Path) -> None:
    approval = env.hold(env.task())
    alice = token_file(env, tmp_path, ALICE)
    no_token = cli(env, "list")
    assert no_token.returncode == 2 and "TETHER_APPROVER_TOKEN" in one_line(no_token.stderr)
    assert cli(env, "approve", approval.id, "--window", "soon", token=alice).returncode == 2
    assert cli(env, "approve", "apr_bad", token=alice).returncode == 2
    assert cli(env, "approve", approval.id, "--uses", "0", token=alice).returncode == 2
    assert cli(env, "list", token=tmp_path / "missing.jwt").returncode == 2
    assert env.status(approval.id) == "pending"


def test_cli_defaults_to_the_configs_issuer(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task())
    environ = {"TETHER_APPROVER_TOKEN": env.id_token(ALICE)}
    result = tether("approvals", "show", approval.id, "--json", "--config", str(env.sts.config.path), env=environ)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["id"] == approval.id


@pytest.mark.parametrize(("text", "seconds"), [("600", 600), ("90s", 90), ("10m", 600), ("2h", 7200), ("1d", 86400)])
def test_parse_window(text: str, seconds: int) -> None:
    assert parse_window(text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "-5m", "1.5h", "m"])
def test_parse_window_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_window(text)
