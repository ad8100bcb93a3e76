"""What a check returns, and the small helpers every check uses to build it (pure)."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tether.report.model import AuditFacts, Evidence, Item, severity_rank

__all__ = ["Check", "Outcome", "Problem", "age_days", "fmt", "iso", "judge", "setting", "unavailable"]

PASS_FIX = "none needed"


@dataclass(frozen=True)
class Problem:
    """One thing wrong: how bad, what it is, how to fix it; ``fail`` when the control is not met at all."""

    severity: str
    message: str
    fix: str
    fail: bool = False


@dataclass(frozen=True)
class Outcome:
    status: str
    severity: str | None
    summary: str
    evidence: tuple[Item, ...]
    remediation: str
    subject: str | None = None


#: a control's rule: evidence in, one outcome per subject out
Rule = Callable[[Evidence], list[Outcome]]


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    run: Rule


def control(registry: list[Check], id: str, title: str) -> Callable[[Rule], Rule]:
    """Register the decorated rule as control ``id`` in ``registry``: the id and title stand
    beside the rule they name, and definition order is report order."""

    def register(run: Rule) -> Rule:
        registry.append(Check(id, title, run))
        return run

    return register


def judge(problems: Sequence[Problem], ok: str, evidence: Iterable[Item], *, subject: str | None = None) -> Outcome:
    """Pass with ``ok`` when there is no problem; otherwise the worst problem sets the severity.

    The status is ``fail`` if any problem is a failure, else ``warn``; the summary and
    the remediation list every problem, worst first.
    """
    items = tuple(evidence)
    if not problems:
        return Outcome("pass", None, ok, items, PASS_FIX, subject)
    ordered = sorted(problems, key=lambda p: -severity_rank(p.severity))
    status = "fail" if any(p.fail for p in ordered) else "warn"
    fixes = list(dict.fromkeys(p.fix for p in ordered))
    summary = "; ".join(p.message for p in ordered)
    return Outcome(status, ordered[0].severity, summary, items, " ".join(fixes), subject)


def unavailable(what: str, error: str | None, *, severity: str = "high", subject: str | None = None) -> Outcome:
    """Fail closed: evidence that could not be read does not pass a control."""
    problem = Problem(
        severity,
        f"{what} could not be read: {error or 'unknown error'}",
        "Make the store reachable and readable (tether init for a new deployment), then run the report again.",
        fail=True,
    )
    return judge([problem], "", [Item("store", "unavailable", error or "unknown error")], subject=subject)


def reads_audit(what: str, *, severity: str = "high") -> Callable[[Callable[[Evidence, AuditFacts], list[Outcome]]], Rule]:
    """A rule over the audit facts; when the store could not give them, it fails closed as
    ``unavailable`` (with ``severity``) instead of running."""

    def wrap(rule: Callable[[Evidence, AuditFacts], list[Outcome]]) -> Rule:
        @functools.wraps(rule)
        def run(evidence: Evidence) -> list[Outcome]:
            audit = evidence.store.audit
            if audit is None:
                return [unavailable(what, evidence.store.error, severity=severity)]
            return rule(evidence, audit)

        return run

    return wrap


def fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, list | tuple | frozenset | set):
        return ", ".join(fmt(v) for v in value) if value else "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def setting(evidence: Evidence, key: str, name: str | None = None) -> Item:
    """The configuration value ``key`` as evidence, with its source."""
    found = evidence.settings[key]
    return Item(name or key, fmt(found.value), found.source)


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def age_days(now: float, then: float) -> int:
    return int((now - then) // 86400)
