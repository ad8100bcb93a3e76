"""Policy controls: a valid Cedar set on disk, the version the STS has loaded, shadow policies, the mode."""

from __future__ import annotations

from tether.report.model import Evidence, Item
from tether.report.outcome import Check, Outcome, Problem, control, fmt, iso, judge

__all__ = ["POLICY_CONTROLS"]

#: this module's controls, in report order (each registered by ``@control`` below)
POLICY_CONTROLS: list[Check] = []


@control(POLICY_CONTROLS, "POL-01", "A valid Cedar policy set is in force")
def policy_set(evidence: Evidence) -> list[Outcome]:
    state = evidence.policy
    where = f"{state.directory} (tether.policy.loader.load_directory)"
    items = [Item("policy directory", state.directory, "tether.toml [policy] dir")]
    problems = []
    if state.problems:
        items.append(Item("problems", fmt(state.problems[:10]), where))
        problems.append(
            Problem(
                "high",
                f"the policy set does not load ({len(state.problems)} problem(s)): {state.problems[0]}",
                "Fix the files (tether policy validate); until then a running STS keeps its previous set "
                "and a starting one refuses to serve.",
                fail=True,
            )
        )
        return [judge(problems, "", items)]
    items += [Item("version on disk", fmt(state.version), where), Item("policies", str(len(state.policies)), where)]
    if not state.policies:
        problems.append(
            Problem(
                "medium",
                "the policy set is empty: Cedar's default deny refuses every exchange",
                "Install the starter policies (tether init) or write permits for your agents.",
            )
        )
    if state.loaded is None:
        items.append(Item("versions loaded by the STS", "unknown", "store unreadable"))
    else:
        items.append(
            Item("versions loaded by the STS", fmt([f"{v} ({iso(at)})" for v, at in state.loaded[:5]]), "store policy_versions")
        )
        if state.version not in {v for v, _ in state.loaded}:
            problems.append(
                Problem(
                    "low",
                    f"the STS has not loaded version {state.version} yet",
                    "Start the STS (it loads and records the set), or check its log for a refused reload.",
                )
            )
    return [judge(problems, f"policy set {state.version} is valid ({len(state.policies)} policies) and loaded", items)]


@control(POLICY_CONTROLS, "POL-02", "No policy is left in shadow")
def shadow_policies(evidence: Evidence) -> list[Outcome]:
    shadow = [p for p in evidence.policy.policies if p.shadow]
    items = [Item(p.id, f"{p.effect}, {p.file}:{p.line}", "@shadow annotation") for p in shadow]
    if not items:
        items = [Item("shadow policies", "0", f"{evidence.policy.directory}")]
    problems = []
    if shadow:
        forbids = [p.id for p in shadow if p.effect == "forbid"]
        severity = "medium" if forbids else "low"
        problems.append(
            Problem(
                severity,
                f"{len(shadow)} shadow polic{'y is' if len(shadow) == 1 else 'ies are'} "
                f"evaluated and audited but not enforced: {fmt([p.id for p in shadow])}",
                "Review the shadow decisions in the audit log, then remove @shadow or the policy.",
            )
        )
    return [judge(problems, "every policy in the set is enforced", items)]


@control(POLICY_CONTROLS, "POL-03", "Policies are enforced, not shadowed")
def policy_mode(evidence: Evidence) -> list[Outcome]:
    mode = str(evidence.value("policy.mode"))
    items = [
        Item("policy.mode", mode, evidence.settings["policy.mode"].source),
        Item("policy.publish", fmt(evidence.value("policy.publish")), evidence.settings["policy.publish"].source),
    ]
    problems = []
    if mode == "shadow":
        problems.append(
            Problem(
                "high",
                "policy.mode is shadow: Cedar decisions are logged but nothing is denied",
                'Set [policy] mode = "enforce".',
                fail=True,
            )
        )
    return [judge(problems, "policy decisions are enforced", items)]
