"""Fixtures of the audit tests."""

from __future__ import annotations

import time

import pytest


@pytest.fixture
def now() -> float:
    """This test's wall-clock time: Redis expires the writers' claims in real time."""
    return float(int(time.time()))
