"""The chaos suite: faults an operator's bad day brings, injected into real processes (issue 14).

Every test collected under ``tests/chaos`` is marked ``chaos`` (``pytest -m chaos`` runs the
suite alone, ``-m "not chaos"`` leaves it out); by default it runs with the rest of the suite.
The scale-out kit (``tests/scaleout/scalekit.py``: STS replicas as ``tether serve`` processes,
disposable Redis and PostgreSQL servers) is importable here, as the chaos tests reuse it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "scaleout"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.chaos)
