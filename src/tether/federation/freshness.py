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

    def revoked(self, peer: str, *, task: str | None, jti: str | None, now: float) -> bool:
        """``True`` if ``peer``'s feed said its ``task`` ended or its token ``jti`` was revoked (or
        nothing can be known: not followed, or stale). A peer's token outlives the end of its task,
        so the exchange asks this before it links one: an ended task opens nothing here."""
        ...


class ClosedFeeds:
    """No follower runs: every peer is stale, so no peer's agent gets a token."""

    def fresh(self, peer: str, now: float) -> bool:
        return False

    def revoked(self, peer: str, *, task: str | None, jti: str | None, now: float) -> bool:
        return True
