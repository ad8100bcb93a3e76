"""RFC 9449 §8 server-provided DPoP nonces, stateless so every replica can check them.

A nonce is ``ts ‖ salt ‖ HMAC(key, ts ‖ salt)`` in base64url: unpredictable without the key,
and carrying the server time it was issued, so with nonces on the server's clock rather than
the client's ``iat`` bounds how old a proof can be. Replicas derive the same key from the
master key, so a nonce from one is good at all.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct

__all__ = ["make_nonce", "nonce_fresh", "nonce_issued"]

_MAC_LEN = 16


def make_nonce(key: bytes, *, now: float, salt: bytes) -> str:
    """A nonce issued at ``now``; ``salt`` must come from a CSPRNG (8 bytes or more)."""
    body = struct.pack(">Q", int(now)) + salt
    mac = hmac.new(key, body, hashlib.sha256).digest()[:_MAC_LEN]
    return base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode("ascii")


def nonce_issued(key: bytes, nonce: str | None) -> int | None:
    """The server time ``nonce`` was issued at, if it was made with ``key``; else ``None``.

    A pure function of its inputs, so a caller may remember the answer for a nonce it
    has seen (every proof of a busy client carries the same nonce for a while).
    """
    if not nonce or len(nonce) > 128 or not nonce.isascii():
        return None
    try:
        raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(raw) < 8 + 8 + _MAC_LEN:
        return None
    body, mac = raw[:-_MAC_LEN], raw[-_MAC_LEN:]
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()[:_MAC_LEN]):
        return None
    issued: int = struct.unpack(">Q", body[:8])[0]
    return issued


def nonce_fresh(issued: int, *, now: float, ttl: int, future_skew: int = 5) -> bool:
    """Whether a nonce issued at ``issued`` is still good at ``now`` (RFC 9449 §8, §11.1)."""
    return now - ttl <= issued <= now + future_skew
