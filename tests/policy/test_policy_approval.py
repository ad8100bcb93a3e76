"""``@approval`` and ``@approval_creator`` (``policy.loader``), ``Decision.approval`` (``policy.engine``),
the ``approval:`` expectation of policy test cases and ``tether policy explain|test`` showing the hold.

A permit annotated ``@approval("group")`` that is among the *determining* policies of an
allowed request holds it for that group. The loader refuses the annotation where it means
nothing (a forbid, a bad group name, ``@approval_creator`` alone) naming the file and line;
the engine holds only on enforced determining permits: a shadow policy never holds, a forbid
wins (nothing to approve), a non-matching permit does not hold, and the creator exception
applies only when every holding policy grants it (APR-02).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from policykit import PAY, WIKI, call, exchange, starter_dir, write
from typer.testing import CliRunner, Result

from tether.cli.main import app
from tether.cli.output import console
from tether.policy.cases import CaseError, build_request, parse_cases, run_cases
from tether.policy.engine import PolicyEngine
from tether.policy.loader import PolicyLoadError, PolicyProblem, load_texts

BASE = '@id("permit-all")\npermit (principal, action == Tether::Action::"exchange", resource);\n'


def held(policy_id: str, group: str, *, when: str = "true", creator: bool = False, shadow: bool = False) -> str:
    lines = [f'@id("{policy_id}")', f'@approval("{group}")']
    if creator:
        lines.append('@approval_creator("allowed")')
    if shadow:
        lines.append("@shadow")
    lines.append(f'permit (principal, action == Tether::Action::"exchange", resource) when {{ {when} }};')
    return "\n".join(lines) + "\n"


PAYMENTS = 'resource.tags.contains("payments")'
PAY_TAGS = {PAY: ["payments"]}


def refused(files: dict[str, str]) -> list[PolicyProblem]:
    with pytest.raises(PolicyLoadError) as caught:
        load_texts(files)
    return caught.value.problems


def engine_with(tmp_path: Path, files: dict[str, str], *, mode: str = "enforce") -> PolicyEngine:
    directory = tmp_path / "policies"
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        write(directory, name, text)
    return PolicyEngine(directory, mode=mode)


# -- the loader ----------------------------------------------------------------------------------
def test_approval_annotations_loaded() -> None:
    version = load_texts({"a.cedar": BASE + "\n" + held("pay-finance", "finance", creator=True) + held("pay-user", "subject")})
    by_id = {p.id: p for p in version.policies}
    assert by_id["permit-all"].approval is None and not by_id["permit-all"].creator_may_approve
    assert by_id["pay-finance"].approval == "finance" and by_id["pay-finance"].creator_may_approve
    assert by_id["pay-user"].approval == "subject" and not by_id["pay-user"].creator_may_approve
    assert set(version.approvals) == {"pay-finance", "pay-user"}


def test_approval_on_a_forbid_refused_with_file_and_line() -> None:
    text = BASE + '\n@id("no")\n@approval("finance")\nforbid (principal, action, resource);\n'
    problems = refused({"b.cedar": text})
    assert [str(p) for p in problems] == ["b.cedar:4: @approval only applies to a permit"]


@pytest.mark.parametrize("group", ["", "fin ance", "-x", "a" * 65, "fin/ance"])
def test_approval_naming_no_group_refused(group: str) -> None:
    problems = refused({"c.cedar": "// payments\n" + held("p", group)})
    assert len(problems) == 1
    assert (problems[0].file, problems[0].line) == ("c.cedar", 2)
    assert "must name an approver group" in problems[0].message


@pytest.mark.parametrize(
    "annotations",
    ['@approval_creator("allowed")', '@approval("finance")\n@approval_creator("yes")',
     '@approval("finance")\n@approval_creator("")'],
)  # fmt: skip
def test_approval_creator_without_approval_or_other_value_refused(annotations: str) -> None:
    text = f'@id("p")\n{annotations}\npermit (principal, action, resource);\n'
    problems = refused({"d.cedar": text})
    assert [str(p) for p in problems] == ['d.cedar:1: @approval_creator("allowed") goes with @approval']


def test_a_refused_annotation_refuses_the_whole_set() -> None:
    problems = refused({"a.cedar": BASE, "z.cedar": held("p", "bad group")})
    assert [p.file for p in problems] == ["z.cedar"]


def test_starter_set_holds_nothing(tmp_path: Path) -> None:
    engine = PolicyEngine(starter_dir(tmp_path))
    assert engine.current is not None and engine.current.approvals == {}
    decision = engine.authorize(exchange(audience=PAY, tags=PAY_TAGS))
    assert decision.allowed and decision.approval == () and decision.approval_policies == ()


# -- the engine ----------------------------------------------------------------------------------
def test_determining_approval_permit_holds(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, {"a.cedar": BASE, "b.cedar": held("pay-finance", "finance", when=PAYMENTS)})
    decision = engine.authorize(exchange(audience=PAY, tags=PAY_TAGS))
    assert decision.allowed
    assert set(decision.determining) == {"permit-all", "pay-finance"}
    assert decision.approval == ("finance",) and decision.approval_policies == ("pay-finance",)
    assert decision.audit()["approval"] == ["finance"]
    assert decision.creator_may_approve is False


def test_non_matching_approval_permit_does_not_hold(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, {"a.cedar": BASE, "b.cedar": held("pay-finance", "finance", when=PAYMENTS)})
    decision = engine.authorize(exchange(audience=WIKI))
    assert decision.allowed and decision.determining == ("permit-all",)
    assert decision.approval == () and "approval" not in decision.audit()


def test_approval_permit_alone_allows_and_holds(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, {"b.cedar": held("pay-finance", "finance", when=PAYMENTS)})
    assert engine.authorize(exchange(audience=PAY, tags=PAY_TAGS)).approval == ("finance",)
    assert not engine.authorize(exchange(audience=WIKI)).allowed  # default deny: nothing to hold


def test_forbid_wins_over_an_approval_permit(tmp_path: Path) -> None:
    forbid = (
        '@id("no-pay")\nforbid (principal, action == Tether::Action::"exchange", resource)'
        ' when { resource.tags.contains("payments") };\n'
    )
    engine = engine_with(tmp_path, {"a.cedar": BASE, "b.cedar": held("pay-finance", "finance"), "c.cedar": forbid})
    decision = engine.authorize(exchange(audience=PAY, tags=PAY_TAGS))
    assert not decision.allowed and decision.determining == ("no-pay",)
    assert decision.approval == () and decision.approval_policies == () and not decision.creator_may_approve


def test_shadow_approval_policy_never_holds(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, {"a.cedar": BASE, "b.cedar": held("pay-finance", "finance", shadow=True)})
    decision = engine.authorize(exchange(audience=PAY, tags=PAY_TAGS))
    assert decision.allowed and decision.approval == ()
    assert "pay-finance" in decision.shadow_determining  # it is reported, not enforced


def test_set_in_shadow_mode_never_holds(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, {"a.cedar": BASE, "b.cedar": held("pay-finance", "finance")}, mode="shadow")
    decision = engine.authorize(exchange(audience=PAY, tags=PAY_TAGS))
    assert decision.allowed and decision.approval == ()
    assert decision.shadow_allowed and "pay-finance" in decision.shadow_determining


def test_multiple_groups_sorted_and_deduplicated(tmp_path: Path) -> None:
    files = {
        "a.cedar": BASE,
        "b.cedar": held("pay-legal", "legal") + held("pay-finance", "finance") + held("pay-finance-2", "finance"),
    }
    decision = engine_with(tmp_path, files).authorize(exchange(audience=PAY, tags=PAY_TAGS))
    assert decision.approval == ("finance", "legal")
    assert decision.approval_policies == ("pay-finance", "pay-finance-2", "pay-legal")  # sorted: stable across runs


def test_apr02_creator_flag_only_when_every_holding_policy_agrees(tmp_path: Path) -> None:
    both = engine_with(tmp_path / "both", {"a.cedar": held("p1", "finance", creator=True) + held("p2", "legal", creator=True)})
    assert both.authorize(exchange(audience=PAY)).creator_may_approve is True
    one = engine_with(tmp_path / "one", {"a.cedar": held("p1", "finance", creator=True) + held("p2", "legal")})
    decision = one.authorize(exchange(audience=PAY))
    assert decision.approval == ("finance", "legal") and decision.creator_may_approve is False
    # a holding policy that does not determine the request does not take the exception away
    partial = engine_with(tmp_path / "partial", {"a.cedar": held("p1", "finance", creator=True)
                                                 + held("p2", "legal", when=PAYMENTS)})  # fmt: skip
    decision = partial.authorize(exchange(audience=WIKI))
    assert decision.approval == ("finance",) and decision.creator_may_approve is True


def test_call_policies_hold_tool_calls(tmp_path: Path) -> None:
    """The resource asks Cedar ``call``: an ``@approval`` on a call permit names the groups it requires."""
    text = ('@id("call-all")\npermit (principal, action == Tether::Action::"call", resource);\n'
            '@id("pay-tool")\n@approval("finance")\npermit (principal, action == Tether::Action::"call", resource)'
            ' when { context.tool == "pay" };\n')  # fmt: skip
    engine = engine_with(tmp_path, {"a.cedar": text})
    assert engine.authorize(call(method="POST", path="/mcp", tool="pay")).approval == ("finance",)
    assert engine.authorize(call(method="POST", path="/mcp", tool="read")).approval == ()


def test_cached_decision_keeps_the_hold(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, {"a.cedar": BASE, "b.cedar": held("pay-finance", "finance")})
    first = engine.authorize(exchange(audience=PAY, tags=PAY_TAGS))
    again = engine.authorize(exchange(audience=PAY, tags=PAY_TAGS))
    assert engine.cache_hits >= 1 and again.approval == first.approval == ("finance",)


# -- policy test cases: ``approval:`` ----------------------------------------------------------
TOOL_HOLD = (
    '@id("call-all")\npermit (principal, action == Tether::Action::"call", resource);\n'
    '@id("big-payments")\n@approval("finance")\npermit (principal, action == Tether::Action::"call", resource)'
    ' when { context.tool == "pay" && context.arguments.hasTag("amount") && context.arguments.getTag("amount") == "5000" };\n'
)
PAY_CASE: dict[str, Any] = {"name": "pay", "action": "exchange", "principal": "spiffe://tether.local/agent/x",
                            "resource": PAY, "tags": {PAY: ["payments"]}, "expect": "allow"}  # fmt: skip


def run(engine: PolicyEngine, *cases: dict[str, Any]) -> list[tuple[bool, tuple[str, ...]]]:
    return [(r.passed, r.decision.approval) for r in run_cases(engine, parse_cases(list(cases)))]


def test_case_approval_expectation(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, {"a.cedar": BASE, "b.cedar": held("pay-finance", "finance", when=PAYMENTS)})
    assert run(engine, {**PAY_CASE, "approval": ["finance"]}) == [(True, ("finance",))]
    assert run(engine, {**PAY_CASE, "approval": "finance"}) == [(True, ("finance",))]
    assert run(engine, {**PAY_CASE}) == [(True, ("finance",))]  # not checked unless stated
    assert run(engine, {**PAY_CASE, "approval": []}) == [(False, ("finance",))]  # expected not held
    assert run(engine, {**PAY_CASE, "approval": ["legal"]}) == [(False, ("finance",))]
    assert run(engine, {**PAY_CASE, "approval": ["finance", "legal"]}) == [(False, ("finance",))]
    wiki = {**PAY_CASE, "resource": WIKI, "tags": {}}
    assert run(engine, {**wiki, "approval": []}) == [(True, ())]
    assert run(engine, {**wiki, "approval": ["finance"]}) == [(False, ())]


def test_case_approval_must_be_group_names() -> None:
    for bad in (7, [1], {"finance": True}):
        with pytest.raises(CaseError, match="approval"):
            parse_cases([{**PAY_CASE, "approval": bad}])


def test_call_case_with_tool_arguments(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, {"a.cedar": TOOL_HOLD})
    base = {"name": "c", "action": "call", "principal": "spiffe://tether.local/agent/x", "resource": PAY,
            "method": "POST", "path": "/mcp", "tool": "pay", "expect": "allow"}  # fmt: skip
    assert run(engine, {**base, "arguments": {"amount": 5000}, "approval": ["finance"]}) == [(True, ("finance",))]
    assert run(engine, {**base, "arguments": {"amount": "5000"}, "approval": ["finance"]}) == [(True, ("finance",))]
    assert run(engine, {**base, "arguments": {"amount": 10}, "approval": []}) == [(True, ())]
    with pytest.raises(CaseError, match="needs `tool`"):
        build_request({**{k: v for k, v in base.items() if k != "tool"}, "arguments": {"amount": 1}})
    for bad in ([1], "amount=5", {"x": float("nan")}):
        with pytest.raises(CaseError, match="arguments"):
            build_request({**base, "arguments": bad})


# -- the CLI -------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def wide_console() -> Iterator[None]:
    """The CLI's console is made at import, before ``COLUMNS`` could be set: widen it for the tables."""
    before = console.width
    console.width = 250
    yield
    console.width = before


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, ["policy", *args], env={"COLUMNS": "200", "NO_COLOR": "1"})


