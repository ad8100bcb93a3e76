"""Secrets at rest (``tether.keys.sealed``): AES-256-GCM envelope under the master key, purpose binding, master-key loading."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from tether.errors import ConfigError
from tether.keys.sealed import (
    MASTER_KEY_ENV,
    SealError,
    create_master_key,
    derive_key,
    key_id,
    load_master_key,
    rewrap,
    seal,
    unseal,
)

MASTER = bytes(range(32))
OTHER = bytes(range(100, 132))
AAD = b"issuer-key\x00kid-1"
SECRET = b'{"kty":"EC","d":"very-secret"}'


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture
def sealed() -> bytes:
    blob = seal(MASTER, SECRET, aad=AAD)
    assert unseal(MASTER, blob, aad=AAD) == SECRET  # positive control for every test using the fixture
    return blob


def _edit(blob: bytes, **changes: object) -> bytes:
    data = json.loads(blob)
    data.update(changes)
    return json.dumps(data).encode()


def _flip(text: str, index: int = 0) -> str:
    raw = bytearray(unb64(text))
    raw[index] ^= 0x01
    return b64u(bytes(raw))


# ---------------------------------------------------------------------------------------------
# seal / unseal
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "plaintext",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"x", id="one-byte"),
        pytest.param(SECRET, id="jwk"),
        pytest.param(os.urandom(4096), id="4k-random"),
    ],
)
def test_round_trip(plaintext: bytes) -> None:
    assert unseal(MASTER, seal(MASTER, plaintext, aad=AAD), aad=AAD) == plaintext


def test_sealed_blob_does_not_contain_plaintext_and_is_randomised(sealed: bytes) -> None:
    assert b"very-secret" not in sealed
    assert b64u(SECRET).encode() not in sealed
    again = seal(MASTER, SECRET, aad=AAD)
    assert again != sealed
    assert json.loads(again)["ct"] != json.loads(sealed)["ct"]
    assert json.loads(sealed)["kek"] == key_id(MASTER)


def test_wrong_master_key_refused(sealed: bytes) -> None:
    with pytest.raises(SealError):
        unseal(OTHER, sealed, aad=AAD)


def test_wrong_master_key_with_forged_kek_field_refused(sealed: bytes) -> None:
    with pytest.raises(SealError):
        unseal(OTHER, _edit(sealed, kek=key_id(OTHER)), aad=AAD)


@pytest.mark.parametrize(
    "aad",
    [
        pytest.param(b"issuer-key\x00kid-2", id="other-kid"),
        pytest.param(b"issuer-key\x00kid-1\x00", id="suffix"),
        pytest.param(b"", id="empty"),
        pytest.param(b"vault\x00kid-1", id="other-purpose"),
        pytest.param(AAD.upper(), id="case"),
    ],
)
def test_wrong_aad_purpose_binding_refused(sealed: bytes, aad: bytes) -> None:
    with pytest.raises(SealError):
        unseal(MASTER, sealed, aad=aad)


@pytest.mark.parametrize("field", ["ct", "n", "wdek", "wn"])
@pytest.mark.parametrize("position", [0, -1])
def test_tampered_blob_refused(sealed: bytes, field: str, position: int) -> None:
    data = json.loads(sealed)
    with pytest.raises(SealError):
        unseal(MASTER, _edit(sealed, **{field: _flip(data[field], position)}), aad=AAD)


@pytest.mark.parametrize("field", ["ct", "n", "wdek", "wn"])
def test_truncated_or_missing_field_refused(sealed: bytes, field: str) -> None:
    data = json.loads(sealed)
    with pytest.raises(SealError):
        unseal(MASTER, _edit(sealed, **{field: data[field][:-4]}), aad=AAD)
    del data[field]
    with pytest.raises(SealError):
        unseal(MASTER, json.dumps(data).encode(), aad=AAD)


def test_ciphertext_swapped_between_blobs_refused(sealed: bytes) -> None:
    other = seal(MASTER, b"another secret", aad=AAD)
    with pytest.raises(SealError):
        unseal(MASTER, _edit(sealed, ct=json.loads(other)["ct"]), aad=AAD)


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_unknown_version_refused(sealed: bytes, version: object) -> None:
    with pytest.raises(SealError):
        unseal(MASTER, _edit(sealed, v=version), aad=AAD)


@pytest.mark.parametrize("blob", [b"", b"not json", b"[]", b'"string"', b"{}", b"null"], ids=repr)
def test_not_a_sealed_blob_refused(blob: bytes) -> None:
    with pytest.raises(SealError):
        unseal(MASTER, blob, aad=AAD)


# ---------------------------------------------------------------------------------------------
# rewrap (master-key rotation)
# ---------------------------------------------------------------------------------------------


def test_rewrap_keeps_plaintext_and_changes_kek(sealed: bytes) -> None:
    rewrapped = rewrap(MASTER, OTHER, sealed, aad=AAD)
    assert unseal(OTHER, rewrapped, aad=AAD) == SECRET
    before, after = json.loads(sealed), json.loads(rewrapped)
    assert (before["kek"], after["kek"]) == (key_id(MASTER), key_id(OTHER))
    assert after["ct"] == before["ct"] and after["n"] == before["n"]  # the value itself is not re-encrypted
    assert after["wdek"] != before["wdek"]
    with pytest.raises(SealError):
        unseal(MASTER, rewrapped, aad=AAD)


def test_rewrap_needs_the_old_key_and_the_right_aad(sealed: bytes) -> None:
    with pytest.raises(SealError):
        rewrap(OTHER, MASTER, sealed, aad=AAD)
    with pytest.raises(SealError):
        rewrap(MASTER, OTHER, sealed, aad=b"issuer-key\x00kid-2")


def test_rewrap_keeps_purpose_binding(sealed: bytes) -> None:
    rewrapped = rewrap(MASTER, OTHER, sealed, aad=AAD)
    with pytest.raises(SealError):
        unseal(OTHER, rewrapped, aad=b"issuer-key\x00kid-2")


# ---------------------------------------------------------------------------------------------
# derive_key
# ---------------------------------------------------------------------------------------------


def test_derive_key_per_purpose() -> None:
    nonce_key = derive_key(MASTER, "dpop-nonce")
    assert len(nonce_key) == 32
    assert derive_key(MASTER, "dpop-nonce") == nonce_key
    assert len({nonce_key, derive_key(MASTER, "audit"), derive_key(OTHER, "dpop-nonce"), MASTER}) == 4


# ---------------------------------------------------------------------------------------------
# load_master_key / create_master_key
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MASTER_KEY_ENV, raising=False)


def _write_key(path: Path, key: bytes, mode: int) -> Path:
    path.write_text(b64u(key) + "\n", encoding="ascii")
    path.chmod(mode)
    return path


@pytest.mark.usefixtures("no_env")
def test_key_file_0600_accepted(tmp_path: Path) -> None:
    assert load_master_key(_write_key(tmp_path / "master.key", MASTER, 0o600)) == MASTER
    assert load_master_key(_write_key(tmp_path / "ro.key", MASTER, 0o400)) == MASTER


@pytest.mark.usefixtures("no_env")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606, 0o777, 0o610, 0o601], ids=oct)
def test_key_file_readable_by_others_refused(tmp_path: Path, mode: int) -> None:
    path = _write_key(tmp_path / "master.key", MASTER, 0o600)
    assert load_master_key(path) == MASTER
    path.chmod(mode)
    with pytest.raises(ConfigError) as info:
        load_master_key(path)
    assert info.value.key == "master_key"
    assert "600" in info.value.problem


@pytest.mark.usefixtures("no_env")
def test_missing_key_file_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_master_key(tmp_path / "absent.key")
    assert info.value.key == "master_key"
    assert MASTER_KEY_ENV in info.value.problem


@pytest.mark.usefixtures("no_env")
@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_key_file_wrong_length_refused(tmp_path: Path, length: int) -> None:
    with pytest.raises(ConfigError) as info:
        load_master_key(_write_key(tmp_path / "master.key", b"k" * length, 0o600))
    assert info.value.key == "master_key"


@pytest.mark.usefixtures("no_env")
def test_key_file_not_base64_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text("not base64 at all!\n", encoding="ascii")
    path.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        load_master_key(path)
    assert info.value.key == "master_key"


def test_env_master_key_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write_key(tmp_path / "master.key", MASTER, 0o644)  # would be refused on its own
    monkeypatch.setenv(MASTER_KEY_ENV, b64u(OTHER))
    assert load_master_key(path) == OTHER
    assert load_master_key(tmp_path / "absent.key") == OTHER


@pytest.mark.parametrize("length", [0, 16, 31, 33])
def test_env_master_key_wrong_length_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, length: int) -> None:
    monkeypatch.setenv(MASTER_KEY_ENV, b64u(b"k" * length) or "AA")
    with pytest.raises(ConfigError) as info:
        load_master_key(tmp_path / "absent.key")
    assert info.value.key == MASTER_KEY_ENV


@pytest.mark.usefixtures("no_env")
def test_create_master_key_writes_0600_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "master.key"
    key = create_master_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_master_key(path) == key
    with pytest.raises(FileExistsError):
        create_master_key(path)
    assert load_master_key(path) == key
