"""Whether the gateway admits a call once its token is verified: pure functions of what they are given.

The gateway asks them in this order: route expiry, path, query overrides and allowlist, (the
Cedar ``call`` policy,) task binding, (form overrides,) session age, rate, per-task cap and
calls in flight. The date, the time and the counters come in as arguments; reading them and
the store writes stay with the caller. Each refusal is typed with its wire code.
"""

from __future__ import annotations

import datetime as dt

from tether.errors import AccessDenied, InvalidRequest, TooManyRequests
from tether.gateway.allowlist import PathRefused, check_path, is_allowed
from tether.gateway.overrides import check_query
from tether.gateway.routes import GatewayRoute

__all__ = [
    "check_bound",
    "check_cap",
    "check_in_flight",
    "check_open",
    "check_rate",
    "check_session",
    "check_target",
    "suspension",
]


def check_open(route: GatewayRoute, today: dt.date) -> None:
    """A bearer exception ends on its expiry date: after it the route refuses every call."""
    if route.expired(today):
        raise AccessDenied(f"route `{route.name}` is a bearer exception that expired on {route.expires}")


def check_target(route: GatewayRoute, method: str, path: str, query: str) -> None:
    """The path exactly as it will be forwarded must be unambiguous, the query must name no
    method override, and the method and path must be in the route's allowlist."""
    try:
        segments = check_path(path)
    except PathRefused as exc:
        raise InvalidRequest(f"path refused: {exc}") from exc
    check_query(query)
    if not is_allowed(route.allow, method, segments):
        raise AccessDenied(f"{method} {path[:200]} is not in the route's allowlist")


def check_bound(task: str | None) -> str:
    """Caps, sessions and suspension are per task: a token bound to none cannot call."""
    if task is None:
        raise AccessDenied("gateway calls must be bound to a task")
    return task


def check_session(route: GatewayRoute, first: float, now: float) -> None:
    """A task may use a route for ``max_session_seconds`` from its first call there."""
    if now - first > route.max_session_seconds:
        raise AccessDenied(f"session on route `{route.name}` exceeded {route.max_session_seconds}s")


def check_rate(route: GatewayRoute, this_second: int) -> None:
    """``this_second`` counts the task's calls on the route in the current second, this one included."""
    if this_second > route.max_requests_per_second:
        raise TooManyRequests("rate limit exceeded", retry_after=1)


def check_cap(route: GatewayRoute, total: int) -> None:
    """``total`` counts every call of the task on the route, this one included; a hit is marked
    ``cap_hit`` for the audit record (and may suspend the task)."""
    if total > route.max_requests_per_task:
        refusal = TooManyRequests(f"task reached the route's cap of {route.max_requests_per_task} calls")
        refusal.audit["cap_hit"] = True
        raise refusal


def check_in_flight(route: str, held: int, limit: int) -> None:
    """One task may not hold more than ``limit`` of a route's upstream connections at once."""
    if held >= limit:
        refusal = TooManyRequests("too many calls in flight for this task", retry_after=1,
                                  debug=f"task has {held} calls in flight on route `{route}` (cap {limit})")  # fmt: skip
        refusal.audit["in_flight_cap"] = True
        raise refusal


def suspension(*, cap_hit: bool, refusals: int | None, limit: int, window: int, on_cap: bool) -> str | None:
    """Why a refusal suspends its task, or None: ``limit`` refusals within ``window`` seconds
    (``refusals`` counts them, None when not counted; a ``limit`` of 0 turns bursts off), or a
    cap hit when ``on_cap``."""
    burst = limit > 0 and refusals is not None and refusals >= limit
    if not (burst or (cap_hit and on_cap)):
        return None
    return "cap hit" if cap_hit else f"{limit} refused calls within {window}s"
