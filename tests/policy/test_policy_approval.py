"""``@approval`` and ``@approval_creator`` (``policy.loader``) and ``Decision.approval`` (``policy.engine``).

A permit annotated ``@approval("group")`` that is among the *determining* policies of an
allowed request holds it for that group. The loader refuses the annotation where it means
nothing (a forbid, a bad group name, ``@approval_creator`` alone) naming the file and line;
the engine holds only on enforced determining permits: a shadow policy never holds, a forbid
wins (nothing to approve), a non-matching permit does not hold, and the creator exception
applies only when every holding policy grants it (APR-02).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from policykit import PAY, WIKI, call, exchange, starter_dir, write

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
    assert sorted(decision.approval_policies) == ["pay-finance", "pay-finance-2", "pay-legal"]


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
