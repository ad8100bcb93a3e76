"""Bearer exceptions (gateway routes) and the legacy secrets behind them.

A route is the one place an agent reaches something with a static secret, so it must have an
owner, a justification and an expiry: bearer tokens are an exception, not a mode. The report
lists each with its days to expiry so the owner renews or retires it before the gateway starts
refusing calls.
"""

from __future__ import annotations

from tether.report.model import Evidence, Item, RouteFacts
from tether.report.outcome import Check, Outcome, Problem, age_days, control, fmt, iso, judge, unavailable

__all__ = ["EXCEPTION_CONTROLS", "ROTATE_DAYS"]

#: this module's controls, in report order (each registered by ``@control`` below)
EXCEPTION_CONTROLS: list[Check] = []

SOON_DAYS, NEAR_DAYS, FAR_DAYS = 7, 30, 365
#: a legacy secret not rotated for this long is a finding (medium), twice as long high
ROTATE_DAYS = 90


def _route(evidence: Evidence, route: RouteFacts, vault_names: set[str] | None) -> Outcome:
    days = (route.expires - evidence.today).days
    where = f"tether.toml [[gateway.routes]] name = {route.name}"
    entries = route.vault_entries or (route.secret,)
    absent = [name for name in entries if vault_names is None or name not in vault_names]
    state = "missing" if absent else "present"
    if vault_names is None:
        state = "not checked: store unreadable"
    items = [
        Item("owner", route.owner, where),
        Item("justification", route.justification, where),
        Item("expires", route.expires.isoformat(), where),
        Item("days to expiry", str(days), f"expires - today ({evidence.today.isoformat()}, UTC)"),
        Item("upstream", route.upstream, where),
        Item("allowed requests", fmt(route.allow), where),
        Item(
            "caps",
            f"{route.max_requests_per_task} per task, {route.max_requests_per_second}/s, "
            f"sessions ≤ {route.max_session_seconds}s",
            where,
        ),
        Item("vault secret", f"{', '.join(entries)} ({state})", "store vault_list"),
    ]
    renew = f"Owner {route.owner}: renew the exception (new expires date and justification) or retire the route."
    problems = []
    if days < 0:
        problems.append(
            Problem(
                "high",
                f"bearer exception `{route.name}` expired {-days} day(s) ago: the gateway refuses every call",
                renew,
                fail=True,
            )
        )
    elif days <= SOON_DAYS:
        problems.append(
            Problem("high", f"bearer exception `{route.name}` (owner {route.owner}) expires in {days} day(s)", renew)
        )
    elif days <= NEAR_DAYS:
        problems.append(
            Problem("medium", f"bearer exception `{route.name}` (owner {route.owner}) expires in {days} days", renew)
        )
    elif days > FAR_DAYS:
        problems.append(
            Problem(
                "low",
                f"bearer exception `{route.name}` runs for {days} more days without review",
                f"Owner {route.owner}: set an expiry within a year so the exception is reviewed.",
            )
        )
    for name in absent if vault_names is not None else []:
        problems.append(
            Problem(
                "medium",
                f"vault entry `{name}` for route `{route.name}` does not exist",
                f"tether vault put {name} (the route answers 502 until then).",
                fail=True,
            )
        )
    ok = f"bearer exception `{route.name}` (owner {route.owner}) is current: {days} days to expiry"
    return judge(problems, ok, items, subject=route.name)


@control(EXCEPTION_CONTROLS, "BEARER-01", "Bearer exceptions are owned, justified and current")
def bearer_exceptions(evidence: Evidence) -> list[Outcome]:
    if not evidence.routes:
        return [
            judge(
                [],
                "no bearer exceptions are registered: agents reach services with DPoP-bound tokens only",
                [Item("gateway routes", "0", "tether.toml [[gateway.routes]]")],
            )
        ]
    vault = None if evidence.store.error else {v.name for v in evidence.store.vault}
    return [_route(evidence, route, vault) for route in evidence.routes]


@control(EXCEPTION_CONTROLS, "VAULT-01", "Legacy secrets are rotated")
def vault_rotation(evidence: Evidence) -> list[Outcome]:
    if evidence.store.error:
        return [unavailable("the vault", evidence.store.error, severity="medium")]
    problems, items = [], []
    for entry in evidence.store.vault:
        rotated = age_days(evidence.now, entry.updated_at)
        items.append(
            Item(
                entry.name,
                f"version {entry.version}, last rotated {rotated} days ago ({iso(entry.updated_at)})",
                "store vault_list",
            )
        )
        if rotated > 2 * ROTATE_DAYS:
            problems.append(
                Problem(
                    "high",
                    f"`{entry.name}` was last rotated {rotated} days ago",
                    f"tether vault rotate {entry.name} (rotate legacy secrets every {ROTATE_DAYS} days).",
                    fail=True,
                )
            )
        elif rotated > ROTATE_DAYS:
            problems.append(
                Problem(
                    "medium",
                    f"`{entry.name}` was last rotated {rotated} days ago",
                    f"tether vault rotate {entry.name} (rotate legacy secrets every {ROTATE_DAYS} days).",
                )
            )
    if not items:
        items.append(Item("vault entries", "0", "store vault_list"))
    return [judge(problems, f"every vault secret was rotated within {ROTATE_DAYS} days", items)]
