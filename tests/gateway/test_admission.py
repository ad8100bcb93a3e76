"""``tether.gateway.admission``: every admission decision as a table of inputs and the wire code it gives.

The checks are pure functions of the route, the date or time and the counters they are
given (no store, no clock), so each boundary is tested exactly: the last value admitted
next to the first one refused, on the same route. The end-to-end tests (``test_gateway_*``)
show the same refusals over HTTP.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest

from test_layering import forbidden_in, imports_of
from tether.errors import OAuthError, TooManyRequests
from tether.gateway import admission
from tether.gateway.admission import (
    check_bound,
    check_cap,
    check_in_flight,
    check_open,
    check_rate,
    check_session,
    check_target,
    suspension,
)
from tether.gateway.allowlist import parse_rule
from tether.gateway.inject import Injection
from tether.gateway.routes import GatewayRoute

# runs the same whatever TETHER_TEST_STORE says: the PostgreSQL pass of scripts/test leaves it out
pytestmark = pytest.mark.store_independent

EXPIRES = dt.date(2030, 6, 1)
ROUTE = GatewayRoute(
    name="crm", upstream="http://127.0.0.1:1", secret="crm-key", injection=Injection("header"),
    allow=(parse_rule("GET /v1/items"), parse_rule("GET /v1/items/*"), parse_rule("POST /v1/items")),
    owner="team-crm", justification="static key only", expires=EXPIRES,
    max_requests_per_task=5, max_requests_per_second=3, max_session_seconds=900, max_in_flight_per_task=2,
)  # fmt: skip
NOW = 1_900_000_000.0

Check = Callable[[], object]

#: (case, check, wire code or None when admitted) — each refusal next to its positive control
CASES: list[tuple[str, Check, str | None]] = [
    ("open on its expiry date", lambda: check_open(ROUTE, EXPIRES), None),
    ("expired the day after", lambda: check_open(ROUTE, EXPIRES + dt.timedelta(days=1)), "access_denied"),
    ("allowed path", lambda: check_target(ROUTE, "GET", "/v1/items/42", "page=2"), None),
    ("allowed method on the same path", lambda: check_target(ROUTE, "POST", "/v1/items", ""), None),
    ("path outside the allowlist", lambda: check_target(ROUTE, "GET", "/v1/admin", ""), "access_denied"),
    ("method outside the allowlist", lambda: check_target(ROUTE, "DELETE", "/v1/items/42", ""), "access_denied"),
    ("dot segment", lambda: check_target(ROUTE, "GET", "/v1/items/../admin", ""), "invalid_request"),
    ("empty segment", lambda: check_target(ROUTE, "GET", "/v1/items//42", ""), "invalid_request"),
    ("encoded slash", lambda: check_target(ROUTE, "GET", "/v1/items/a%2Fb", ""), "invalid_request"),
    ("query method override", lambda: check_target(ROUTE, "GET", "/v1/items", "_method=DELETE"), "invalid_request"),
    ("override after ;", lambda: check_target(ROUTE, "GET", "/v1/items", "a=1;_method=DELETE"), "invalid_request"),
    ("query url is data", lambda: check_target(ROUTE, "GET", "/v1/items", "url=/v1/admin"), None),
    ("bound to a task", lambda: check_bound("task-1"), None),
    ("bound to no task", lambda: check_bound(None), "access_denied"),
    ("session at its limit", lambda: check_session(ROUTE, NOW - 900, NOW), None),
    ("session past its limit", lambda: check_session(ROUTE, NOW - 900.5, NOW), "access_denied"),
    ("rate at its limit", lambda: check_rate(ROUTE, 3), None),
    ("rate past its limit", lambda: check_rate(ROUTE, 4), "too_many_requests"),
    ("cap at its limit", lambda: check_cap(ROUTE, 5), None),
    ("cap past its limit", lambda: check_cap(ROUTE, 6), "too_many_requests"),
    ("one below the in-flight cap", lambda: check_in_flight("crm", 1, 2), None),
    ("at the in-flight cap", lambda: check_in_flight("crm", 2, 2), "too_many_requests"),
]


#: the status a resource server answers with each code
STATUS = {"access_denied": 403, "invalid_request": 400, "too_many_requests": 429}


@pytest.mark.parametrize(("case", "check", "code"), CASES, ids=[c[0] for c in CASES])
def test_admission_decision(case: str, check: Check, code: str | None) -> None:
    if code is None:
        assert check() in (None, "task-1")  # admitted: the positive control of the refusal next to it
        return
    with pytest.raises(OAuthError) as refused:
        check()
    assert refused.value.error == code and refused.value.rs_status == STATUS[code]


@pytest.mark.parametrize(
    ("check", "markers", "retry_after"),
    [
        (lambda: check_rate(ROUTE, 4), {}, 1),
        (lambda: check_cap(ROUTE, 6), {"cap_hit": True}, None),
        (lambda: check_in_flight("crm", 2, 2), {"in_flight_cap": True}, 1),
    ],
    ids=["rate", "cap", "in-flight"],
)
def test_limit_refusals_carry_their_markers_and_retry_after(
    check: Check, markers: dict[str, bool], retry_after: int | None
) -> None:
    """A cap hit is marked for the audit record (it may suspend the task); a rate or in-flight refusal says when to retry."""
    with pytest.raises(TooManyRequests) as refused:
        check()
    assert refused.value.audit == markers and refused.value.retry_after == retry_after
    assert refused.value.status == refused.value.rs_status == 429


def test_refusal_descriptions_name_no_secret_and_stay_on_one_line() -> None:
    with pytest.raises(OAuthError) as refused:
        check_target(ROUTE, "GET", "/v1/admin/" + "x" * 500, "")
    assert refused.value.error == "access_denied" and len(refused.value.description) <= 300
    assert "crm-key" not in refused.value.description and "\n" not in refused.value.description


#: (case, cap_hit, refusals counted in the window or None, suspend_on_cap, reason) with a burst limit of 3 in 60 s
SUSPEND: list[tuple[str, bool, int | None, bool, str | None]] = [
    ("one refusal below the burst", False, 2, True, None),
    ("a burst", False, 3, True, "3 refused calls within 60s"),
    ("not counted (an upstream's failure)", False, None, True, None),
    ("a cap hit", True, 1, True, "cap hit"),
    ("a cap hit, suspend_on_cap off", True, 1, False, None),
    ("a cap hit within a burst, suspend_on_cap off", True, 3, False, "cap hit"),
]


@pytest.mark.parametrize(("case", "cap_hit", "refusals", "on_cap", "reason"), SUSPEND, ids=[c[0] for c in SUSPEND])
def test_suspension_after_a_burst_or_a_cap_hit(
    case: str, cap_hit: bool, refusals: int | None, on_cap: bool, reason: str | None
) -> None:
    assert suspension(cap_hit=cap_hit, refusals=refusals, limit=3, window=60, on_cap=on_cap) == reason


def test_a_burst_limit_of_zero_never_suspends() -> None:
    assert suspension(cap_hit=False, refusals=10_000, limit=0, window=60, on_cap=True) is None
    assert suspension(cap_hit=True, refusals=10_000, limit=0, window=60, on_cap=True) == "cap hit"  # positive control


def test_STYLE_1_admission_is_pure() -> None:
    """No clock, store, network or event loop, in the module or anything of tether's it reaches."""
    src = Path(admission.__file__).resolve().parents[2]
    seen: set[str] = set()
    todo = ["tether.gateway.admission"]
    while todo:
        module = todo.pop()
        path = src.joinpath(*module.split(".")).with_suffix(".py")
        if module in seen or not path.is_file():
            continue
        seen.add(module)
        names = imports_of(path.read_text(encoding="utf-8"), module)
        assert forbidden_in(names) == set(), f"{module} imports {sorted(forbidden_in(names))}"
        todo.extend(n for n in names if n.startswith("tether."))
    assert {"tether.gateway.admission", "tether.gateway.allowlist", "tether.errors"} <= seen
