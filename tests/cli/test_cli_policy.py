"""``tether policy validate | test | explain`` — the real executable of this venv.

Exit codes are the CI contract: 0 all good, 1 a policy problem or a case whose decision
changed, 2 a cases file that cannot be understood.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest
from cli_support import tether

from tether.provision import initialize, install_starter_policies

# runs the same whatever TETHER_TEST_STORE says: the PostgreSQL pass of scripts/test leaves it out
pytestmark = pytest.mark.store_independent

EXPLAIN_DEPTH_3 = [
    "policy", "explain", "--action", "exchange", "--principal", "spiffe://tether.local/svc/b",
    "--resource", "https://pay.example", "--tag", "payments", "--depth", "3",
]  # fmt: skip


def starter(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    install_starter_policies(directory)
    return directory


def output(result: subprocess.CompletedProcess[str]) -> str:
    return str(result.stdout) + str(result.stderr)


# -- validate ----------------------------------------------------------------------------------
def test_validate_lists_every_policy_with_file_line(tmp_path: Path) -> None:
    result = tether("policy", "validate", str(starter(tmp_path)))
    assert result.returncode == 0, output(result)
    for where in ("exchange-key-bound", "00-defaults.cedar:15", "payments-max-depth-2", "10-examples.cedar:22"):
        assert where in result.stdout
    assert "valid: 10 policies" in result.stdout
    assert "shadow" in result.stdout


def test_validate_refuses_an_invalid_file_with_line_and_reason(tmp_path: Path) -> None:
    directory = starter(tmp_path)
    (directory / "20-bad.cedar").write_text(
        '// comment\n\n@id("broken")\nforbid (principal, action, resource)\nwhen { context.risk >= };\n', encoding="utf-8"
    )
    result = tether("policy", "validate", str(directory))
    assert result.returncode == 1, output(result)
    assert "20-bad.cedar:3: syntax error" in output(result)
    assert "unexpected token" in output(result)
    assert "Traceback" not in output(result)
    # positive control
    (directory / "20-bad.cedar").unlink()
    assert tether("policy", "validate", str(directory)).returncode == 0


def test_validate_reports_schema_problems(tmp_path: Path) -> None:
    directory = starter(tmp_path)
    (directory / "30-typed.cedar").write_text(
        'forbid (principal, action == Tether::Action::"exchange", resource) when { context.depth == "3" };\n',
        encoding="utf-8",
    )
    result = tether("policy", "validate", str(directory))
    assert result.returncode == 1
    assert "30-typed.cedar:1: does not match the schema" in output(result)
    assert "the types Long and String are not compatible" in output(result)
    (directory / "30-typed.cedar").write_text(
        'forbid (principal, action == Tether::Action::"exchange", resource) when { context.depth == 3 };\n',
        encoding="utf-8",
    )
    assert tether("policy", "validate", str(directory)).returncode == 0


def test_validate_uses_the_configured_directory(tmp_path: Path) -> None:
    config = initialize(tmp_path / "deploy", issuer="http://127.0.0.1:8443").config_path
    result = tether("policy", "validate", "--config", str(config))
    assert result.returncode == 0, output(result)
    assert "valid: 10 policies" in result.stdout
    assert tether("policy", "validate", str(tmp_path / "missing")).returncode == 1


# -- test --------------------------------------------------------------------------------------
def test_policy_test_catches_a_case_that_a_policy_change_breaks(tmp_path: Path) -> None:
    directory = tmp_path / "copy"
    shutil.copytree(starter(tmp_path), directory)
    cases = directory / "cases.yaml"
    passing = tether("policy", "test", str(cases), "--dir", str(directory))
    assert passing.returncode == 0, output(passing)
    assert "all 6 cases passed" in passing.stdout

    # a well-meant edit: payments may delegate one level deeper
    examples = directory / "10-examples.cedar"
    text = examples.read_text(encoding="utf-8")
    assert 'resource.tags.contains("payments") && context.depth > 2' in text
    examples.write_text(text.replace("context.depth > 2", "context.depth > 3"), encoding="utf-8")
    assert tether("policy", "validate", str(directory)).returncode == 0  # still valid Cedar
    failing = tether("policy", "test", str(cases), "--dir", str(directory))
    assert failing.returncode == 1, output(failing)
    assert "FAIL" in failing.stdout and "payments delegation depth 3 denied" in failing.stdout
    assert "1 of 6 cases failed" in failing.stderr

    report = tether("policy", "test", str(cases), "--dir", str(directory), "--json")
    assert report.returncode == 1
    body = json.loads(report.stdout)
    assert (body["passed"], body["failed"]) == (5, 1)
    [broken] = [c for c in body["cases"] if not c["passed"]]
    assert broken["name"] == "payments delegation depth 3 denied"
    assert (broken["expect"], broken["decision"]) == ("deny", "allow")

    # positive control: revert and it passes again
    examples.write_text(text, encoding="utf-8")
    assert tether("policy", "test", str(cases), "--dir", str(directory)).returncode == 0


def test_policy_test_checks_the_shadow_decision(tmp_path: Path) -> None:
    directory = tmp_path / "copy"
    shutil.copytree(starter(tmp_path), directory)
    examples = directory / "10-examples.cedar"
    text = examples.read_text(encoding="utf-8")
    examples.write_text(text.replace('@id("payments-office-hours")\n@shadow\n', '@id("payments-office-hours")\n'), "utf-8")
    result = tether("policy", "test", str(directory / "cases.yaml"), "--dir", str(directory))
    assert result.returncode == 1
    assert "payments at night is a shadow deny" in result.stdout
    examples.write_text(text, encoding="utf-8")
    assert tether("policy", "test", str(directory / "cases.yaml"), "--dir", str(directory)).returncode == 0


MALFORMED = {
    "invalid yaml": "cases: [unclosed\n",
    "empty list": "cases: []\n",
    "not a mapping": "cases:\n  - just a string\n",
    "unknown field": "cases:\n  - {action: exchange, principal: spiffe://a, expect: allow, colour: red}\n",
    "unknown action": "cases:\n  - {action: fly, principal: spiffe://a, expect: allow}\n",
    "bad expect": "cases:\n  - {action: exchange, principal: spiffe://a, expect: maybe}\n",
    "risk is a list": "cases:\n  - {action: exchange, principal: spiffe://a, risk: [1], expect: allow}\n",
    "time is null": "cases:\n  - {action: exchange, principal: spiffe://a, time: null, expect: allow}\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_cases_file_exits_2(tmp_path: Path, name: str) -> None:
    directory = starter(tmp_path)
    cases = tmp_path / "cases.yaml"
    cases.write_text(MALFORMED[name], encoding="utf-8")
    result = tether("policy", "test", str(cases), "--dir", str(directory))
    assert result.returncode == 2, output(result)
    assert "Traceback" not in output(result)
    assert str(cases) in result.stderr
    # positive control: a well-formed file against the same directory
    cases.write_text("cases:\n  - {action: exchange, principal: spiffe://a, expect: allow}\n", encoding="utf-8")
    assert tether("policy", "test", str(cases), "--dir", str(directory)).returncode == 0


def test_missing_cases_file_exits_2(tmp_path: Path) -> None:
    result = tether("policy", "test", str(tmp_path / "nope.yaml"), "--dir", str(starter(tmp_path)))
    assert result.returncode == 2
    assert "nope.yaml" in result.stderr
    shutil.copy(tmp_path / "policies" / "cases.yaml", tmp_path / "nope.yaml")
    assert tether("policy", "test", str(tmp_path / "nope.yaml"), "--dir", str(tmp_path / "policies")).returncode == 0


# -- explain -----------------------------------------------------------------------------------
def test_explain_shows_decision_determining_policies_and_shadow(tmp_path: Path) -> None:
    directory = starter(tmp_path)
    result = tether(*EXPLAIN_DEPTH_3, "--dir", str(directory))
    assert result.returncode == 0, output(result)
    assert "decision: deny" in result.stdout
    assert "payments-max-depth-2 (10-examples.cedar:22)" in result.stdout
    assert "shadow decision: deny" in result.stdout
    allowed = tether(*EXPLAIN_DEPTH_3[:-1], "2", "--dir", str(directory))
    assert "decision: allow" in allowed.stdout
    assert "exchange-key-bound (00-defaults.cedar:15)" in allowed.stdout


def test_explain_json_and_a_shadow_policy_that_would_deny(tmp_path: Path) -> None:
    directory = starter(tmp_path)
    (directory / "40-shadow.cedar").write_text(
        '// trial run\n@id("trial-no-pay")\n@shadow\nforbid (principal, action == Tether::Action::"exchange", resource)\n'
        'when { resource.tags.contains("payments") };\n',
        encoding="utf-8",
    )
    result = tether(*EXPLAIN_DEPTH_3[:-1], "1", "--dir", str(directory), "--json")
    assert result.returncode == 0, output(result)
    body = json.loads(result.stdout)
    assert body["decision"] == "allow" and body["mode"] == "enforce"
    assert body["determining"] == ["exchange-key-bound (00-defaults.cedar:15)"]
    assert body["shadow"] == {"decision": "deny", "determining": ["trial-no-pay (40-shadow.cedar:2)"]}
    assert len(body["version"]) == 16
    human = tether(*EXPLAIN_DEPTH_3[:-1], "1", "--dir", str(directory))
    assert "shadow decision: deny — trial-no-pay (40-shadow.cedar:2)" in human.stdout


def test_explain_reports_evaluation_errors_and_denies(tmp_path: Path) -> None:
    directory = starter(tmp_path)
    (directory / "40-overflow.cedar").write_text(
        '@id("overflow")\nforbid (principal, action == Tether::Action::"exchange", resource)\n'
        "when { context.risk * 9223372036854775807 > 100 };\n",
        encoding="utf-8",
    )
    agent = "spiffe://tether.local/agent/x"
    base = ["policy", "explain", "--action", "exchange", "--principal", agent, "--dir", str(directory)]
    result = tether(*base, "--risk", "2", "--json")
    body = json.loads(result.stdout)
    assert body["decision"] == "deny" and body["errors"], body
    human = tether(*base, "--risk", "2")
    assert "decision: deny" in human.stdout and "error:" in human.stdout
    # positive control: no overflow at risk 0
    assert json.loads(tether(*base, "--json").stdout)["decision"] == "allow"


def test_explain_admin_and_call(tmp_path: Path) -> None:
    directory = starter(tmp_path)
    admin = "spiffe://tether.local/admin"
    config = initialize(tmp_path / "deploy", issuer="http://127.0.0.1:8443").config_path
    ok = tether("policy", "explain", "--action", "admin", "--principal", admin, "--config", str(config), "--json")
    assert json.loads(ok.stdout)["determining"][0].startswith("admins-administer ("), ok.stdout
    no = tether("policy", "explain", "--action", "admin", "--principal", "spiffe://x", "--dir", str(directory), "--json")
    assert json.loads(no.stdout) | {"version": ""} == {
        "decision": "deny", "determining": [], "mode": "enforce", "version": "",
        "shadow": {"decision": "deny", "determining": []},
    }  # fmt: skip
    wiki = [
        "policy", "explain", "--action", "call", "--principal", "spiffe://tether.local/agent/research",
        "--resource", "https://wiki.example", "--path", "/pages/x", "--dir", str(directory), "--json",
    ]  # fmt: skip
    assert json.loads(tether(*wiki, "--method", "POST").stdout)["decision"] == "deny"
    assert json.loads(tether(*wiki, "--method", "GET").stdout)["decision"] == "allow"
    bad = tether("policy", "explain", "--action", "fly", "--principal", admin, "--dir", str(directory))
    assert bad.returncode == 2
    assert tether("policy", "explain", "--action", "admin", "--principal", admin, "--dir", str(directory)).returncode == 0


def test_starter_cases_ship_with_the_package() -> None:
    names = {entry.name for entry in resources.files("tether.policy").joinpath("starter").iterdir()}
    assert {"00-defaults.cedar", "10-examples.cedar", "cases.yaml"} <= names
