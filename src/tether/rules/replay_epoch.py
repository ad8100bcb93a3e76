"""When a DPoP proof may be trusted after the replay cache was lost (RFC 9449 §11.1, §8).

The ``jti`` replay cache lives in Redis, which may lose keys (a restart with default
persistence, a failover, a flush). A cache that forgot a ``jti`` would accept the proof
again, so each replay check also reads the cache's *epoch*: a marker key recreated, with a
new random id and Redis's own time as ``since``, whenever it is found missing or written by
another Redis run. A proof is accepted only if it was provably made in the current epoch:

* with server nonces on, its nonce carries the current epoch's tag (``rules.nonce``: the tag
  is under the nonce's MAC, and the id is random and only learnt from Redis once the epoch
  began). No clock is compared, so replicas whose clocks disagree cannot let a proof made
  before the loss through (a fast replica's nonce carries a later *time*, never a later epoch);
* without nonces, its ``iat`` is at least ``since + allowance``, where ``since`` is Redis's
  ``TIME`` when the loss was noticed and ``allowance`` at least the ``iat`` future leeway: a
  proof accepted before the loss had ``iat <= accepted_at + skew < since + skew``.

A refused honest client is answered ``use_dpop_nonce`` with a nonce of the new epoch and
simply retries, with server nonces on or off (off: the nonce is minted for the challenge only;
a client that ignores it passes once its ``iat`` is past the allowance).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from tether.rules.nonce import epoch_tag

__all__ = ["MAX_AHEAD", "MIN_ALLOWANCE", "ReplayEpoch", "effective_since", "vouched"]

#: the least ``iat`` allowance past ``since`` (the nonce future tolerance, ``rules.nonce``)
MIN_ALLOWANCE = 5

#: how far ahead of a replica's clock an epoch's ``since`` is believed (``effective_since``)
MAX_AHEAD = 5.0


@dataclass(frozen=True)
class ReplayEpoch:
    """The replay cache's current epoch: its random ``id`` and when it began (Redis ``TIME``)."""

    id: str
    since: float
    #: the tag nonces minted under this epoch carry (``rules.nonce.epoch_tag``), hashed once
    tag: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tag", epoch_tag(self.id))


def vouched(*, iat: float, nonce_epoch: bytes | None, skew: int, epoch: ReplayEpoch, since: float) -> bool:
    """True when the replay cache in ``epoch`` can vouch that the proof is unspent.

    ``nonce_epoch`` is the epoch tag of the proof's verified server nonce (``None`` when
    nonces are off); ``skew`` is the ``iat`` future leeway; ``since`` is the epoch's start as
    this replica believes it (``effective_since``).
    """
    if nonce_epoch is not None:
        return hmac.compare_digest(nonce_epoch, epoch.tag)
    return iat - max(skew, MIN_ALLOWANCE) >= since


def effective_since(since: float, *, first_seen: float) -> float:
    """The start of an epoch a replica uses: ``since``, but never more than ``MAX_AHEAD``
    after the replica first saw the epoch (``first_seen``, its own clock).

    A ``since`` far ahead is a Redis clock running fast or a marker someone wrote: believed,
    it would refuse every ``iat`` until then. The clamp stays safe: the loss happened before
    the replica first saw the new epoch, so a proof accepted before it has
    ``iat <= first_seen + skew``, still refused.
    """
    return min(since, first_seen + MAX_AHEAD)
