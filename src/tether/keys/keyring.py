"""The issuer keyring: the current signing key, retired keys still in the JWKS, rotation.

Keys live in the store (sealed under the master key) so every replica signs with
the same key and a rotation made anywhere is seen everywhere. Each key has exactly
one algorithm (JWT-01) and a ``kid`` equal to its RFC 7638 thumbprint. A rotated-out
key stays in the JWKS until every token it signed has expired (``not_after``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from joserfc.jwk import ECKey, OKPKey

from tether.keys.sealed import seal, unseal
from tether.rules.jws import PublicKey, sign_compact
from tether.store.protocol import Store
from tether.store.records import StoredKey

__all__ = ["SIGNING_ALGS", "KeyRing", "SigningKey", "generate_key", "issuer_key_aad", "load_keyring", "rotate_signing_key"]

SIGNING_ALGS = ("ES256", "EdDSA")


def generate_key(alg: str) -> ECKey | OKPKey:
    if alg == "ES256":
        return ECKey.generate_key("P-256", private=True)
    if alg == "EdDSA":
        return OKPKey.generate_key("Ed25519", private=True)
    raise ValueError(f"unsupported signing algorithm {alg}")


def public_jwk(key: PublicKey, alg: str) -> dict[str, Any]:
    jwk: dict[str, Any] = dict(key.as_dict(private=False))
    jwk.update({"kid": key.thumbprint(), "alg": alg, "use": "sig"})
    return jwk


def issuer_key_aad(kid: str) -> bytes:
    """The AES-GCM associated data sealing an issuer key: its kid (a blob cannot be swapped)."""
    return b"issuer-key\x00" + kid.encode()


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private: PublicKey
    public: PublicKey
    jwk: Mapping[str, Any]
    retired_at: int | None
    not_after: int | None


class KeyRing:
    """Immutable view of the issuer keys; replace it to pick up a rotation."""

    def __init__(self, keys: list[SigningKey]) -> None:
        current = [k for k in keys if k.retired_at is None]
        if not current:
            raise LookupError("no current signing key in the store; run tether init (or tether keys rotate)")
        self.current = current[0]
        self._by_kid = {k.kid: k for k in keys}
        self.kids = frozenset(self._by_kid)

    def public_key(self, kid: object, *, now: float) -> SigningKey | None:
        key = self._by_kid.get(kid) if isinstance(kid, str) else None
        if key is None or (key.not_after is not None and key.not_after <= now):
            return None
        return key

    def jwks(self, *, now: float) -> dict[str, Any]:
        live = [k for k in self._by_kid.values() if k.not_after is None or k.not_after > now]
        return {"keys": [dict(k.jwk) for k in live]}

    def sign(self, claims: Mapping[str, Any], *, typ: str = "at+jwt") -> str:
        key = self.current
        return sign_compact({"typ": typ, "alg": key.alg, "kid": key.kid}, claims, key.private, key.alg)


def new_stored_key(master: bytes, *, alg: str, now: int) -> StoredKey:
    key = generate_key(alg)
    jwk = public_jwk(key, alg)
    private = json.dumps(key.as_dict(private=True)).encode()
    return StoredKey(
        kid=jwk["kid"],
        alg=alg,
        public_jwk=jwk,
        sealed_private=seal(master, private, aad=issuer_key_aad(jwk["kid"])),
        created_at=now,
    )


def _open(master: bytes, stored: StoredKey) -> SigningKey:
    raw = json.loads(unseal(master, stored.sealed_private, aad=issuer_key_aad(stored.kid)))
    private: PublicKey = ECKey.import_key(raw) if raw["kty"] == "EC" else OKPKey.import_key(raw)
    public: PublicKey = ECKey.import_key(stored.public_jwk) if raw["kty"] == "EC" else OKPKey.import_key(stored.public_jwk)
    return SigningKey(
        kid=stored.kid,
        alg=stored.alg,
        private=private,
        public=public,
        jwk=stored.public_jwk,
        retired_at=stored.retired_at,
        not_after=stored.not_after,
    )


async def load_keyring(store: Store, master: bytes, *, now: float) -> KeyRing:
    return KeyRing([_open(master, k) for k in await store.signing_keys(now=now)])


async def rotate_signing_key(store: Store, master: bytes, *, alg: str, now: int, max_token_lifetime: int) -> StoredKey:
    """Add a new current key; the old one stays published until its last token expires."""
    stored = new_stored_key(master, alg=alg, now=now)
    await store.add_signing_key(stored, retire_at=now, not_after=now + max_token_lifetime + 60)
    return stored
