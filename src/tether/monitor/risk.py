"""The risk board: a 0-100 score per principal that Cedar sees as ``context.risk`` (pure).

Detectors with the ``risk`` action add to the caught agent's score by severity; each addition
expires ``risk_ttl`` seconds after the record that raised it, so a score decays once an agent
behaves (the starter ``deny-high-risk`` refuses at 80). Every replica builds its board from
the shared chain's ``alert.raised`` and ``risk.raised`` records, so replicas agree and a
restarted one rebuilds it.
"""

from __future__ import annotations

from tether.lru import LruCache

__all__ = ["MAX_RISK", "RISK_BY_SEVERITY", "RiskBoard"]

MAX_RISK = 100
RISK_BY_SEVERITY = {"low": 10, "medium": 25, "high": 50, "critical": 80}


class RiskBoard:
    def __init__(self, capacity: int = 10_000) -> None:
        #: principal → [(amount, until)]
        self._raised: LruCache[str, list[tuple[int, float]]] = LruCache(capacity)

    def raise_score(self, principal: str, amount: int, *, until: float) -> None:
        entries = self._raised.get(principal) or []
        entries.append((max(0, amount), until))
        self._raised.put(principal, entries[-MAX_RISK:])

    def score(self, principal: str, *, now: float) -> int:
        """The sum of the unexpired additions, capped at ``MAX_RISK``."""
        entries = self._raised.get(principal)
        if not entries:
            return 0
        live = [(amount, until) for amount, until in entries if until > now]
        if len(live) != len(entries):
            if live:
                self._raised.put(principal, live)
            else:
                self._raised.pop(principal)
        return min(MAX_RISK, sum(amount for amount, _ in live))
