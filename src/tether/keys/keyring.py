"""The issuer keyring: the current signing key, retired keys still in the JWKS, rotation.

Keys live in the store, sealed under the master key, so every replica signs with the same key
and sees a rotation made anywhere. Each key has one algorithm and its RFC 7638 thumbprint as
``kid``, and stays in the JWKS until every token it signed has expired. The store does not
vouch: the public key is derived from the unsealed private key, and the key's state (``kid``,
``alg``, creation, retirement, ``not_after``) is the seal's associated data, so a database
writer without the master key cannot publish, extend or revive a key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from joserfc.jwk import ECKey, OKPKey

from tether.keys.sealed import SealError, seal, unseal
from tether.localstate import LocalState
from tether.rules.jws import PublicKey, sign_compact
from tether.store.protocol import Store
from tether.store.records import StoredKey

__all__ = [
    "SIGNING_ALGS",
    "KeyRejected",
    "KeyRing",
    "SigningKey",
    "check_not_older",
    "generate_key",
    "issuer_key_aad",
    "legacy_issuer_key_aad",
    "load_keyring",
    "open_key",
    "rotate_signing_key",
]

log = logging.getLogger("tether.keys")

SIGNING_ALGS = ("ES256", "EdDSA")


class KeyRejected(SealError):
    """A stored signing key that does not open, or whose row disagrees with what was sealed."""


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


def _field(value: int | None) -> str:
    return "" if value is None else str(value)


def issuer_key_aad(key: StoredKey) -> bytes:
    """The associated data sealing an issuer key: its id and its whole lifecycle state.

    Retiring a key re-seals it with the new state (``rotate_signing_key``), so the row's
    ``retired_at``/``not_after`` can only be what the holder of the master key wrote.
    """
    state = "\x00".join((key.kid, key.alg, str(key.created_at), _field(key.retired_at), _field(key.not_after)))
    return b"issuer-key/2\x00" + state.encode()


def legacy_issuer_key_aad(kid: str) -> bytes:
    """The associated data of keys sealed before the state was bound (kid only); see ``tether.keys.legacy``."""
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
    created_at: int = 0


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
    unsealed = StoredKey(kid=jwk["kid"], alg=alg, public_jwk=jwk, sealed_private=b"", created_at=now)
    return replace(unsealed, sealed_private=seal(master, private, aad=issuer_key_aad(unsealed)))


def _import(raw: bytes, alg: str) -> PublicKey:
    try:
        data = json.loads(raw)
        key: PublicKey = OKPKey.import_key(data) if alg == "EdDSA" else ECKey.import_key(data)
    except (ValueError, TypeError, KeyError) as exc:
        raise KeyRejected("the sealed private key is not a key") from exc
    if not key.is_private:
        raise KeyRejected("the sealed key has no private part")
    return key


def open_key(master: bytes, stored: StoredKey, *, legacy: bool = False) -> SigningKey:
    """Unseal a stored key and check its row against it; raises ``KeyRejected``.

    ``legacy`` opens a key sealed with only its kid bound (before state binding).
    """
    if stored.alg not in SIGNING_ALGS:
        raise KeyRejected(f"key `{stored.kid:.80}` has an unsupported algorithm")
    aad = legacy_issuer_key_aad(stored.kid) if legacy else issuer_key_aad(stored)
    try:
        private = _import(unseal(master, stored.sealed_private, aad=aad), stored.alg)
    except SealError as exc:
        raise KeyRejected(f"key `{stored.kid:.80}` does not open with its stored state: {exc}") from exc
    jwk = public_jwk(private, stored.alg)
    if jwk["kid"] != stored.kid:
        raise KeyRejected(f"key `{stored.kid:.80}` is not the key its id names")
    if stored.public_jwk != jwk:
        raise KeyRejected(f"key `{stored.kid:.80}`: the stored public key is not the sealed key's")
    public: PublicKey = type(private).import_key({k: v for k, v in jwk.items() if k not in ("alg", "use", "kid")})
    return SigningKey(stored.kid, stored.alg, private, public, jwk, stored.retired_at, stored.not_after, stored.created_at)


def open_keys(master: bytes, stored: Sequence[StoredKey]) -> tuple[list[SigningKey], list[KeyRejected]]:
    """Every key that opens and checks out, and why each other one was refused.

    Two keys claiming to be current cannot come from rotations (each retires the
    previous current key in the same step): only the newest stands; an older one is a
    retired row put back, and is refused.
    """
    opened: list[SigningKey] = []
    rejected: list[KeyRejected] = []
    for row in stored:  # newest first
        try:
            key = open_key(master, row)
        except KeyRejected as exc:
            rejected.append(exc)
            continue
        if key.retired_at is None and any(k.retired_at is None for k in opened):
            rejected.append(KeyRejected(f"key `{key.kid}` claims to be current beside a newer current key"))
            continue
        opened.append(key)
    return opened, rejected


async def load_keyring(store: Store, master: bytes, *, now: float) -> KeyRing:
    """The keyring from the store; refused keys are logged and left out (never published, never used).

    Raises ``KeyRejected`` when no key opens at all (a wrong master key), ``LookupError``
    when none of those that open is current.
    """
    stored = await store.signing_keys(now=now)
    opened, rejected = open_keys(master, stored)
    for problem in rejected:
        log.error("signing key refused: %s", problem)
    if stored and not opened:
        raise rejected[0]
    return KeyRing(opened)


def check_not_older(ring: KeyRing, state: LocalState) -> None:
    """Refuse a keyring whose current key is older than one this process has already signed with.

    A database writer can delete the newest rows and put back a key's row from before its
    retirement: its seal is genuine, so ``open_keys`` cannot tell. The newest current key a
    process has used is kept outside the store (``tether.localstate``), and a current key older
    than it is refused, across restarts. Raises ``KeyRejected``; records a newer key.
    """
    current = ring.current
    seen = state.get("current_signing_key")
    if isinstance(seen, list) and len(seen) == 2 and current.created_at < int(seen[0]):
        raise KeyRejected(
            f"the current signing key `{current.kid}` (created {current.created_at}) is older than `{seen[1]}`"
            f" (created {seen[0]}), which this STS has signed with: a key row was removed or restored;"
            f" if that was intended, delete `{state.path}`"
        )
    if not isinstance(seen, list) or len(seen) != 2 or current.created_at > int(seen[0]) or seen[1] != current.kid:
        state.put("current_signing_key", [current.created_at, current.kid])


async def rotate_signing_key(store: Store, master: bytes, *, alg: str, now: int, max_token_lifetime: int) -> StoredKey:
    """Add a new current key; the old one stays published until its last token expires.

    The previous current key is re-sealed with its retired state in the same store step,
    so its retirement is as authenticated as its key. The new key is always created after
    every key it replaces, whatever this host's clock says: replicas refuse a current key
    older than one they have seen (``check_not_older``), so a rotation from a host whose
    clock lags would otherwise lock every STS out of the new key.
    """
    rows = await store.signing_keys(now=now)
    created = max([now, *(row.created_at + 1 for row in rows)])
    stored = new_stored_key(master, alg=alg, now=created)
    retired = []
    for row in rows:
        if row.retired_at is None:
            private = unseal(master, row.sealed_private, aad=issuer_key_aad(row))
            state = replace(row, retired_at=now, not_after=now + max_token_lifetime + 60)
            retired.append(replace(state, sealed_private=seal(master, private, aad=issuer_key_aad(state))))
    await store.add_signing_key(stored, retired=retired)
    return stored
