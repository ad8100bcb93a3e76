"""KEY-01 / AUD-02: ``tether audit verify`` against the live store trusts only keys the master key vouches for.

A database writer appends a checkpoint signed with its own key and adds that key's
public part to ``signing_keys``. Before the fix, ``audit verify`` took the store's
word for the key and reported the chain as signed.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from typer.testing import CliRunner

from helpers import make_deployment
from tether.audit.chain import AuditEvent
from tether.audit.checkpoint import CHECKPOINT_TYP, checkpoint_claims, checkpoint_event
from tether.cli.main import app
from tether.config import Config
from tether.keys.keyring import generate_key, public_jwk
from tether.rules.jws import sign_compact
from tether.store.open import open_store
from tether.store.records import StoredKey


def forge_checkpoint(config: Config, *, with_key_row: bool) -> None:
    async def run() -> None:
        store = await open_store(config)
        try:
            head = await store.append_audit(AuditEvent(kind="task.created", outcome="ok"), now=time.time())
            key = generate_key("ES256")
            jwk = public_jwk(key, "ES256")
            claims = checkpoint_claims(issuer=config.issuer, seq=head.seq, hash=head.hash, iat=int(time.time()))
            jws = sign_compact({"typ": CHECKPOINT_TYP, "alg": "ES256", "kid": jwk["kid"]}, claims, key, "ES256")
            if with_key_row:  # a row as the store would hold it; the seal is not the attacker's to make
                row = StoredKey(kid=jwk["kid"], alg="ES256", public_jwk=jwk, sealed_private=b'{"v": 1}',
                                created_at=int(time.time()) - 10, retired_at=int(time.time()) - 5, not_after=2**40)  # fmt: skip
                await _insert_key(config, row)
            await store.append_audit(checkpoint_event(seq=head.seq, hash=head.hash, jws=jws), now=claims["iat"])
        finally:
            await store.aclose()

    asyncio.run(run())


async def _insert_key(config: Config, row: StoredKey) -> None:
    args = (row.kid, row.alg, json.dumps(row.public_jwk), row.sealed_private, row.created_at, row.retired_at, row.not_after)
    sql = "INSERT INTO signing_keys (kid, alg, public_jwk, sealed_private, created_at, retired_at, not_after)"
    if config.store == "postgres":
        import psycopg

        with psycopg.connect(config.postgres.dsn, autocommit=True) as conn:
            conn.execute(sql + " VALUES (%s, %s, %s, %s, %s, %s, %s)", args)
        return
    import sqlite3

    with sqlite3.connect(config.data_dir / "tether.db") as conn:
        conn.execute(sql + " VALUES (?, ?, ?, ?, ?, ?, ?)", args)


def verify(config: Config) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["audit", "verify", "--config", str(config.path)], catch_exceptions=False)
    return result.exit_code, result.output


def test_key01_checkpoint_signed_by_a_key_the_store_alone_vouches_for_is_not_trusted(tmp_path: Path) -> None:
    config = make_deployment(tmp_path)
    forge_checkpoint(config, with_key_row=True)
    code, output = verify(config)
    assert "signed: records up to" not in output, output
    assert code != 0, output


def test_key01_positive_control_genuine_checkpoint_verifies(tmp_path: Path) -> None:
    """The same deployment shape with a checkpoint the STS's own key signed: reported as signed."""
    config = make_deployment(tmp_path)

    async def run() -> None:
        from tether.keys.keyring import load_keyring
        from tether.keys.sealed import load_master_key

        store = await open_store(config)
        try:
            ring = await load_keyring(store, load_master_key(config.master_key_file), now=time.time())
            head = await store.append_audit(AuditEvent(kind="task.created", outcome="ok"), now=time.time())
            claims = checkpoint_claims(issuer=config.issuer, seq=head.seq, hash=head.hash, iat=int(time.time()))
            jws = ring.sign(claims, typ=CHECKPOINT_TYP)
            await store.append_audit(checkpoint_event(seq=head.seq, hash=head.hash, jws=jws), now=claims["iat"])
        finally:
            await store.aclose()

    asyncio.run(run())
    code, output = verify(config)
    assert code == 0 and "signed: records up to" in output, output
