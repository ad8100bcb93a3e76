"""``tether keys rotate|list|upgrade`` — operate on the store directly (needs the master key)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tether.cli.common import config_or_exit, errors_to_exit
from tether.cli.output import console, print_json, print_table

if TYPE_CHECKING:
    from tether.store.records import StoredKey

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, help="Issuer signing keys.")
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="tether.toml")]


@app.command()
def rotate(
    alg: Annotated[str, typer.Option(help="ES256 or EdDSA")] = "ES256",
    config: ConfigOpt = None,
) -> None:
    """Add a new signing key; the JWKS keeps the old one until its last token has expired."""
    import asyncio

    from tether.keys.keyring import SIGNING_ALGS, rotate_signing_key
    from tether.keys.sealed import load_master_key
    from tether.store.open import open_store
    from tether.sts.settings import StsSettings

    if alg not in SIGNING_ALGS:
        raise typer.BadParameter(f"must be one of {', '.join(SIGNING_ALGS)}", param_hint="--alg")
    cfg = config_or_exit(config)
    lifetime = StsSettings.from_config(cfg).max_token_lifetime

    async def run() -> StoredKey:
        store = await open_store(cfg)
        try:
            return await rotate_signing_key(store, master, alg=alg, now=int(time.time()), max_token_lifetime=lifetime)
        finally:
            await store.aclose()

    with errors_to_exit():
        master = load_master_key(cfg.master_key_file)
        stored = asyncio.run(run())
    console.print(f"new signing key {stored.kid} ({alg}); the previous key stays published for {lifetime + 60}s")


@app.command()
def upgrade(config: ConfigOpt = None) -> None:
    """Once, after upgrading from a release that sealed keys and vault entries without their state.

    Re-seals every signing key and vault entry of such a store with its state bound (taking the
    state as stored now); a store with any value sealed the new way is left alone: a legacy value
    beside it can only be an old row put back. Never run automatically.
    """
    import asyncio

    from tether.keys.legacy import reseal_legacy
    from tether.keys.sealed import load_master_key
    from tether.store.open import open_store

    cfg = config_or_exit(config)

    async def run() -> list[str]:
        store = await open_store(cfg)
        try:
            return await reseal_legacy(store, master, now=time.time())
        finally:
            await store.aclose()

    with errors_to_exit():
        master = load_master_key(cfg.master_key_file)
        upgraded = asyncio.run(run())
    console.print(f"re-sealed with their state bound: {', '.join(upgraded)}" if upgraded else "nothing to upgrade")


@app.command("list")
def list_(config: ConfigOpt = None, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List published signing keys (public parts only)."""
    import asyncio

    from tether.store.open import open_store

    cfg = config_or_exit(config)

    async def run() -> list[StoredKey]:
        store = await open_store(cfg)
        try:
            return await store.signing_keys(now=time.time())
        finally:
            await store.aclose()

    with errors_to_exit():
        keys = asyncio.run(run())
    rows = [(k.kid, k.alg, k.created_at, k.retired_at, k.not_after) for k in keys]
    if json_out:
        print_json([dict(zip(("kid", "alg", "created_at", "retired_at", "not_after"), r, strict=True)) for r in rows])
    else:
        print_table("signing keys", ["kid", "alg", "created_at", "retired_at", "not_after"], rows)
