"""Approval controls: held requests can be approved, high-risk audiences are held, approvals are answered.

A Cedar permit annotated ``@approval("group")`` holds a request until a human in that group
says yes (``rules.approval``; SECURITY APR-01..05). That is human oversight of an agent
(NIST AI RMF GOVERN 3.2; OWASP ASI09 Human-Agent Trust Exploitation, LLM06 Excessive Agency),
and it holds only if it is wired: the groups the policies name exist and have members, the
approvers' OIDC provider (``[approvals] issuer``) is set, and the audiences the deployment calls
high-risk (``[approvals] high_risk_tags``) are in fact held — decided by asking the policy set
(``tether.report.approvals``), not by reading the policies' text. A held request nobody answers
expires (APR-03): many expiries say the approvers are not reached.
"""

from __future__ import annotations

from tether.report.model import AuditFacts, Evidence, Item
from tether.report.outcome import Check, Outcome, Problem, control, fmt, judge, reads_audit

__all__ = ["APPROVAL_CONTROLS", "EXPIRY_SHARE", "MIN_EXPIRED"]

#: this module's controls, in report order (each registered by ``@control`` below)
APPROVAL_CONTROLS: list[Check] = []

#: expiries worth a finding: at least this many, and at least this share of the requests answered or expired
MIN_EXPIRED, EXPIRY_SHARE = 3, 0.5
SUBJECT = "subject"
_TOML = "tether.toml"


@control(APPROVAL_CONTROLS, "APPR-01", "Requests held for approval can be approved")
def approvers(evidence: Evidence) -> list[Outcome]:
    facts = evidence.approvals
    held = [p for p in evidence.policy.policies if p.approval is not None and not p.shadow]
    configured = {g.name: g for g in facts.groups}
    items = [Item(p.id, f"held for {p.approval}{', creator may approve' if p.creator_may_approve else ''}"
                  f" ({p.file}:{p.line})", "@approval annotation") for p in held]  # fmt: skip
    items.append(Item("approvals.issuer", facts.issuer or "not set", f"{_TOML} [approvals] issuer"))
    for group in facts.groups:
        by_claim = f", by claim: {fmt(group.idp_groups)}" if group.idp_groups else ""
        items.append(Item(f"group {group.name}", f"{group.members} member(s) listed{by_claim}", f"{_TOML} [[approver_groups]]"))
    items.append(Item("approval webhook", "set" if facts.webhook else "not set", f"{_TOML} [approvals] webhook_url"))
    if not held:
        return [judge([], "no enforced policy holds requests for approval", items)]
    named = sorted({str(p.approval) for p in held})
    problems = []
    if not facts.issuer:
        problems.append(
            Problem(
                "high",
                f"{len(held)} polic{'y holds' if len(held) == 1 else 'ies hold'} requests for approval but"
                " [approvals] issuer is not set: no approver can sign in, so every held request expires",
                "Set [approvals] issuer (and audience, principal) to the organisation's OIDC provider for approvers.",
                fail=True,
            )
        )
    for name in named:
        if name == SUBJECT:
            continue  # the task's end user (on_behalf_of): nothing to configure
        found = configured.get(name)
        users = [p.id for p in held if p.approval == name]
        if found is None:
            problems.append(
                Problem(
                    "high",
                    f"approver group `{name}` (held by {fmt(users)}) is not configured: nobody can approve its requests",
                    f'Add [[approver_groups]] name = "{name}" with members or idp_groups.',
                    fail=True,
                )
            )
        elif not found.members and found.idp_groups and facts.webhook:
            problems.append(
                Problem(
                    "low",
                    f"approver group `{name}` has members only by the provider's group claim: the webhook sends"
                    " its approve/deny links to nobody",
                    f"List the approvers of `{name}` in members (links go to listed principals), or have them"
                    " decide in the console or the approvals API.",
                )
            )
    ok = f"{len(held)} polic{'y holds' if len(held) == 1 else 'ies hold'} requests for {fmt(named)}; every group is" \
        " configured and the approvers' provider is set"  # fmt: skip
    return [judge(problems, ok, items)]


