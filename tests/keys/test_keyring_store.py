"""KEY-01: a database writer without the master key cannot publish, revive or extend a signing key.

Each test writes the store as the operator would (``rotate_signing_key`` with the master
key), then rewrites rows the way an attacker with only database access can (raw SQL on
SQLite, or on PostgreSQL), and loads the keyring again. Run on both stores.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from services import Writer, run_tampered
from tether.audit.chain import AuditEvent
from tether.keys.keyring import (
    KeyRejected,
    check_not_older,
    generate_key,
    legacy_issuer_key_aad,
    load_keyring,
    public_jwk,
    rotate_signing_key,
)
from tether.keys.legacy import reseal_legacy
from tether.keys.sealed import seal
from tether.localstate import LocalState
from tether.store.errors import Conflict
from tether.store.protocol import Store

NOW = 1_800_000_000
LIFETIME = 300
MASTER = secrets.token_bytes(32)
BACKENDS = ["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.redis])]


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def two_keys(store: Store) -> tuple[str, str]:
    """A retired key (``old``) still published, and the current key."""
    old = await rotate_signing_key(store, MASTER, alg="ES256", now=NOW, max_token_lifetime=LIFETIME)
    new = await rotate_signing_key(store, MASTER, alg="ES256", now=NOW + 10, max_token_lifetime=LIFETIME)
    return old.kid, new.kid


def published(ring: Any) -> dict[str, dict[str, Any]]:
    return {k["kid"]: k for k in ring.jwks(now=NOW + 20)["keys"]}


def test_key01_positive_control_rotation_publishes_both_keys(kind: str, tmp_path: Path) -> None:
    async def body(store: Store, sql: Writer) -> None:
        old, new = await two_keys(store)
        ring = await load_keyring(store, MASTER, now=NOW + 20)
        assert ring.current.kid == new
        assert set(published(ring)) == {old, new}
        # the published key is the one derived from the sealed private key
        assert published(ring)[old] == public_jwk(ring.public_key(old, now=NOW + 20).private, "ES256")  # type: ignore[union-attr]  # `old` is in the ring

    run_tampered(kind, tmp_path, body)


def test_key01_swapped_public_key_of_a_retired_row_is_refused(kind: str, tmp_path: Path) -> None:
    async def body(store: Store, sql: Writer) -> None:
        old, new = await two_keys(store)
        attacker = public_jwk(generate_key("ES256"), "ES256") | {"kid": old}
        sql("UPDATE signing_keys SET public_jwk = ?, not_after = ? WHERE kid = ?", (json.dumps(attacker), NOW + 10**6, old))
        ring = await load_keyring(store, MASTER, now=NOW + 20)
        assert set(published(ring)) == {new}, "the tampered key must not be published"
        assert ring.public_key(old, now=NOW + 20) is None
        assert attacker["x"] not in json.dumps(ring.jwks(now=NOW + 20))

    run_tampered(kind, tmp_path, body)


def test_key01_public_key_swapped_alone_is_refused(kind: str, tmp_path: Path) -> None:
    async def body(store: Store, sql: Writer) -> None:
        old, new = await two_keys(store)
        attacker = public_jwk(generate_key("ES256"), "ES256") | {"kid": old}
        sql("UPDATE signing_keys SET public_jwk = ? WHERE kid = ?", (json.dumps(attacker), old))
        ring = await load_keyring(store, MASTER, now=NOW + 20)
        assert set(published(ring)) == {new}

    run_tampered(kind, tmp_path, body)


@pytest.mark.parametrize(
    ("column", "value"),
    [("not_after", NOW + 10**6), ("not_after", None), ("retired_at", NOW + 5), ("created_at", NOW + 100)],
)
def test_key01_lifecycle_state_edited_in_the_row_is_refused(kind: str, tmp_path: Path, column: str, value: Any) -> None:
    async def body(store: Store, sql: Writer) -> None:
        old, new = await two_keys(store)
        sql(f"UPDATE signing_keys SET {column} = ? WHERE kid = ?", (value, old))  # noqa: S608 - column from the parameter list
        ring = await load_keyring(store, MASTER, now=NOW + 20)
        assert set(published(ring)) == {new}

    run_tampered(kind, tmp_path, body)


def test_key01_retired_key_made_current_again_is_refused(kind: str, tmp_path: Path) -> None:
    async def body(store: Store, sql: Writer) -> None:
        old, new = await two_keys(store)
        sql("UPDATE signing_keys SET retired_at = NULL, not_after = NULL WHERE kid = ?", (old,))
        ring = await load_keyring(store, MASTER, now=NOW + 20)
        assert ring.current.kid == new and set(published(ring)) == {new}

    run_tampered(kind, tmp_path, body)


def test_key01_restored_pre_rotation_row_cannot_become_current(kind: str, tmp_path: Path) -> None:
    """A copy of the row taken while the old key was current opens, but a newer current key exists."""

    async def body(store: Store, sql: Writer) -> None:
        first = await rotate_signing_key(store, MASTER, alg="ES256", now=NOW, max_token_lifetime=LIFETIME)
        new = await rotate_signing_key(store, MASTER, alg="ES256", now=NOW + 10, max_token_lifetime=LIFETIME)
        sql("UPDATE signing_keys SET retired_at = NULL, not_after = NULL, sealed_private = ? WHERE kid = ?",
            (first.sealed_private, first.kid))  # fmt: skip
        ring = await load_keyring(store, MASTER, now=NOW + 20)
        assert ring.current.kid == new.kid and set(published(ring)) == {new.kid}

    run_tampered(kind, tmp_path, body)


def test_key01_sealed_blob_moved_to_another_row_is_refused(kind: str, tmp_path: Path) -> None:
    async def body(store: Store, sql: Writer) -> None:
        old, new = await two_keys(store)
        current = next(k for k in await store.signing_keys(now=NOW + 20) if k.kid == new)
        sql("UPDATE signing_keys SET sealed_private = ? WHERE kid = ?", (current.sealed_private, old))
        ring = await load_keyring(store, MASTER, now=NOW + 20)
        assert set(published(ring)) == {new}

    run_tampered(kind, tmp_path, body)


def test_key01_current_key_tampered_fails_closed(kind: str, tmp_path: Path) -> None:
    async def body(store: Store, sql: Writer) -> None:
        _, new = await two_keys(store)
        attacker = public_jwk(generate_key("ES256"), "ES256") | {"kid": new}
        sql("UPDATE signing_keys SET public_jwk = ? WHERE kid = ?", (json.dumps(attacker), new))
        with pytest.raises(LookupError):
            await load_keyring(store, MASTER, now=NOW + 20)

    run_tampered(kind, tmp_path, body)


def test_key01_rotation_refuses_when_the_current_key_changed_underneath(kind: str, tmp_path: Path) -> None:
    async def body(store: Store, sql: Writer) -> None:
        await rotate_signing_key(store, MASTER, alg="ES256", now=NOW, max_token_lifetime=LIFETIME)
        second = await rotate_signing_key(store, MASTER, alg="ES256", now=NOW + 1, max_token_lifetime=LIFETIME)
        from tether.keys.keyring import new_stored_key

        with pytest.raises(Conflict):  # says nothing about the current key: it is left current
            await store.add_signing_key(new_stored_key(MASTER, alg="ES256", now=NOW + 2), retired=[])
        ring = await load_keyring(store, MASTER, now=NOW + 3)
        assert ring.current.kid == second.kid

    run_tampered(kind, tmp_path, body)


def legacy_row(sql: Writer, kid: str) -> str:
    """Replace row ``kid`` with a key sealed as an older release sealed it (AAD binds the kid only)."""
    key = generate_key("ES256")
    jwk = public_jwk(key, "ES256")
    sealed = seal(MASTER, json.dumps(key.as_dict(private=True)).encode(), aad=legacy_issuer_key_aad(jwk["kid"]))
    sql("UPDATE signing_keys SET kid = ?, public_jwk = ?, sealed_private = ? WHERE kid = ?",
        (jwk["kid"], json.dumps(jwk), sealed, kid))  # fmt: skip
    return str(jwk["kid"])


def test_key01_legacy_keys_are_resealed_once_then_bound(kind: str, tmp_path: Path) -> None:
    """A store sealed entirely by an older release keeps working after the upgrade, and is bound from then on."""

    async def body(store: Store, sql: Writer) -> None:
        retired, current = await two_keys(store)
        old, new = legacy_row(sql, retired), legacy_row(sql, current)
        with pytest.raises(KeyRejected):  # nothing opens before the upgrade
            await load_keyring(store, MASTER, now=NOW + 20)
        assert sorted(await reseal_legacy(store, MASTER, now=NOW + 20)) == sorted([f"signing key {old}", f"signing key {new}"])
        assert set(published(await load_keyring(store, MASTER, now=NOW + 20))) == {old, new}
        assert await reseal_legacy(store, MASTER, now=NOW + 20) == []
        sql("UPDATE signing_keys SET not_after = ? WHERE kid = ?", (NOW + 10**6, old))
        assert set(published(await load_keyring(store, MASTER, now=NOW + 20))) == {new}

    run_tampered(kind, tmp_path, body)


def test_key01_a_legacy_row_beside_bound_ones_is_not_resealed(kind: str, tmp_path: Path) -> None:
    """Once the store is upgraded, a legacy-sealed row can only be an old backup put back with its
    state edited at will: re-sealing it would launder the edit, so it stays refused."""

    async def body(store: Store, sql: Writer) -> None:
        retired, new = await two_keys(store)
        old = legacy_row(sql, retired)
        sql("UPDATE signing_keys SET not_after = ? WHERE kid = ?", (NOW + 10**6, old))
        assert await reseal_legacy(store, MASTER, now=NOW + 20) == []
        assert set(published(await load_keyring(store, MASTER, now=NOW + 20))) == {new}

    run_tampered(kind, tmp_path, body)


def test_key01_rewrap_keeps_keys_opening(kind: str, tmp_path: Path) -> None:
    """``tether master rotate`` re-wraps key blobs under their state-bound AAD (what the CLI's re_seal does)."""
    from tether.keys.keyring import issuer_key_aad
    from tether.keys.sealed import rewrap

    async def body(store: Store, sql: Writer) -> None:
        old, new = await two_keys(store)
        rows = {k.kid: k for k in await store.signing_keys(now=0)}
        other = secrets.token_bytes(32)

        def re_seal(blob_kind: str, ident: str, blob: bytes) -> bytes:
            return rewrap(MASTER, other, blob, aad=issuer_key_aad(rows[ident]))

        await store.rewrap_sealed(re_seal, now=NOW, audit=AuditEvent(kind="master_key.rotated", outcome="ok"))
        assert set(published(await load_keyring(store, other, now=NOW + 20))) == {old, new}

    run_tampered(kind, tmp_path, body)


def test_key01_a_retired_key_restored_after_the_newer_rows_are_deleted_is_refused(kind: str, tmp_path: Path) -> None:
    """The store cannot tell a restored pre-rotation row from a real one (its seal is genuine): a process
    remembers, outside the store, the newest key it signed with and refuses an older current key."""
    state = LocalState(tmp_path / "keyring.state")

    async def body(store: Store, sql: Writer) -> None:
        first = await rotate_signing_key(store, MASTER, alg="ES256", now=NOW, max_token_lifetime=LIFETIME)
        check_not_older(await load_keyring(store, MASTER, now=NOW + 1), state)  # the STS signs with key 1
        second = await rotate_signing_key(store, MASTER, alg="ES256", now=NOW + 10, max_token_lifetime=LIFETIME)
        check_not_older(await load_keyring(store, MASTER, now=NOW + 11), state)  # positive control: a rotation
        sql("DELETE FROM signing_keys", ())
        sql("INSERT INTO signing_keys (kid, alg, public_jwk, sealed_private, created_at) VALUES (?, ?, ?, ?, ?)",
            (first.kid, first.alg, json.dumps(first.public_jwk), first.sealed_private, first.created_at))  # fmt: skip
        ring = await load_keyring(store, MASTER, now=NOW + 20)
        assert ring.current.kid == first.kid, "the store alone cannot tell"
        with pytest.raises(KeyRejected, match=second.kid):
            check_not_older(ring, state)

    run_tampered(kind, tmp_path, body)


def test_key01_a_rotation_from_a_host_whose_clock_lags_still_makes_the_newest_key(kind: str, tmp_path: Path) -> None:
    # replicas refuse a current key older than one they have signed with (check_not_older); a
    # rotation run where the clock is an hour behind must not produce such a key
    async def body(store: Store, sql: Writer) -> None:
        state = LocalState(tmp_path / "keyring.state")
        first = await rotate_signing_key(store, MASTER, alg="ES256", now=NOW, max_token_lifetime=LIFETIME)
        check_not_older(await load_keyring(store, MASTER, now=NOW + 1), state)  # the STS signs with it
        lagging = await rotate_signing_key(store, MASTER, alg="ES256", now=NOW - 3600, max_token_lifetime=LIFETIME)
        assert lagging.created_at > first.created_at
        ring = await load_keyring(store, MASTER, now=NOW + 2)
        check_not_older(ring, state)  # accepted: it is the newest key
        assert ring.current.kid == lagging.kid

    run_tampered(kind, tmp_path, body)
