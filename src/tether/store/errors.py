"""Store errors. ``StoreUnavailable`` propagates to the edge, which answers 503 (fail closed)."""

from __future__ import annotations

from tether.errors import TetherError, Unavailable
from tether.rules.replay_epoch import ReplayEpoch

__all__ = [
    "AlreadySpent",
    "Blocked",
    "CapReached",
    "Conflict",
    "NotFound",
    "ParentRevoked",
    "PredatesReplayCache",
    "Replayed",
    "StoreError",
    "StoreUnavailable",
    "TaskNotActive",
    "UnreadableRow",
]


class StoreError(TetherError):
    """Root of store errors."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    """An atomic step refused because the stored state changed under it."""


class AlreadySpent(Conflict):
    """A single-use identifier (JWT-SVID or assertion ``jti``) was already redeemed."""


class CapReached(Conflict):
    """The task's ``max_tokens`` would be exceeded."""


class TaskNotActive(Conflict):
    """The task ended (or hit its hard cap) before the write committed; ``str()`` is its state."""


class ParentRevoked(Conflict):
    """The token a new one would derive from has been revoked (or never existed)."""


class Replayed(Conflict):
    """A single-use proof (DPoP ``jti``) was already accepted."""


class PredatesReplayCache(Conflict):
    """A DPoP proof not provably made after the replay cache last lost its memory
    (``rules.replay_epoch``): it may be a replay the cache forgot. ``epoch`` is the cache's current one."""

    def __init__(self, epoch: ReplayEpoch) -> None:
        super().__init__(f"replay cache epoch began at {epoch.since}")
        self.epoch = epoch


class Blocked(Conflict):
    """A principal named by the write is blocked by the kill switch."""


class StoreUnavailable(StoreError, Unavailable):
    """The backing store could not answer; nothing may be granted."""


class UnreadableRow(StoreUnavailable):
    """A stored row no code of ours writes (a wrong type, JSON that does not parse, an unknown
    state): only a database writer made it. Data in the store is not trusted because it is in
    the store, so it fails closed as an unavailable store (503), never a 500 with a trace."""
