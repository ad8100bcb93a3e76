"""Gather the approval evidence: ``[approvals]``, ``[[approver_groups]]`` and what the policy set holds.

Which high-risk audiences a human must approve is not written anywhere: it is what the Cedar
policies decide. So, as ``tether policy test`` does, each ``[[resources]]`` entry tagged with
one of ``[approvals] high_risk_tags`` is put to the policy engine as a synthetic hop exchange
(``policy.cases.build_request``) by a probe agent of the deployment's trust domain, and the
decision's ``approval`` groups (``policy.engine.Decision.approval``) are recorded: held,
issued without approval, or denied. Nothing is written and no secret is read.
"""

from __future__ import annotations

import logging

from tether.config import Config
from tether.config.identities import ResourceConfig
from tether.errors import PolicyUnavailable
from tether.policy.cases import CaseError, build_request
from tether.policy.engine import PolicyEngine
from tether.report.model import ApprovalFacts, ApproverGroupFacts, AudienceHold

__all__ = ["PROBE_AGENT", "approval_facts", "probe_principal"]

#: the workload path of the synthetic agent the report asks the policy set about
PROBE_AGENT = "agent/tether-report-probe"


def probe_principal(config: Config) -> str:
    """A SPIFFE ID in the deployment's first trust domain (else the dev one): an ordinary agent of it."""
    domain = config.trust_domains[0].name if config.trust_domains else (config.dev.trust_domain or "tether.local")
    return f"spiffe://{domain}/{PROBE_AGENT}"


def _holds(config: Config, probe: str) -> tuple[AudienceHold, ...] | None:
    """Ask the policy set a hop exchange to each high-risk resource; ``None`` if it does not load."""
    risky = set(config.approvals.high_risk_tags)
    resources = [r for r in config.resources if risky & set(r.tags)]
    if not resources:
        return ()
    logger = logging.getLogger("tether.policy")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # a set that does not load is POL-01's finding, not a log line here
    try:
        engine = PolicyEngine(config.policy_dir, mode=config.policy.mode)
        return None if engine.current is None else _decide(engine, config, probe, resources)
    finally:
        logger.setLevel(level)


def _decide(engine: PolicyEngine, config: Config, probe: str, resources: list[ResourceConfig]) -> tuple[AudienceHold, ...]:
    holds = []
    for resource in resources:
        tags = tuple(sorted(resource.tags))
        raw = {"action": "exchange", "principal": probe, "resource": resource.uri, "tags": {resource.uri: list(tags)}}
        try:
            decision = engine.authorize(build_request(raw, where=resource.uri, admins=config.admin.principals))
        except (CaseError, PolicyUnavailable) as exc:
            holds.append(AudienceHold(resource.uri, tags, "error", problem=str(exc)[:200]))
            continue
        if decision.errors:
            holds.append(AudienceHold(resource.uri, tags, "error", problem="; ".join(decision.errors)[:200]))
        elif not decision.allowed:
            holds.append(AudienceHold(resource.uri, tags, "denied", policies=decision.determining))
        elif decision.approval:
            holds.append(AudienceHold(resource.uri, tags, "held", decision.approval, decision.approval_policies))
        else:
            holds.append(AudienceHold(resource.uri, tags, "allowed", policies=decision.determining))
    return tuple(holds)


def approval_facts(config: Config) -> ApprovalFacts:
    """The approval part of the evidence snapshot (never a member's name: counts and provider groups)."""
    settings = config.approvals
    probe = probe_principal(config)
    return ApprovalFacts(
        issuer=settings.issuer,
        high_risk_tags=tuple(settings.high_risk_tags),
        groups=tuple(ApproverGroupFacts(g.name, len(g.members), tuple(g.idp_groups)) for g in config.approver_groups),
        webhook=bool(settings.webhook_url),
        audiences=_holds(config, probe),
        probe=probe,
    )
