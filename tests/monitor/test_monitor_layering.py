"""STYLE rule 1 for the monitor: the detectors and what they use are pure (no clock, I/O or loop)."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_layering import SRC, forbidden_in, imports_of

PURE = ["events", "base", "detectors", "refusals", "dedupe", "risk", "settings", "sample"]


@pytest.mark.parametrize("name", PURE)
def test_STYLE_1_monitor_module_imports_nothing_impure(name: str) -> None:
    path: Path = SRC / "tether" / "monitor" / f"{name}.py"
    names = imports_of(path.read_text(encoding="utf-8"), f"tether.monitor.{name}")
    assert forbidden_in(names) == set(), f"tether.monitor.{name} imports {sorted(forbidden_in(names))}"
    impure = {n for n in names if n.startswith(("tether.store", "tether.clock", "tether.monitor.runner",
                                               "tether.monitor.actions", "tether.monitor.webhook"))}  # fmt: skip
    assert impure == set()
