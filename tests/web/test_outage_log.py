"""An outage's 503s are logged once per interval, not once per request (a flood must not fill the disk).

During a store outage every request is refused in milliseconds; ``error_response`` logs the first
refusal at ERROR and then at most one line per ``OUTAGE_LOG_INTERVAL`` carrying the count of those
it did not log. ``/healthz`` logs its 503 at debug only (``quiet``). Every refusal is still counted
in ``tether_refusals`` by the routes.
"""

from __future__ import annotations

import logging

import pytest

from tether.store.errors import StoreUnavailable
from tether.throttle import LogThrottle
from tether.web import errors
from tether.web.errors import error_response

REFUSALS = 500


def test_many_refusals_in_an_outage_write_a_bounded_number_of_lines(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(errors, "_outage_logs", {})
    caplog.set_level(logging.DEBUG, logger="tether.web")
    for _ in range(REFUSALS):
        response = error_response(StoreUnavailable("postgresql: unreachable (circuit open)"))
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
    lines = [r for r in caplog.records if r.name == "tether.web" and r.levelno >= logging.ERROR]
    # positive control: the outage is reported, once (the loop takes far less than the interval)
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "failing closed: postgresql: unreachable" in lines[0].getMessage()


def test_a_health_check_refusal_is_not_logged_above_debug(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(errors, "_outage_logs", {})
    caplog.set_level(logging.DEBUG, logger="tether.web")
    for _ in range(REFUSALS):
        assert error_response(StoreUnavailable("down"), quiet=True).status_code == 503
    assert [r for r in caplog.records if r.levelno > logging.DEBUG] == []
    assert error_response(StoreUnavailable("down")).status_code == 503
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1, "a request's refusal still is"


def test_the_throttle_logs_the_first_then_one_summary_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = logging.getLogger("tether.test.throttle")
    throttle = LogThrottle(log, logging.ERROR, interval=10.0, clock=lambda: now[0])
    caplog.set_level(logging.DEBUG, logger="tether.test.throttle")
    assert throttle.emit("failing closed: down")
    for step in range(1, 100):  # 99 more over 9.9 s: none logged
        now[0] = step * 0.1
        assert not throttle.emit("failing closed: down")
    now[0] = 10.0
    assert throttle.emit("failing closed: down")  # the summary
    now[0] = 25.0
    assert throttle.emit("failing closed: down")  # the next streak starts with a plain line again
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert "99 more like it" in messages[1]
    assert "more like it" not in messages[2]


def test_a_burst_throttle_logs_that_many_lines_per_interval_then_counts(caplog: pytest.LogCaptureFixture) -> None:
    """``tether.mcp.protect`` logs refusals of unproven callers through one: a flood costs at most
    ``burst`` lines per interval, each with its structured fields."""
    now = [0.0]
    throttle = LogThrottle(logging.getLogger("tether.test"), logging.INFO, interval=10.0, clock=lambda: now[0], burst=3)
    with caplog.at_level(logging.INFO, logger="tether.test"):
        sent = [throttle.emit("refused", extra={"mcp_event": "request refused"}) for _ in range(100)]
        now[0] = 10.0
        assert throttle.emit("refused")  # a new window
    assert sent == [True, True, True] + [False] * 97
    assert [getattr(r, "mcp_event", None) for r in caplog.records[:3]] == ["request refused"] * 3
    assert len(caplog.records) == 4 and "97 more like it" in caplog.records[-1].getMessage()
