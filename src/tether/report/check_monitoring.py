"""Monitoring controls: the monitor and its detectors, recent alerts and refusals, the audit chain and checkpoints.

A bearer exception is acceptable only surrounded by monitoring: these controls show that the
detectors that suspend a misbehaving task are on, that the audit log they read is intact, and
that it is checkpointed so an exported copy can be verified offline.
"""

from __future__ import annotations

from tether.monitor.settings import DetectorSettings
from tether.report.model import SEVERITIES, AuditFacts, Evidence, Item
from tether.report.outcome import Check, Outcome, Problem, control, fmt, iso, judge, reads_audit, setting

__all__ = ["KEY_DETECTORS", "MONITORING_CONTROLS"]

#: this module's controls, in report order (each registered by ``@control`` below)
MONITORING_CONTROLS: list[Check] = []

#: detectors that must stay on; the first two stop an attack in progress (they suspend the task by default)
KEY_DETECTORS = ("exchange_rate_spike", "refusal_burst", "dpop_replay")
#: dpop_replay only alerts: a replay proves nothing about who sent it (monitor.settings.PROVEN_ONLY)
_ALERT_ONLY = ("dpop_replay",)


@control(MONITORING_CONTROLS, "MON-01", "The monitor watches the audit stream")
def monitor(evidence: Evidence) -> list[Outcome]:
    keys = ["monitor.enabled", "monitor.interval", "monitor.webhook", "metrics.enabled"]
    items = [setting(evidence, k) for k in keys]
    problems = []
    if not evidence.value("monitor.enabled"):
        problems.append(
            Problem(
                "high",
                "the monitor is disabled: no detector watches the audit stream",
                "Set [monitor] enabled = true.",
                fail=True,
            )
        )
    hooked = [d.name for d in evidence.detectors if d.enabled and "webhook" in d.actions]
    if hooked and not evidence.value("monitor.webhook"):
        problems.append(
            Problem(
                "medium",
                f"detector(s) {fmt(hooked)} call a webhook but monitor.webhook_url is not set",
                "Set monitor.webhook_url or drop the webhook action.",
            )
        )
    if not evidence.value("metrics.enabled"):
        problems.append(Problem("low", "Prometheus /metrics is disabled", "Set [metrics] enabled = true."))
    return [judge(problems, "the monitor watches the audit stream", items)]


def _detector(evidence: Evidence, detector: DetectorSettings) -> Outcome:
    where = evidence.detector_sources.get(detector.name, "default")
    items = [
        Item("enabled", fmt(detector.enabled), where),
        Item("severity", detector.severity, where),
        Item("actions", fmt(detector.actions), where),
        Item("parameters", ", ".join(f"{k}={v:g}" for k, v in sorted(detector.params.items())), where),
    ]
    key = detector.name in KEY_DETECTORS
    problems = []
    if not detector.enabled:
        severity = "high" if key else "low"
        problems.append(
            Problem(
                severity,
                f"detector {detector.name} is disabled",
                f"Remove enabled = false from [monitor.detectors.{detector.name}].",
                fail=key,
            )
        )
    elif not evidence.value("monitor.enabled"):
        problems.append(
            Problem("info", f"detector {detector.name} is configured but not running (the monitor is disabled)", "See MON-01.")
        )
    elif not detector.actions:
        problems.append(
            Problem(
                "medium",
                f"detector {detector.name} has no action: detections are not even recorded",
                f'Set actions = ["alert"] (at least) in [monitor.detectors.{detector.name}].',
            )
        )
    elif key and detector.name not in _ALERT_ONLY and "suspend" not in detector.actions:
        problems.append(
            Problem(
                "medium",
                f"detector {detector.name} does not suspend the task",
                f'Add "suspend" to the actions of [monitor.detectors.{detector.name}].',
            )
        )
    return judge(problems, f"detector {detector.name} is on ({fmt(detector.actions)})", items, subject=detector.name)


@control(MONITORING_CONTROLS, "MON-02", "Detectors are on and act")
def detectors(evidence: Evidence) -> list[Outcome]:
    return [_detector(evidence, d) for d in evidence.detectors]