def held_dir(tmp_path: Path) -> Path:
    directory = starter_dir(tmp_path)
    write(directory, "20-approvals.cedar", held("payments-need-finance", "finance", when=PAYMENTS)
          + held("payments-need-legal", "legal", when=PAYMENTS, creator=True))  # fmt: skip
    return directory


EXPLAIN_PAY = ["explain", "--action", "exchange", "--principal", "spiffe://tether.local/agent/x", "--resource", PAY,
               "--tag", "payments"]  # fmt: skip


def test_explain_shows_the_hold(tmp_path: Path) -> None:
    directory = held_dir(tmp_path)
    result = cli(*EXPLAIN_PAY, "--dir", str(directory))
    assert result.exit_code == 0, result.output
    assert "decision: allow" in result.output
    assert ("held for approval by: finance, legal (payments-need-finance (20-approvals.cedar:1), "
            "payments-need-legal (20-approvals.cedar:4))") in result.output  # fmt: skip
    body = json.loads(cli(*EXPLAIN_PAY, "--dir", str(directory), "--json").output)
    assert body["approval"] == ["finance", "legal"]
    assert body["approval_policies"] == ["payments-need-finance (20-approvals.cedar:1)",
                                         "payments-need-legal (20-approvals.cedar:4)"]  # fmt: skip
    assert body["approval_creator"] is False
    # positive control: the wiki is not held, and the output says nothing of approval
    wiki = [*EXPLAIN_PAY[:-4], "--resource", WIKI, "--dir", str(directory)]
    assert "held for approval" not in cli(*wiki).output
    assert "approval" not in json.loads(cli(*wiki, "--json").output)


