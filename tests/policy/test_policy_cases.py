"""Policy test cases (``tether.policy.cases``): parsing, request building, running.

A malformed case must be a ``CaseError`` naming the case, never a stray Python error:
``tether policy test`` turns ``CaseError`` into exit 2 ("the file is wrong"), distinct
from exit 1 ("a decision changed").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from policykit import ADMIN, AGENT, starter_dir

from tether.policy.cases import CaseError, build_request, parse_cases, run_cases
from tether.policy.engine import PolicyEngine

GOOD: dict[str, Any] = {"name": "ok", "action": "exchange", "principal": AGENT, "expect": "allow"}


def test_starter_cases_pass_against_the_starter_set(tmp_path: Path) -> None:
    directory = starter_dir(tmp_path)
    cases = parse_cases(yaml.safe_load((directory / "cases.yaml").read_text(encoding="utf-8")))
    results = run_cases(PolicyEngine(directory), cases)
    assert len(results) == 6
    assert [r.case.name for r in results if not r.passed] == []
    night = next(r for r in results if r.case.name == "payments at night is a shadow deny")
    assert night.decision.allowed and night.decision.shadow_allowed is False
    assert night.decision.shadow_determining == ("payments-office-hours",)


def test_a_case_fails_when_the_decision_differs(tmp_path: Path) -> None:
    engine = PolicyEngine(starter_dir(tmp_path))
    [passing] = run_cases(engine, parse_cases([GOOD]))
    assert passing.passed
    [wrong] = run_cases(engine, parse_cases([{**GOOD, "expect": "deny"}]))
    assert not wrong.passed
    [shadow] = run_cases(engine, parse_cases([{**GOOD, "shadow": "deny"}]))
    assert not shadow.passed  # the enforced decision matches, the shadow one does not


def test_depth_builds_an_actor_chain_and_admins_join_the_group() -> None:
    request = build_request({"action": "exchange", "principal": AGENT, "depth": 3})
    assert request.context["depth"] == 3 and request.context["kind"] == "delegation"
    admin = build_request({"action": "create_task", "principal": ADMIN}, admins=[ADMIN])
    who = next(e for e in admin.entities if e["uid"] == admin.principal)
    assert who["parents"] == [{"type": "Tether::Group", "id": "admins"}]


def test_a_case_states_the_binding_of_an_exchange() -> None:
    assert build_request({"action": "exchange", "principal": AGENT}).context["binding"] == "dpop"
    assert build_request({"action": "exchange", "principal": AGENT, "binding": "mtls"}).context["binding"] == "mtls"


MALFORMED: dict[str, Any] = {
    "not a list": {"cases": "nope"},
    "empty": {"cases": []},
    "case not a mapping": ["just a string"],
    "unknown field": [{**GOOD, "colour": "red"}],
    "unknown action": [{**GOOD, "action": "fly"}],
    "missing principal": [{k: v for k, v in GOOD.items() if k != "principal"}],
    "bad expect": [{**GOOD, "expect": "maybe"}],
    "missing expect": [{k: v for k, v in GOOD.items() if k != "expect"}],
    "bad shadow": [{**GOOD, "shadow": "yes"}],
    "scopes not strings": [{**GOOD, "scopes": [1, 2]}],
    "tags not a mapping": [{**GOOD, "tags": ["wiki"]}],
    "task not a mapping": [{**GOOD, "task": "tsk_1"}],
    "depth not a number": [{**GOOD, "depth": "deep"}],
    "risk a list": [{**GOOD, "risk": [1]}],
    "time null": [{**GOOD, "time": None}],
    "task age a list": [{**GOOD, "task": {"age": [60]}}],
    "unknown binding": [{**GOOD, "binding": "bearer"}],
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_case_is_a_case_error(name: str) -> None:
    with pytest.raises(CaseError):
        parse_cases(MALFORMED[name])
    assert parse_cases([GOOD])  # positive control
