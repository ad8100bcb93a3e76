"""Client side of RFC 9449 §4: a DPoP key that never leaves the process, and its proofs.

Each proof has a fresh 128-bit ``jti``, the exact method and URI (query and fragment
stripped, §4.2), ``iat`` from the caller's clock, the server nonce when one was given, and
``ath`` when it accompanies an access token. The private key is held in a slot that ``repr``
never prints.
"""

from __future__ import annotations

import secrets
import time
from urllib.parse import urlsplit, urlunsplit

from joserfc.jwk import ECKey

from tether.rules.dpop import compute_ath
from tether.rules.jws import sign_compact

__all__ = ["DPoPKey", "htu_of"]


def htu_of(url: str) -> str:
    """The ``htu`` for a request URL: no query, no fragment (RFC 9449 §4.2)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", "", ""))


class DPoPKey:
    """An ES256 proof-of-possession key generated in memory."""

    __slots__ = ("_key", "jkt", "public_jwk")

    def __init__(self) -> None:
        self._key = ECKey.generate_key("P-256", private=True)
        self.public_jwk = dict(self._key.as_dict(private=False))
        self.jkt = self._key.thumbprint()

    def __repr__(self) -> str:
        return f"DPoPKey(jkt={self.jkt!r})"

    def proof(
        self,
        method: str,
        url: str,
        *,
        nonce: str | None = None,
        access_token: str | None = None,
        now: float | None = None,
    ) -> str:
        claims: dict[str, object] = {
            "jti": secrets.token_urlsafe(16),
            "htm": method.upper(),
            "htu": htu_of(url),
            "iat": int(time.time() if now is None else now),
        }
        if nonce is not None:
            claims["nonce"] = nonce
        if access_token is not None:
            claims["ath"] = compute_ath(access_token)
        return sign_compact({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.public_jwk}, claims, self._key, "ES256")
