"""How fast a core is while a load phase runs: one small fixed piece of work, timed on it throughout.

On this kind of machine (a VM on a shared host) the same server's CPU per request moved by up
to 1.7× between rounds a minute apart, and by 2× between days, for tether and oidc-provider
alike: a neighbour on the host's core or its caches makes every instruction cost more CPU time,
which no process inside the VM sees. Timed back to back on an idle VM, the same 5 ms of work
took anywhere from 6 to 10.5 ms of CPU, on each core independently, from one half second to
the next — so a probe before or after a phase says little about the phase.

``Sampler`` therefore times the reference on core 0 every ``interval`` seconds *during* the
phase (about 1 % of the core), and ``tether bench --peer`` scales each phase's CPU per request
by its median sample against the fastest phase's: two rounds, or two runs, compared as if the
core had been as fast throughout. The reference mixes what both servers spend on: ES256
verifications (OpenSSL) and interpreted work (dicts, strings, JSON), on the thread's own clock.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import threading
import time

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["Sampler", "reference_seconds", "scaled"]

_KEY = ec.derive_private_key(0x7E7E7E, ec.SECP256R1())
_MESSAGE = b"tether bench reference" * 8
_SIGNATURE = _KEY.sign(_MESSAGE, ec.ECDSA(hashes.SHA256()))
_VERIFIES = 4
_ROUNDS = 40


def _work() -> None:
    public = _KEY.public_key()
    for _ in range(_VERIFIES):
        public.verify(_SIGNATURE, _MESSAGE, ec.ECDSA(hashes.SHA256()))
    for i in range(_ROUNDS):
        claims = {"iss": "https://sts.example", "sub": f"agent-{i}", "aud": ["a", "b"], "exp": i, "scope": "read write"}
        text = json.dumps(claims, separators=(",", ":"))
        if json.loads(text)["sub"] != claims["sub"] or not text.startswith("{"):
            raise AssertionError("unreachable")


def reference_seconds(core: int, *, repeat: int = 3) -> float:
    """CPU seconds the reference takes on ``core`` now, the best of ``repeat`` (this thread pinned there meanwhile)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})  # Linux: 0 is the calling thread
    try:
        best = float("inf")
        for _ in range(repeat):
            start = time.thread_time()
            _work()
            best = min(best, time.thread_time() - start)
        return best
    finally:
        os.sched_setaffinity(0, before)


class Sampler:
    """Time the reference on ``core`` every ``interval`` seconds from a thread, while the ``with`` block runs."""

    def __init__(self, core: int, *, interval: float = 0.1) -> None:
        self.core, self.interval = core, interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tether-bench-reference", daemon=True)

    def _run(self) -> None:
        os.sched_setaffinity(0, {self.core})
        while not self._stop.wait(self.interval):
            start = time.thread_time()
            _work()
            self.samples.append(time.thread_time() - start)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def median(self) -> float:
        """The median sample in seconds (NaN without any)."""
        return statistics.median(self.samples) if self.samples else float("nan")


def scaled(cpu_us_per_request: float, reference_s: float, fastest_s: float) -> float:
    """CPU per request as it would have been had the core been as fast as at ``fastest_s``."""
    if not reference_s or math.isnan(reference_s) or math.isnan(fastest_s):  # no reference taken
        return cpu_us_per_request
    return cpu_us_per_request * fastest_s / reference_s
