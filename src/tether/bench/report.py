"""Benchmark rows and the signature floor shared by every scenario.

Floors are measured in the same run: the **signature floor** is the raw ES256 work a path
cannot avoid (pyca/cryptography over OpenSSL); the **HTTP floor** is the smallest ASGI
handler on the same uvicorn + httptools + uvloop stack under the same load; the
**exchange floor** is ``1 / (signature time + floor request time)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["Row", "SignatureCosts", "signature_costs", "time_per_op"]


@dataclass
class Row:
    name: str
    value: float
    unit: str
    floor: float | None = None
    floor_unit: str = ""
    target: str = ""
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.floor is None or not self.floor:
            return None
        return self.value / self.floor

    def as_json(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "name": self.name,
            "value": round(self.value, 3),
            "unit": self.unit,
            "floor": None if self.floor is None else round(self.floor, 3),
            "floor_unit": self.floor_unit,
            "ratio": None if ratio is None else round(ratio, 3),
            "target": self.target,
            "notes": self.notes,
        }


def time_per_op(fn: Callable[[], object], n: int) -> float:
    for _ in range(min(200, n)):
        fn()
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n


@dataclass(frozen=True)
class SignatureCosts:
    verify_s: float
    sign_s: float

    def floor_rate(self, *, verifies: int, signs: int, extra_s: float = 0.0) -> float:
        return 1 / (verifies * self.verify_s + signs * self.sign_s + extra_s)


def signature_costs() -> SignatureCosts:
    """Seconds per raw ES256 verify and sign on a JWT-sized message."""
    key = ec.generate_private_key(ec.SECP256R1())
    message = b"x" * 600
    signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
    public = key.public_key()
    verify = time_per_op(lambda: public.verify(signature, message, ec.ECDSA(hashes.SHA256())), 3000)
    sign = time_per_op(lambda: key.sign(message, ec.ECDSA(hashes.SHA256())), 3000)
    return SignatureCosts(verify, sign)
