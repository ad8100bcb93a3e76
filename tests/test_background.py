"""``FailureStreak``: a background loop's run of failures is logged once, recovers with one line, backs off."""

from __future__ import annotations

import logging

import pytest

from tether.background import FailureStreak

log = logging.getLogger("tether.test.streak")


def test_a_streak_logs_its_first_failure_and_its_recovery_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tether.test.streak")
    streak = FailureStreak(log, "poll failed", "the poll", base=0.25, cap=1.0)
    for _ in range(40):
        streak.failed(RuntimeError("store down"))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["poll failed: store down (logged once until it recovers)"]
    streak.succeeded()
    streak.succeeded()  # positive control: once recovered, successes are silent
    lines = [r.getMessage() for r in caplog.records]
    assert lines[1:] == ["the poll recovered after 40 failed attempts"]
    streak.failed(RuntimeError("down again"))
    assert len(caplog.records) == 3, "a new outage is a new streak: logged again"


def test_the_wait_doubles_from_base_up_to_the_cap() -> None:
    streak = FailureStreak(log, "poll failed", "the poll", base=0.25, cap=1.0)
    assert [streak.failed(RuntimeError()) for _ in range(6)] == [0.25, 0.5, 1.0, 1.0, 1.0, 1.0]
    streak.succeeded()
    assert streak.failed(RuntimeError()) == 0.25, "and starts over after a success"
    steady = FailureStreak(log, "job skipped", "the job", base=5.0, cap=5.0)
    assert {steady.failed(RuntimeError()) for _ in range(100)} == {5.0}
