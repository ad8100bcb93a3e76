"""CPU accounting from ``/proc``: a server's own CPU seconds and how busy a core was, whoever ran on it.

Per-request CPU is the figure that survives a shared machine: wall-clock throughput moves
with whatever else runs, the server's own CPU seconds per request much less. The load
generator reads these at the edges of its measured window (``loadgen``), so the figures
cover exactly the requests it timed. Standard library only: the load generator imports it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["core_busy_seconds", "cpu_seconds", "processes"]


def processes() -> dict[int, tuple[str, int, float]]:
    """Every process: its command name, its parent's pid and its CPU seconds (user + system), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    found: dict[int, tuple[str, int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        found[int(entry.name)] = (name, int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    return found


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of ``pid`` and every live descendant (``--workers`` children), from /proc."""
    every = processes()
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += every[current][2] if current in every else 0.0
        todo.extend(child for child, (_, parent, _) in every.items() if parent == current)
    return total


def core_busy_seconds(core: int) -> float:
    """Seconds core ``core`` has spent not idle since boot (``/proc/stat``), whoever ran on it."""
    ticks = os.sysconf("SC_CLK_TCK")
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
            return (sum(values[:8]) - idle) / ticks
    return float("nan")
