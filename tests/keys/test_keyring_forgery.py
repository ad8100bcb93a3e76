"""KEY-01 end to end: a key a database writer put in the store verifies nothing, anywhere.

The attack from the review: rewrite a retired signing key's public key (keeping its
``kid``) and push its expiry out, then sign tokens with one's own private key. Before
the fix the STS published the key in ``/jwks`` and accepted the tokens. The positive
control on the same deployment: a token signed by an untouched retired key still works.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from helpers import AGENT, Client, create_task, make_deployment, serving
from tether.clock import ManualClock
from tether.config import Config
from tether.keys.keyring import generate_key, public_jwk, rotate_signing_key
from tether.keys.sealed import load_master_key
from tether.rules.jws import sign_compact
from tether.store.open import open_store
from tether.sts.bootstrap import build_sts

AUD = "http://127.0.0.1:9001"


def rotate(config: Config) -> None:
    async def run() -> None:
        store = await open_store(config)
        try:
            await rotate_signing_key(store, load_master_key(config.master_key_file), alg="ES256",
                                     now=int(ManualClock().now()), max_token_lifetime=900)  # fmt: skip
        finally:
            await store.aclose()

    asyncio.run(run())


def write_row(config: Config, sql: str, args: tuple[Any, ...]) -> None:
    """Write the store directly, as someone with database access but no master key."""
    if config.store == "postgres":
        with psycopg.connect(config.postgres.dsn, autocommit=True) as conn:
            conn.execute(sql.replace("?", "%s"), args)
        return
    with sqlite3.connect(config.data_dir / "tether.db") as conn:
        conn.execute(sql, args)


def segment(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def test_key01_forged_key_in_a_retired_row_is_not_published_and_its_tokens_are_refused(tmp_path: Path) -> None:
    config = make_deployment(tmp_path)
    clock = ManualClock()
    with serving(config, clock) as sts:
        task = create_task(sts, audiences=[AUD], scopes=["wiki:read"])
        agent = Client(sts)
        agent_key = agent.key
        first = agent.session(task["id"]).json()["access_token"]  # signed by key 1
    rotate(config)
    with serving(config, clock) as sts:
        second = Client(sts, agent_key).session(task["id"]).json()["access_token"]  # signed by key 2
    rotate(config)  # key 3 current; keys 1 and 2 retired, still published
    victim_kid = segment(first, 0)["kid"]
    attacker = generate_key("ES256")
    forged_jwk = public_jwk(attacker, "ES256") | {"kid": victim_kid}
    write_row(config, "UPDATE signing_keys SET public_jwk = ?, not_after = ? WHERE kid = ?",
              (json.dumps(forged_jwk), int(clock.now()) + 10**7, victim_kid))  # fmt: skip
    claims = segment(first, 1) | {"scope": "wiki:read", "exp": int(clock.now()) + 800}
    forged = sign_compact({"typ": "at+jwt", "alg": "ES256", "kid": victim_kid}, claims, attacker, "ES256")

    with serving(config, clock) as sts:
        jwks = httpx.get(sts.url + "/jwks").json()
        kids = {k["kid"] for k in jwks["keys"]}
        assert segment(second, 0)["kid"] in kids, "positive control: an untouched retired key stays published"
        assert victim_kid not in kids and forged_jwk["x"] not in json.dumps(jwks)
        client = Client(sts, agent_key)
        ok = client.hop(second, AUD, scope="wiki:read")
        assert ok.status_code == 200, ok.text  # positive control: its tokens still verify
        refused = client.hop(forged, AUD, scope="wiki:read")
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant", refused.text
        audit = sts.last_audit("token.refused")
        assert audit.error == "invalid_grant" and audit.principal is None


def test_key01_sts_still_starts_when_a_retired_row_is_tampered(tmp_path: Path) -> None:
    """Fail closed for the tampered key only: the deployment keeps serving with its current key."""
    config = make_deployment(tmp_path)
    rotate(config)
    write_row(config, "UPDATE signing_keys SET not_after = ? WHERE retired_at IS NOT NULL", (2**40,))
    with serving(config, ManualClock()) as sts:
        assert len(httpx.get(sts.url + "/jwks").json()["keys"]) == 1
        create_task(sts, agent=AGENT, audiences=[AUD])


def test_key01_a_store_sealed_by_an_older_release_needs_the_explicit_upgrade(tmp_path: Path) -> None:
    """The STS never re-seals on its own (a writer who could trigger that could launder rows it put back):
    it refuses to start and names the command; ``tether keys upgrade`` re-seals, then it starts."""
    import asyncio

    from typer.testing import CliRunner

    from tether.cli.main import app
    from tether.errors import ConfigError
    from tether.keys.keyring import legacy_issuer_key_aad
    from tether.keys.sealed import seal

    config = make_deployment(tmp_path)
    key = generate_key("ES256")
    jwk = public_jwk(key, "ES256")
    sealed = seal(load_master_key(config.master_key_file), json.dumps(key.as_dict(private=True)).encode(),
                  aad=legacy_issuer_key_aad(jwk["kid"]))  # fmt: skip
    write_row(config, "UPDATE signing_keys SET kid = ?, public_jwk = ?, sealed_private = ?",
              (jwk["kid"], json.dumps(jwk), sealed))  # fmt: skip
    with pytest.raises(ConfigError, match="tether keys upgrade"):
        asyncio.run(build_sts(config, clock=ManualClock()).start())
    result = CliRunner().invoke(app, ["keys", "upgrade", "--config", str(config.path)])
    assert result.exit_code == 0 and jwk["kid"] in result.stdout.replace("\n", ""), result.output
    with serving(config, ManualClock()) as sts:
        assert jwk["kid"] in {k["kid"] for k in httpx.get(sts.url + "/jwks").json()["keys"]}
        create_task(sts, agent=AGENT, audiences=[AUD])  # the upgraded key signs
