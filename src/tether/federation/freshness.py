"""Whether this deployment still hears a federation peer's revocation feed (SECURITY FED-03).

The exchange asks before it issues anything to, or on behalf of, a peer's principal; the
follower of the peer's feed answers. Until a follower is running and has heard the peer (an
entry or a heartbeat) within the peer's ``stale_after``, the answer is no: fail closed.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["ClosedFeeds", "PeerFeeds"]


class PeerFeeds(Protocol):
    def fresh(self, peer: str, now: float) -> bool:
        """``True`` only if ``peer``'s feed was heard within its ``stale_after`` of ``now``."""
        ...


class ClosedFeeds:
    """No follower runs: every peer is stale, so no peer's agent gets a token."""

    def fresh(self, peer: str, now: float) -> bool:
        return False
