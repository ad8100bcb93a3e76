"""When a DPoP proof may be trusted after the replay cache was lost (RFC 9449 §11.1, §8).

The ``jti`` replay cache lives in Redis, which may lose keys (a restart with default
persistence, a failover, an eviction). A cache that forgot a ``jti`` would accept the
proof again, so each replay check also learns ``since``: the server time the current
cache began (a marker key recreated whenever it is found missing or from another Redis
run). A proof is accepted only if it was provably made at or after ``since``:

* its server nonce was issued at or after ``since`` (nonces carry the server time,
  ``rules.nonce``), or
* its ``iat`` is at least ``since + skew``: a proof accepted before the loss had
  ``iat <= accepted_at + skew < since + skew`` (RFC 9449 §4.3 item 11 refuses a later one).

Nothing special remains once ``max_age + skew`` has passed since ``since``: every proof that
passes the ``iat`` window then has ``iat - skew >= since``. A refused honest client is
answered ``use_dpop_nonce`` with a nonce minted at or after ``since`` (``nonce_wait``), and
simply retries. Replica clocks are assumed to agree to better than the time Redis takes to
come back (a replica whose clock runs ahead by more could have minted, before the loss, a
nonce carrying a time after ``since``).
"""

from __future__ import annotations

import math

__all__ = ["made_after", "nonce_wait", "predates_cache"]


def made_after(*, iat: float, nonce_issued: int | None, skew: int) -> float:
    """The server time a proof was provably made at or after.

    ``nonce_issued`` is the issue time of the proof's server nonce when it verified
    (``rules.nonce.nonce_issued``), else ``None``; ``skew`` is the future leeway the
    ``iat`` check allows (the proof could have been accepted up to ``skew`` before its ``iat``).
    """
    by_iat = iat - skew
    return by_iat if nonce_issued is None else max(by_iat, float(nonce_issued))


def predates_cache(made_after: float, since: float) -> bool:
    """True when the replay cache that began at ``since`` cannot vouch the proof is unspent."""
    return made_after < since


def nonce_wait(now: float, since: float) -> float:
    """How long to wait, from ``now``, before minting a nonce that passes a cache begun at ``since``.

    Nonces carry the whole second they were minted in, truthfully: a nonce minted in the
    second the cache began would carry a time before ``since`` and be refused again, so the
    answer to a refused proof waits for the next whole second (at most one second, once per
    loss). Never stamping a nonce ahead of its real time is what keeps two losses in one
    second apart: a nonce minted before the second loss can never claim a time after it.
    """
    return max(0.0, math.ceil(since) - now)
