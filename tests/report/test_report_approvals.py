"""``tether report`` approval coverage: APPR-01 (held requests can be approved), APPR-02 (high-risk
audiences are held, decided by the policy engine), APPR-03 (approvals answered, from the audit log).

The controls are pure over hand-built snapshots (``snapshots.healthy`` passes every control);
the evidence is also gathered from a real ``tether init`` deployment with real policy files and
real audit records in its store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

from snapshots import DAY, NOW, audit, healthy, only, policy, store

from helpers import make_deployment
from tether.audit.chain import AuditEvent
from tether.config import Config
from tether.identity.dev_approvers import DevApprovers
from tether.report.approvals import approval_facts, probe_principal
from tether.report.controls import run_controls
from tether.report.evidence import gather
from tether.report.frameworks import mapping_for
from tether.report.model import ApprovalFacts, ApproverGroupFacts, AudienceHold, Evidence, PolicyFacts, Result
from tether.store.open import open_store

FINANCE = PolicyFacts("payments-need-finance", "20-approvals.cedar", 1, "permit", False, "finance")
PAY = "https://pay.example"


def approvals(**changes: Any) -> ApprovalFacts:
    base = ApprovalFacts(issuer="https://idp.example.org", groups=(ApproverGroupFacts("finance", 2),), webhook=True,
                         audiences=(AudienceHold(PAY, ("payments",), "held", ("finance",), ("payments-need-finance",)),),
                         probe="spiffe://prod.example.org/agent/tether-report-probe")  # fmt: skip
    return dataclasses.replace(base, **changes)


def with_hold(facts: ApprovalFacts | None = None, *policies: PolicyFacts, **changes: Any) -> Evidence:
    held_policies = policies or (FINANCE,)
    state = policy(policies=(*policy().policies, *held_policies))
    return healthy(policy=state, approvals=facts or approvals(), **changes)


def result(evidence: Evidence, control: str) -> Result:
    return only(run_controls(evidence), control)


def finding(found: Result, status: str, severity: str, *words: str) -> None:
    assert (found.status, found.severity) == (status, severity), found
    for word in words:
        assert word in found.summary, found.summary
    assert found.remediation != "none needed"


# -- the controls (pure) --------------------------------------------------------------------------
def test_healthy_deployment_without_approvals_passes() -> None:
    report = run_controls(healthy())
    for control in ("APPR-01", "APPR-02", "APPR-03"):
        assert only(report, control).status == "pass", only(report, control)
    assert "no enforced policy holds" in only(report, "APPR-01").summary
    assert "no resource is tagged payments" in only(report, "APPR-02").summary


def test_wired_approvals_pass() -> None:
    report = run_controls(with_hold())
    assert [only(report, c).status for c in ("APPR-01", "APPR-02", "APPR-03")] == ["pass"] * 3
    first = only(report, "APPR-01")
    assert "requests for finance" in first.summary
    assert any(i.name == "payments-need-finance" and "20-approvals.cedar:1" in i.value for i in first.evidence)
    second = only(report, "APPR-02")
    assert any(i.name == PAY and "held for finance" in i.value for i in second.evidence)


def test_apr_issuer_not_set_fails() -> None:
    finding(result(with_hold(approvals(issuer="")), "APPR-01"), "fail", "high", "issuer is not set", "expires")


def test_apr_group_not_configured_fails() -> None:
    found = result(with_hold(approvals(groups=())), "APPR-01")
    finding(found, "fail", "high", "`finance`", "not configured", "payments-need-finance")
    assert 'name = "finance"' in found.remediation


def test_apr_subject_group_needs_no_configuration() -> None:
    subject = PolicyFacts("own-payments", "20-approvals.cedar", 5, "permit", False, "subject")
    assert result(with_hold(approvals(groups=()), subject), "APPR-01").status == "pass"


def test_apr_shadow_approval_policy_holds_nothing() -> None:
    shadow = dataclasses.replace(FINANCE, shadow=True)
    found = result(with_hold(approvals(issuer="", groups=()), shadow), "APPR-01")
    assert found.status == "pass" and "no enforced policy holds" in found.summary


def test_apr_claim_only_group_with_a_webhook_is_a_low_finding() -> None:
    facts = approvals(groups=(ApproverGroupFacts("finance", 0, ("idp-finance",)),))
    found = result(with_hold(facts), "APPR-01")
    finding(found, "warn", "low", "group claim", "links to nobody")
    assert any("by claim: idp-finance" in i.value for i in found.evidence)
    assert result(with_hold(dataclasses.replace(facts, webhook=False)), "APPR-01").status == "pass"


def test_apr_high_risk_audience_not_held_is_a_finding() -> None:
    facts = approvals(audiences=(
        AudienceHold(PAY, ("payments",), "held", ("finance",), ("payments-need-finance",)),
        AudienceHold("https://bank.example", ("payments",), "allowed", policies=("exchange-key-bound",)),
        AudienceHold("https://wire.example", ("payments", "wire"), "denied", policies=("no-wires",)),
    ))  # fmt: skip
    found = result(with_hold(facts), "APPR-02")
    finding(found, "warn", "medium", "`https://bank.example`", "without a human's approval")
    assert "wire.example" not in found.summary and "pay.example" not in found.summary
    values = {i.name: i.value for i in found.evidence}
    assert values["https://wire.example"] == "denied by no-wires"
    assert values["https://bank.example"] == "issued without approval (permitted by exchange-key-bound)"


def test_apr_undecidable_audience_fails_closed() -> None:
    facts = approvals(audiences=(AudienceHold(PAY, ("payments",), "error", problem="evaluation error"),))
    finding(result(with_hold(facts), "APPR-02"), "fail", "medium", "could not decide", "evaluation error")
    finding(result(with_hold(approvals(audiences=None)), "APPR-02"), "fail", "medium", "does not load")


def test_apr_counts_from_the_audit() -> None:
    counts = {"requested": 6, "approved": 3, "denied": 1, "expired": 2, "issued": 3}
    found = result(with_hold(store=store(audit=audit(approvals=counts))), "APPR-03")
    assert found.status == "pass" and "6 request(s) held" in found.summary and "1 denied" in found.summary
    assert {i.name: i.value for i in found.evidence}["approvals issued"] == "3"


def test_apr_expiry_burst_is_a_low_finding() -> None:
    counts = {"requested": 5, "approved": 1, "expired": 3}
    finding(result(with_hold(store=store(audit=audit(approvals=counts))), "APPR-03"), "warn", "low", "3 of 4",
            "expired unanswered")  # fmt: skip
    # below the threshold or the share: no finding
    for quiet in ({"requested": 5, "expired": 2}, {"requested": 9, "approved": 4, "expired": 3}):
        assert result(with_hold(store=store(audit=audit(approvals=quiet))), "APPR-03").status == "pass", quiet


def test_apr_audit_unreadable_fails_closed() -> None:
    found = result(with_hold(store=store(audit=None, error="database is locked")), "APPR-03")
    assert (found.status, found.severity) == ("fail", "low") and "database is locked" in found.summary


def test_approval_controls_are_mapped() -> None:
    for control in ("APPR-01", "APPR-02", "APPR-03"):
        refs = mapping_for(control)
        assert "ASI09" in refs.asi and "GOVERN 3.2" in refs.nist and "LLM06" in refs.llm
    assert result(with_hold(), "APPR-02").asi == mapping_for("APPR-02").asi


# -- the evidence, from a real deployment ----------------------------------------------------------
APPROVAL_TOML = """
[approvals]
issuer = "https://idp.example.org"
high_risk_tags = ["payments", "wire"]