@control(APPROVAL_CONTROLS, "APPR-02", "High-risk audiences are held for a human's approval")
def high_risk_held(evidence: Evidence) -> list[Outcome]:
    facts = evidence.approvals
    where = f"{_TOML} [approvals] high_risk_tags"
    items = [Item("high-risk tags", fmt(facts.high_risk_tags), where)]
    if facts.audiences is None:
        items.append(Item("policy set", "does not load", evidence.policy.directory))
        problem = Problem("medium", "which high-risk audiences are held could not be decided: the policy set does not load",
                          "Fix the policy set (tether policy validate), then run the report again.", fail=True)  # fmt: skip
        return [judge([problem], "", items)]
    if not facts.audiences:
        items.append(Item("high-risk resources", "0", f"{_TOML} [[resources]] tags"))
        return [judge([], f"no resource is tagged {fmt(facts.high_risk_tags)}: no audience needs holding", items)]
    items.append(Item("asked as", f"a hop exchange by {facts.probe}", "tether.policy.engine (synthetic request)"))
    problems = []
    for hold in facts.audiences:
        source = f"{_TOML} [[resources]] tags = {fmt(hold.tags)}"
        if hold.outcome == "held":
            items.append(Item(hold.uri, f"held for {fmt(hold.groups)} by {fmt(hold.policies)}", source))
        elif hold.outcome == "denied":
            items.append(Item(hold.uri, f"denied by {fmt(hold.policies) if hold.policies else 'default deny'}", source))
        elif hold.outcome == "allowed":
            items.append(Item(hold.uri, f"issued without approval (permitted by {fmt(hold.policies)})", source))
            problems.append(
                Problem(
                    "medium",
                    f"tokens for high-risk audience `{hold.uri}` ({fmt(hold.tags)}) are issued without a human's approval",
                    f'Add an @approval("<group>") permit matching `{hold.uri}` (see the commented payments example in'
                    " the starter 10-examples.cedar) and check it with tether policy explain; a hold on its tool calls"
                    " alone (a call policy) is not seen by this check.",
                )
            )
        else:
            items.append(Item(hold.uri, f"not decided: {hold.problem}", source))
            problems.append(Problem("medium", f"the policy set could not decide an exchange for `{hold.uri}`:"
                                    f" {hold.problem}", "Fix the policy (tether policy explain).", fail=True))  # fmt: skip
    held = sum(1 for h in facts.audiences if h.outcome == "held")
    ok = f"every high-risk audience ({len(facts.audiences)}) is held for approval or refused ({held} held)"
    return [judge(problems, ok, items)]


@control(APPROVAL_CONTROLS, "APPR-03", "Held requests are answered before they expire")
@reads_audit("the audit log (approval records)", severity="low")
def answered(evidence: Evidence, audit: AuditFacts) -> list[Outcome]:
    hours = audit.window_seconds // 3600
    counts = {k: audit.approvals.get(k, 0) for k in ("requested", "approved", "denied", "expired", "issued")}
    items = [Item(f"approvals {k}", str(v), f"audit log, last {hours} h") for k, v in counts.items()]
    closed = counts["approved"] + counts["denied"] + counts["expired"]
    if not counts["requested"] and not closed:
        return [judge([], f"no request was held for approval in the last {hours} h", items)]
    problems = []
    expired = counts["expired"]
    if expired >= MIN_EXPIRED and expired >= EXPIRY_SHARE * closed:
        problems.append(
            Problem(
                "low",
                f"{expired} of {closed} held request(s) expired unanswered in the last {hours} h: the approvers are"
                " not reached or not enough",
                "Check [approvals] webhook_url and the approver groups' members; raise [approvals] ttl if approvers"
                " need longer (the approval_expiry_burst detector alerts on a burst).",
            )
        )
    ok = (f"{counts['requested']} request(s) held in the last {hours} h: {counts['approved']} approved,"
          f" {counts['denied']} denied, {expired} expired")  # fmt: skip
    return [judge(problems, ok, items)]