def test_explain_creator_exception(tmp_path: Path) -> None:
    directory = starter_dir(tmp_path)
    write(directory, "20-approvals.cedar", held("pay-own", "subject", when=PAYMENTS, creator=True))
    result = cli(*EXPLAIN_PAY, "--dir", str(directory))
    assert "held for approval by: subject (pay-own (20-approvals.cedar:1)); the task's creator may approve" in result.output
    assert json.loads(cli(*EXPLAIN_PAY, "--dir", str(directory), "--json").output)["approval_creator"] is True


def test_explain_tool_call_arguments(tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    write(directory, "a.cedar", TOOL_HOLD)
    base = ["explain", "--action", "call", "--principal", "spiffe://tether.local/agent/x", "--resource", PAY,
            "--method", "POST", "--path", "/mcp", "--dir", str(directory), "--json"]  # fmt: skip
    big = json.loads(cli(*base, "--tool", "pay", "--argument", "amount=5000", "--argument", "to=acme").output)
    assert big["decision"] == "allow" and big["approval"] == ["finance"]
    small = json.loads(cli(*base, "--tool", "pay", "--argument", "amount=10").output)
    assert small["decision"] == "allow" and "approval" not in small
    for bad in (
        ["--argument", "amount=1"],
        ["--tool", "pay", "--argument", "amount"],
        ["--tool", "pay", "--argument", "=1"],
        ["--tool", "pay", "--argument", "a=1", "--argument", "a=2"],
    ):
        refused_cli = cli(*base, *bad)
        assert refused_cli.exit_code == 2, (bad, refused_cli.output)
        assert "Traceback" not in refused_cli.output
    other = ["explain", "--action", "exchange", "--principal", "spiffe://x", "--tool", "pay", "--dir", str(directory)]
    assert cli(*other).exit_code == 2


def test_policy_test_checks_the_expected_hold(tmp_path: Path) -> None:
    directory = held_dir(tmp_path)
    cases = tmp_path / "cases.yaml"
    shutil.copy(directory / "cases.yaml", cases)
    document = yaml.safe_load(cases.read_text(encoding="utf-8"))
    document["cases"].append({**PAY_CASE, "name": "payments held", "approval": ["finance", "legal"]})
    cases.write_text(yaml.safe_dump(document), encoding="utf-8")
    passing = cli("test", str(cases), "--dir", str(directory))
    assert passing.exit_code == 0, passing.output
    assert "allow, held for finance, legal" in passing.output
    body = json.loads(cli("test", str(cases), "--dir", str(directory), "--json").output)
    row = next(c for c in body["cases"] if c["name"] == "payments held")
    assert row["expect_approval"] == ["finance", "legal"] and row["approval"] == ["finance", "legal"] and row["passed"]
    document["cases"][-1]["approval"] = ["finance"]
    cases.write_text(yaml.safe_dump(document), encoding="utf-8")
    failing = cli("test", str(cases), "--dir", str(directory))
    assert failing.exit_code == 1
    assert "(expected held for finance)" in failing.output


def test_starter_example_is_commented_out_and_holds_once_enabled(tmp_path: Path) -> None:
    directory = starter_dir(tmp_path)
    text = (directory / "10-examples.cedar").read_text(encoding="utf-8")
    assert '// @approval("finance")' in text
    assert PolicyEngine(directory).authorize(exchange(audience=PAY, tags=PAY_TAGS)).approval == ()
    enabled = "\n".join(line[3:] if line.startswith("// @") or line.startswith("// permit") or line.startswith("// when")
                        else line for line in text.splitlines())  # fmt: skip
    write(directory, "10-examples.cedar", enabled)
    engine = PolicyEngine(directory)
    assert engine.authorize(exchange(audience=PAY, tags=PAY_TAGS)).approval == ("finance",)
    assert engine.authorize(exchange(audience=WIKI)).approval == ()
