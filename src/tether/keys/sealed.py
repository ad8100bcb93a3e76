"""Secrets at rest: AES-256-GCM envelope encryption under the master key.

Each value gets its own data key (DEK); the DEK is wrapped by the master key (KEK).
Rotating the master key re-wraps DEKs without touching the values. The associated
data binds a sealed blob to its purpose (``b"issuer-key:<kid>"``), so a blob cannot
be moved to another slot. The master key comes from ``TETHER_MASTER_KEY`` or a file
that only its owner can read (mode 0600).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tether.errors import ConfigError, TetherError

__all__ = [
    "MASTER_KEY_ENV",
    "SealError",
    "create_master_key",
    "derive_key",
    "legacy_vault_aad",
    "load_master_key",
    "rewrap",
    "seal",
    "unseal",
    "vault_aad",
]

MASTER_KEY_ENV = "TETHER_MASTER_KEY"
_KEY_LEN = 32


class SealError(TetherError):
    """A sealed blob could not be opened: wrong master key, wrong purpose or tampering."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id(master: bytes) -> str:
    """A short public fingerprint of a master key (which KEK wrapped a blob)."""
    return hashlib.sha256(b"tether-kek\x00" + master).hexdigest()[:16]


def seal(master: bytes, plaintext: bytes, *, aad: bytes) -> bytes:
    dek = AESGCM.generate_key(bit_length=256)
    n1, n2 = os.urandom(12), os.urandom(12)
    blob = {
        "v": 1,
        "kek": key_id(master),
        "n": _b64(n1),
        "ct": _b64(AESGCM(dek).encrypt(n1, plaintext, aad)),
        "wn": _b64(n2),
        "wdek": _b64(AESGCM(master).encrypt(n2, dek, b"dek\x00" + aad)),
    }
    return json.dumps(blob, sort_keys=True).encode()


def _open_dek(master: bytes, blob: dict[str, object], aad: bytes) -> bytes:
    if blob.get("v") != 1 or blob.get("kek") != key_id(master):
        raise SealError("sealed with a different master key")
    try:
        return AESGCM(master).decrypt(_unb64(str(blob["wn"])), _unb64(str(blob["wdek"])), b"dek\x00" + aad)
    except (InvalidTag, KeyError, ValueError, binascii.Error) as exc:
        raise SealError("sealed data key cannot be opened") from exc


def _parse(sealed: bytes) -> dict[str, object]:
    try:
        blob = json.loads(sealed)
    except ValueError as exc:
        raise SealError("not a sealed blob") from exc
    if not isinstance(blob, dict):
        raise SealError("not a sealed blob")
    return blob


def unseal(master: bytes, sealed: bytes, *, aad: bytes) -> bytes:
    blob = _parse(sealed)
    dek = _open_dek(master, blob, aad)
    try:
        return AESGCM(dek).decrypt(_unb64(str(blob["n"])), _unb64(str(blob["ct"])), aad)
    except (InvalidTag, KeyError, ValueError, binascii.Error) as exc:
        raise SealError("sealed value cannot be opened") from exc


def rewrap(old_master: bytes, new_master: bytes, sealed: bytes, *, aad: bytes) -> bytes:
    """Re-wrap the data key under ``new_master``; the ciphertext of the value is unchanged."""
    blob = _parse(sealed)
    dek = _open_dek(old_master, blob, aad)
    n2 = os.urandom(12)
    blob.update(
        {"kek": key_id(new_master), "wn": _b64(n2), "wdek": _b64(AESGCM(new_master).encrypt(n2, dek, b"dek\x00" + aad))}
    )
    return json.dumps(blob, sort_keys=True).encode()


def vault_aad(name: str, *, created_at: float, version: int) -> bytes:
    """The associated data of a vault entry: its name, when it was created and its version.

    A value sealed for version N of an entry opens only as version N of that entry, so a
    database writer cannot put an old (rotated-out) value back without it being refused.
    """
    return b"vault/2\x00" + f"{name}\x00{created_at!r}\x00{version}".encode()


def legacy_vault_aad(name: str) -> bytes:
    """Entries sealed before the version was bound (name only); re-sealed at start (``keys.legacy``)."""
    return b"vault\x00" + name.encode()


def derive_key(master: bytes, purpose: str) -> bytes:
    """A purpose-specific key (HKDF-SHA256), e.g. for DPoP nonces shared by replicas."""
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=b"tether\x00" + purpose.encode()).derive(master)


def _decode_master(text: str, source: str) -> bytes:
    try:
        raw = _unb64(text.strip())
    except (ValueError, binascii.Error) as exc:
        raise ConfigError(source, "master key is not base64url") from exc
    if len(raw) != _KEY_LEN:
        raise ConfigError(source, f"master key must be {_KEY_LEN} bytes, got {len(raw)}")
    return raw


def load_master_key(path: Path) -> bytes:
    """``TETHER_MASTER_KEY`` if set, else the key file, refused if group or others can read it."""
    env = os.environ.get(MASTER_KEY_ENV)
    if env:
        return _decode_master(env, MASTER_KEY_ENV)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise ConfigError("master_key", f"`{path}` does not exist; run tether init or set {MASTER_KEY_ENV}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError("master_key", f"`{path}` must be readable by its owner only (chmod 600)")
    return _decode_master(path.read_text(encoding="ascii"), "master_key")


def create_master_key(path: Path) -> bytes:
    """Write a fresh random master key to ``path`` with mode 0600 (never overwrites)."""
    key = os.urandom(_KEY_LEN)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(_b64(key) + "\n")
    return key
