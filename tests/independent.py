"""An OAuth + DPoP client written from RFC 9449 with PyJWT and cryptography — not from tether.

The tests use it as the "independent client": if tether spoke a private dialect, this
client would fail.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["DPoPClient"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class DPoPClient:
    """A minimal RFC 9449 client written from the RFC, not from tether."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.key = ec.generate_private_key(ec.SECP256R1())
        numbers = self.key.public_key().public_numbers()
        self.jwk = {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64(numbers.x.to_bytes(32, "big")),
            "y": _b64(numbers.y.to_bytes(32, "big")),
        }
        thumb_input = json.dumps({k: self.jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"))
        self.jkt = _b64(hashlib.sha256(thumb_input.encode()).digest())  # RFC 7638
        self.nonce: str | None = None
        self.sent: list[str] = []  # every proof, to grep for later
        self.challenges = 0

    def proof(self, method: str, url: str, *, access_token: str | None = None) -> str:
        claims: dict[str, Any] = {"jti": secrets.token_urlsafe(16), "htm": method, "htu": url, "iat": int(time.time())}
        if self.nonce is not None:
            claims["nonce"] = self.nonce
        if access_token is not None:
            claims["ath"] = _b64(hashlib.sha256(access_token.encode("ascii")).digest())
        value = jwt.encode(claims, self.key, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": self.jwk})
        self.sent.append(value)
        return value

    def token(self, url: str, form: dict[str, str], *, proof: str | None = None) -> httpx.Response:
        """POST to the token endpoint; on ``use_dpop_nonce`` retry once with the server's nonce."""
        for _ in range(2):
            response = self.http.post(url, data=form, headers={"DPoP": proof or self.proof("POST", url)})
            if "dpop-nonce" in response.headers:
                self.nonce = response.headers["dpop-nonce"]
            if proof is None and response.status_code == 400 and response.json().get("error") == "use_dpop_nonce":
                self.challenges += 1
                continue
            return response
        return response
