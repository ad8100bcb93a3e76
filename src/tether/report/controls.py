"""The controls: pure checks of one evidence snapshot, each a status, a severity, evidence and a fix.

Every control reads only the ``Evidence`` it is given (no clock, files or store), so a report
is reproducible from its snapshot and each rule is tested with hand-built snapshots.
Thresholds: access tokens ≤ 5 min, revocation at a resource server ≤ 5 s, ``act`` depth ≤ 5,
and the RFCs cited per check. A control whose evidence could not be read fails closed.
"""

from __future__ import annotations

from tether.report.check_approvals import APPROVAL_CONTROLS
from tether.report.check_exceptions import EXCEPTION_CONTROLS
from tether.report.check_mcp import MCP_CONTROLS
from tether.report.check_monitoring import MONITORING_CONTROLS
from tether.report.check_policy import POLICY_CONTROLS
from tether.report.check_tokens import TOKEN_CONTROLS
from tether.report.check_trust import TRUST_CONTROLS
from tether.report.frameworks import mapping_for
from tether.report.model import Evidence, Report, Result
from tether.report.outcome import Check

__all__ = ["CONTROLS", "run_controls"]

#: every control, in report order
CONTROLS: tuple[Check, ...] = (*TOKEN_CONTROLS, *EXCEPTION_CONTROLS, *MCP_CONTROLS, *POLICY_CONTROLS, *APPROVAL_CONTROLS,
                               *MONITORING_CONTROLS, *TRUST_CONTROLS)  # fmt: skip


def run_controls(evidence: Evidence) -> Report:
    """Evaluate every control over ``evidence``: one result per control, or per subject (route, detector)."""
    results: list[Result] = []
    for check in CONTROLS:
        refs = mapping_for(check.id)
        for outcome in check.run(evidence):
            named = {"control": check.id, "title": check.title, **vars(outcome)}
            results.append(Result(**named, asi=refs.asi, maestro=refs.maestro, nist=refs.nist, llm=refs.llm))
    return Report(
        generated_at=evidence.now,
        config_path=evidence.config_path,
        issuer=str(evidence.value("issuer")),
        store=evidence.store.kind,
        results=tuple(results),
        settings_from=evidence.settings_from,
    )
