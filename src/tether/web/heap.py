"""Garbage-collector settings for a serving process, applied once start-up is done.

A token exchange allocates thousands of short-lived objects and almost no reference
cycles; CPython's default generation-0 threshold (700 net allocations) ran a young
collection every dozen exchanges, and each full collection walked every module,
key, compiled policy and cache entry loaded at start-up — a few percent of the CPU
of every hop, and a pause of tens of milliseconds that every request in flight waited
behind. So the start-up heap is frozen (``gc.freeze``: moved out of every future
collection; it lives as long as the process anyway) and young collections run ten
times less often. Cycles are still collected; memory stays flat (``tether bench soak``).
"""

from __future__ import annotations

import gc

__all__ = ["settle_after_start"]

_THRESHOLDS = (7_000, 20, 20)


def settle_after_start() -> None:
    """Collect what start-up left behind, freeze the rest, and raise the young-generation threshold."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_THRESHOLDS)