@control(MONITORING_CONTROLS, "MON-03", "Recent alerts and refusals")
@reads_audit("the audit log", severity="medium")
def recent_activity(evidence: Evidence, audit: AuditFacts) -> list[Outcome]:
    hours = audit.window_seconds // 3600
    refused = sum(audit.refusals.values())
    items = [Item("refusals", str(refused), f"audit log, outcome refused, last {hours}h")]
    items += [
        Item(f"refused: {what}", str(n), "audit log") for what, n in sorted(audit.refusals.items(), key=lambda kv: -kv[1])[:10]
    ]
    items.append(Item("alerts", str(audit.alerts_in_window), f"audit log, alert.raised, last {hours}h"))
    for alert in audit.alerts:
        items.append(
            Item(
                f"alert #{alert.seq}",
                f"{alert.detector} ({alert.severity}) at {iso(alert.ts)}, "
                f"principal {fmt(alert.principal)}, task {fmt(alert.task)}",
                "audit log",
            )
        )
    problems = []
    if audit.alerts_in_window:
        seen = [s for s, n in audit.alert_severities.items() if n and s in SEVERITIES]
        worst = max(seen, key=SEVERITIES.index, default="medium")
        problems.append(
            Problem(
                worst,
                f"{audit.alerts_in_window} alert(s) raised in the last {hours}h",
                "Review them with tether alerts and the audit log; lift or end the affected tasks.",
            )
        )
    return [judge(problems, f"no alerts in the last {hours}h ({refused} refusals)", items)]


@control(MONITORING_CONTROLS, "AUD-01", "The audit chain is intact")
@reads_audit("the audit log")
def audit_chain(evidence: Evidence, audit: AuditFacts) -> list[Outcome]:
    items = [Item("records", str(audit.records), "store audit_records"), Item("last seq", fmt(audit.last_seq), "store")]
    problems = []
    if audit.first_broken is not None:
        items.append(Item("first broken record", str(audit.first_broken), "tether.audit.chain.first_broken"))
        problems.append(
            Problem(
                "critical",
                f"the audit chain is broken at record {audit.first_broken}: the log was altered",
                "Investigate: compare with an exported copy (tether audit verify FILE) and the backups.",
                fail=True,
            )
        )
    return [judge(problems, f"the audit hash chain verifies over {audit.records} records", items)]


@control(MONITORING_CONTROLS, "AUD-02", "The audit log is checkpointed")
@reads_audit("the audit log", severity="medium")
def checkpoints(evidence: Evidence, audit: AuditFacts) -> list[Outcome]:
    """Checkpoints are due after ``checkpoint_every`` records or ``checkpoint_seconds`` (``checkpoint_due``).

    A finding needs twice that: two missed checkpoints, so a report taken just before
    the next one is due is not flagged.
    """
    every, seconds = int(evidence.value("audit.checkpoint_every")), int(evidence.value("audit.checkpoint_seconds"))
    oldest = audit.oldest_uncovered_ts
    items = [
        Item("signed checkpoints", str(audit.checkpoints), "audit log, audit.checkpoint records"),
        Item("last checkpoint at record", fmt(audit.last_checkpoint_seq), "audit log"),
        Item("records after it", f"{audit.uncovered}" + (f", oldest {iso(oldest)}" if oldest is not None else ""), "audit log"),
        setting(evidence, "audit.checkpoint_every"),
        setting(evidence, "audit.checkpoint_seconds"),
    ]
    overdue = oldest is not None and evidence.now - oldest > 2 * seconds
    fix = "Keep the STS running: it signs a checkpoint after checkpoint_every records or checkpoint_seconds seconds."
    problems = []
    if audit.checkpoints == 0 and audit.uncovered and (audit.uncovered >= 2 * every or overdue):
        problems.append(Problem("medium", f"no signed checkpoint in {audit.records} records: an exported log cannot be "
                                "verified offline against the JWKS", fix))  # fmt: skip
    elif audit.checkpoints and audit.uncovered and (audit.uncovered > 2 * every or overdue):
        since = f" since {iso(oldest)}" if oldest is not None else ""
        problems.append(Problem("low", f"{audit.uncovered} record(s){since} are not covered by a signed checkpoint", fix))
    ok = (
        f"checkpoints are current ({audit.uncovered} record(s) after the last)"
        if audit.checkpoints
        else "no checkpoint due yet"
    )
    return [judge(problems, ok, items)]
