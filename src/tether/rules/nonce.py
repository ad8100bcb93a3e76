"""RFC 9449 §8 server-provided DPoP nonces, stateless so every replica can check them.

A nonce is ``ts ‖ epoch ‖ salt ‖ HMAC(key, ts ‖ epoch ‖ salt)`` in base64url: unpredictable
without the key, carrying the server time it was issued, so with nonces on the server's clock
rather than the client's ``iat`` bounds how old a proof can be, and the tag of the replay
cache's epoch it was minted under (``epoch_tag``; ``rules.replay_epoch``), so a nonce minted
before the replay cache was lost is told apart without comparing clocks. Replicas derive the
same key from the master key, so a nonce from one is good at all.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct

__all__ = ["NO_EPOCH", "epoch_tag", "make_nonce", "nonce_fresh", "nonce_issued", "nonce_read"]

_MAC_LEN = 16
_TAG_LEN = 8

#: the tag of a nonce minted before the replica learnt any replay epoch (or with a replay
#: cache that cannot lose keys): it matches no epoch
NO_EPOCH = bytes(_TAG_LEN)


def epoch_tag(epoch: str) -> bytes:
    """The short tag a nonce carries for the replay epoch ``epoch`` (its random id)."""
    return hashlib.sha256(b"tether-replay-epoch\x00" + epoch.encode()).digest()[:_TAG_LEN]


def make_nonce(key: bytes, *, now: float, salt: bytes, epoch: bytes = NO_EPOCH) -> str:
    """A nonce issued at ``now`` under the replay epoch tagged ``epoch`` (``epoch_tag``);
    ``salt`` must come from a CSPRNG (8 bytes or more)."""
    if len(epoch) != _TAG_LEN:
        raise ValueError("an epoch tag is 8 bytes")
    body = struct.pack(">Q", int(now)) + epoch + salt
    mac = hmac.new(key, body, hashlib.sha256).digest()[:_MAC_LEN]
    return base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode("ascii")


def nonce_issued(key: bytes, nonce: str | None) -> int | None:
    """The server time ``nonce`` was issued at, if it was made with ``key``; else ``None``."""
    read = nonce_read(key, nonce)
    return None if read is None else read[0]


def nonce_read(key: bytes, nonce: str | None) -> tuple[int, bytes] | None:
    """The server time ``nonce`` was issued at and its epoch tag, if it was made with ``key``.

    A pure function of its inputs, so a caller may remember the answer for a nonce it
    has seen (every proof of a busy client carries the same nonce for a while).
    """
    if not nonce or len(nonce) > 128 or not nonce.isascii():
        return None
    try:
        raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(raw) < 8 + _TAG_LEN + 8 + _MAC_LEN:
        return None
    body, mac = raw[:-_MAC_LEN], raw[-_MAC_LEN:]
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()[:_MAC_LEN]):
        return None
    issued: int = struct.unpack(">Q", body[:8])[0]
    return issued, body[8 : 8 + _TAG_LEN]


def nonce_fresh(issued: int, *, now: float, ttl: int, future_skew: int = 5) -> bool:
    """Whether a nonce issued at ``issued`` is still good at ``now`` (RFC 9449 §8, §11.1)."""
    return now - ttl <= issued <= now + future_skew