[[approver_groups]]
name = "finance"
members = ["user:alice@example.com", "user:bob@example.com"]

[[approver_groups]]
name = "legal"
idp_groups = ["legal-team"]

[[resources]]
uri = "https://pay.example"
principals = ["spiffe://tether.local/svc/pay"]
tags = ["payments"]

[[resources]]
uri = "https://bank.example"
principals = ["spiffe://tether.local/svc/bank"]
tags = ["payments"]

[[resources]]
uri = "https://wire.example"
principals = ["spiffe://tether.local/svc/wire"]
tags = ["wire"]

[[resources]]
uri = "https://wiki.example"
principals = ["spiffe://tether.local/svc/wiki"]
tags = ["wiki"]
"""

HOLDS = (
    '@id("pay-needs-finance")\n@approval("finance")\npermit (principal, action == Tether::Action::"exchange", resource)\n'
    'when { resource.tags.contains("payments") && context.key_bound && resource == Tether::Service::"https://pay.example" };\n'
    '@id("no-wires")\nforbid (principal, action == Tether::Action::"exchange", resource)\n'
    'when { resource.tags.contains("wire") };\n'
)


def deployment(tmp_path: Path) -> Config:
    config = make_deployment(tmp_path, extra_toml=APPROVAL_TOML)
    (config.policy_dir / "20-approvals.cedar").write_text(HOLDS, encoding="utf-8")
    return config


def test_gather_asks_the_policy_engine_for_each_high_risk_audience(tmp_path: Path) -> None:
    config = deployment(tmp_path)
    facts = approval_facts(config)
    assert facts.issuer == "https://idp.example.org" and not facts.webhook
    assert facts.groups == (ApproverGroupFacts("finance", 2), ApproverGroupFacts("legal", 0, ("legal-team",)))
    assert facts.probe == probe_principal(config) == "spiffe://tether.local/agent/tether-report-probe"
    assert facts.audiences is not None
    by_uri = {h.uri: h for h in facts.audiences}
    assert set(by_uri) == {"https://pay.example", "https://bank.example", "https://wire.example"}  # not the wiki
    assert (by_uri["https://pay.example"].outcome, by_uri["https://pay.example"].groups) == ("held", ("finance",))
    assert by_uri["https://pay.example"].policies == ("pay-needs-finance",)
    assert by_uri["https://bank.example"].outcome == "allowed"
    assert "exchange-key-bound" in by_uri["https://bank.example"].policies
    assert (by_uri["https://wire.example"].outcome, by_uri["https://wire.example"].policies) == ("denied", ("no-wires",))
    assert "alice" not in repr(facts)  # counts of members, never their names


def test_gather_without_high_risk_resources_or_with_a_broken_policy_set(tmp_path: Path) -> None:
    plain = make_deployment(tmp_path / "plain")
    # tether init points [approvals] at its dev approvers' provider
    assert approval_facts(plain).audiences == () and approval_facts(plain).issuer == DevApprovers.issuer_for(plain.issuer)
    broken = deployment(tmp_path / "broken")
    (broken.policy_dir / "30-bad.cedar").write_text("permit (principal, action, resource) when { nope };\n", "utf-8")
    assert approval_facts(broken).audiences is None


def test_report_from_a_real_deployment_with_audit_records(tmp_path: Path) -> None:
    config = deployment(tmp_path)
    now = time.time()

    def event(kind: str, principal: str, **detail: Any) -> AuditEvent:
        return AuditEvent(kind=kind, outcome="ok", principal=principal, task="tsk_1",
                          detail={"approval": "apr_" + "A" * 22, "groups": ["finance"], **detail})  # fmt: skip

    agent, alice = "spiffe://tether.local/agent/pay", "user:alice@example.com"
    events = [event("approval.requested", agent), event("approval.approved", alice),
              AuditEvent(kind="token.issued", outcome="ok", principal=agent, task="tsk_1",
                         detail={"aud": PAY, "jkt": "j", "approval": "apr_" + "A" * 22}),
              event("approval.requested", agent), event("approval.denied", alice),
              event("approval.requested", agent), event("approval.expired", agent)]  # fmt: skip

    async def write() -> None:
        store_ = await open_store(config)
        try:
            for e in events:
                await store_.append_audit(e, now=now - 60)
            await store_.append_audit(event("approval.expired", agent), now=now - 2 * DAY)  # outside the window
        finally:
            await store_.aclose()

    asyncio.run(write())
    snapshot = asyncio.run(gather(config, now=now, env={}))
    assert snapshot.store.audit is not None
    assert snapshot.store.audit.approvals == {"requested": 3, "approved": 1, "denied": 1, "expired": 1, "issued": 1}
    report = run_controls(snapshot)
    assert only(report, "APPR-01").status == "pass", only(report, "APPR-01")
    second = only(report, "APPR-02")
    assert (second.status, second.severity) == ("warn", "medium") and "`https://bank.example`" in second.summary
    third = only(report, "APPR-03")
    assert third.status == "pass" and "3 request(s) held" in third.summary


def test_snapshot_time_is_the_evidence_time() -> None:
    # the controls read no clock: the same snapshot gives the same results
    evidence = with_hold()
    assert evidence.now == NOW
    assert run_controls(evidence).results == run_controls(evidence).results
