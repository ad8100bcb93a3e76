"""``tether vault put|rotate|list|delete|oauth-connect`` and ``tether master-key rotate``.

Secret values are read from stdin or a file (``--file``), never from the command line
(argv is visible to every user of the machine and lands in shell history); ``vault
list`` shows names, versions and ages, never values. ``vault oauth-connect`` (``tether.cli.vault_oauth``)
obtains a route's OAuth refresh token through the operator's browser and stores it the same way.

A master key rotation also re-signs the MCP pin files (``tether.mcp.pins``), whose MAC key
is derived from the master key: without it every MCP route would serve nothing afterwards; and
it re-seals the approvals (``rules.approval_seal``) for the same reason: without it every
approval in flight would be refused as tampered.
"""

from __future__ import annotations

import getpass
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tether.cli.common import config_or_exit, dev_domain_name, errors_to_exit, with_store
from tether.cli.output import console, fail, print_json, print_table

if TYPE_CHECKING:
    from tether.model import Approval
    from tether.store.protocol import Store

__all__ = ["app", "master_app"]

app = typer.Typer(no_args_is_help=True, help="Legacy secrets for the gateway, sealed under the master key.")
master_app = typer.Typer(no_args_is_help=True, help="The master key that seals every key and secret at rest.")
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="tether.toml")]
FileOpt = Annotated[Path | None, typer.Option("--file", help="read the value from this file instead of stdin")]
OPERATOR = "operator:cli"


def _read_value(file: Path | None) -> bytes:
    if file is not None:
        data = file.read_bytes()
    elif sys.stdin.isatty():
        first = getpass.getpass("secret value: ")
        if getpass.getpass("again: ") != first:
            fail("the two values differ", code=2)
        data = first.encode()
    else:
        data = sys.stdin.buffer.read()
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        fail("empty secret value", code=2)
    return data


def _put(name: str, file: Path | None, config: Path | None, *, must_exist: bool, stray: list[str] | None) -> None:
    if stray:
        fail("secret values are read from stdin or --file, never from the command line; nothing was stored", code=2)
    from tether.gateway.vault import put_secret
    from tether.keys.sealed import load_master_key

    cfg = config_or_exit(config)
    value = _read_value(file)
    with errors_to_exit():
        master = load_master_key(cfg.master_key_file)

        async def work(store: Store) -> Any:
            if must_exist and await store.vault_get(name) is None:
                fail(f"no vault entry `{name}` to rotate (use vault put)")
            try:
                return await put_secret(store, master, name, value, now=time.time(), actor=OPERATOR)
            except ValueError as exc:
                fail(str(exc), code=2)

        entry = with_store(cfg, work)
    console.print(f"vault entry `{name}` stored (version {entry.version}); the value is not shown")


# Extra command-line words are collected (not echoed back by the parser) and refused: a value
# typed on the command line is visible to every user of the machine and lands in shell history.
_NO_VALUE_ON_ARGV = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command(context_settings=_NO_VALUE_ON_ARGV)
def put(ctx: typer.Context, name: str, file: FileOpt = None, config: ConfigOpt = None) -> None:
    """Store a secret NAME, reading the value from stdin (or --file)."""
    _put(name, file, config, must_exist=False, stray=list(ctx.args))


@app.command(context_settings=_NO_VALUE_ON_ARGV)
def rotate(ctx: typer.Context, name: str, file: FileOpt = None, config: ConfigOpt = None) -> None:
    """Replace the value of an existing secret NAME (the gateway uses it within its cache time)."""
    _put(name, file, config, must_exist=True, stray=list(ctx.args))


@app.command("list")
def list_(config: ConfigOpt = None, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Names, versions and ages — never values."""
    cfg = config_or_exit(config)
    with errors_to_exit():
        entries = with_store(cfg, lambda store: store.vault_list())
    now = time.time()
    rows = [{"name": e.name, "version": e.version, "age_days": round((now - e.created_at) / 86400, 1),
             "rotated_days_ago": round((now - e.updated_at) / 86400, 1)} for e in entries]  # fmt: skip
    if json_out:
        print_json(rows)
    else:
        print_table("vault", ["name", "version", "age (days)", "last rotated (days ago)"],
                    [(r["name"], r["version"], r["age_days"], r["rotated_days_ago"]) for r in rows])  # fmt: skip


@app.command()
def delete(name: str, config: ConfigOpt = None) -> None:
    """Delete the secret NAME (routes using it then answer 502)."""
    from tether.audit.chain import AuditEvent

    cfg = config_or_exit(config)
    event = AuditEvent(kind="vault.deleted", outcome="ok", principal=OPERATOR, detail={"name": name})
    with errors_to_exit():
        removed = with_store(cfg, lambda store: store.vault_delete(name, now=time.time(), audit=event))
    if not removed:
        fail(f"no vault entry `{name}`")
    console.print(f"vault entry `{name}` deleted")


@app.command("oauth-connect")
def oauth_connect(
    route: Annotated[str, typer.Argument(help="the gateway route (its oauth.grant must be refresh_token)")],
    config: ConfigOpt = None,
    browser: Annotated[bool, typer.Option("--browser/--no-browser", help="open the URL in a browser")] = False,
    timeout: Annotated[int, typer.Option(min=1, max=3600, help="seconds to wait for the callback")] = 300,
) -> None:
    """Authorize ROUTE at its OAuth server once; its refresh token is stored sealed in the vault (never shown)."""
    from tether.cli.vault_oauth import connect

    connect(route, config, browser=browser, timeout=timeout)


@master_app.command("rotate")
def rotate_master(
    config: ConfigOpt = None,
    out: Annotated[Path | None, typer.Option(help="where to write the new key (required with TETHER_MASTER_KEY)")] = None,
) -> None:
    """New master key: re-wrap every signing key, vault entry and dev key (values unchanged), re-seal every approval.

    Approvals in flight (pending or decided) keep working: their MACs are re-computed under the new key.
    An approval whose MACs do not verify under the old key is left as it is: still refused as tampered.
    One-time approve/deny links already sent stop working (their key changes too): approvers use the API instead.
    Run it with the STS stopped: a replica still on the old key would write approvals the new key refuses."""
    from tether.audit.chain import AuditEvent
    from tether.identity.dev_approvers import DevApprovers
    from tether.identity.dev_issuer import DevTrustDomain, dev_domain_aad
    from tether.keys.keyring import issuer_key_aad, legacy_issuer_key_aad
    from tether.keys.sealed import (
        MASTER_KEY_ENV,
        SealError,
        create_master_key,
        derive_key,
        legacy_vault_aad,
        load_master_key,
        rewrap,
        vault_aad,
    )
    from tether.mcp.pins import rekey_pins
    from tether.store.errors import StoreError

    cfg = config_or_exit(config)
    from_env = bool(os.environ.get(MASTER_KEY_ENV))
    if from_env and out is None:
        fail(f"the master key comes from {MASTER_KEY_ENV}: give --out FILE for the new key, then update the variable", code=2)
    target = out or cfg.master_key_file
    staging = target.with_name(target.name + ".new")
    with errors_to_exit():
        old = load_master_key(cfg.master_key_file)
        if staging.exists():
            staging.unlink()
        new = create_master_key(staging)

        event = AuditEvent(kind="master_key.rotated", outcome="ok", principal=OPERATOR)

        async def rewrap_all(store: Store) -> tuple[int, int | None]:
            keys = {k.kid: k for k in await store.signing_keys(now=0)}
            entries = {e.name: e for e in await store.vault_list()}

            def re_seal(kind: str, ident: str, blob: bytes) -> bytes:
                if kind == "vault":
                    entry = entries.get(ident)
                    if entry is None:
                        raise SealError(f"vault entry {ident} changed during the rotation; run it again")
                    try:
                        return rewrap(old, new, blob, aad=vault_aad(ident, created_at=entry.created_at, version=entry.version))
                    except SealError:  # sealed before its version was bound: the STS re-seals it at start
                        return rewrap(old, new, blob, aad=legacy_vault_aad(ident))
                row = keys.get(ident)
                if row is None:
                    raise SealError(f"signing key {ident} changed during the rotation; run it again")
                try:
                    return rewrap(old, new, blob, aad=issuer_key_aad(row))
                except SealError:  # sealed before its state was bound: the STS re-seals it at start
                    return rewrap(old, new, blob, aad=legacy_issuer_key_aad(ident))

            count = await store.rewrap_sealed(re_seal, now=time.time(), audit=event)
            try:
                resealed = await store.reseal_approvals(
                    lambda approval: _reseal_approval(old_approvals, new_approvals, approval), now=time.time(), audit=resealing
                )
            except StoreError as exc:
                # the keys are already re-wrapped under the new master key: the rotation must finish, or
                # nothing opens them; approvals left under the old key are refused until they expire
                console.print(f"warning: approvals not re-sealed ({type(exc).__name__}); those in flight are refused")
                return count, None
            return count, resealed

        old_approvals, new_approvals = derive_key(old, "approvals"), derive_key(new, "approvals")
        resealing = AuditEvent(kind="approvals.resealed", outcome="ok", principal=OPERATOR, detail={"by": "master_key.rotated"})
        count, resealed = with_store(cfg, rewrap_all)
        name = dev_domain_name(cfg)
        dev = DevTrustDomain.key_path(cfg.data_dir, name)
        if dev.exists():
            dev.write_bytes(rewrap(old, new, dev.read_bytes(), aad=dev_domain_aad(name)))
        DevApprovers.rekey(cfg.data_dir, old, new)  # the dev approvers' provider key, sealed like the dev domain's
        pinned = rekey_pins(cfg, old, new)  # MCP pin files are MAC'd under a key derived from the master key
        if not from_env and target.exists():
            os.replace(target, target.with_name(target.name + ".previous"))
        os.replace(staging, target)
    pins = f"; {pinned} MCP pin file(s) re-signed" if pinned else ""
    approvals = "" if resealed is None else f", {resealed} approval(s) re-sealed"
    console.print(f"master key rotated: {count} sealed value(s) re-wrapped{approvals}{pins}; new key in {target}")


def _reseal_approval(old: bytes, new: bytes, approval: Approval) -> tuple[str, str] | None:
    """``approval``'s MACs under ``new`` (the approvals key derived from the new master key), if they
    verify under ``old``: the request MAC, and the decision MAC once a human decided (else "").
    None if they do not: a row a database writer made stays refused (SECURITY APR-05)."""
    from tether.model import ApprovalStatus
    from tether.rules.approval_seal import ApprovalTampered, check_sealed, decision_mac, request_mac

    decided = approval.status in (ApprovalStatus.APPROVED, ApprovalStatus.DENIED)
    try:
        check_sealed(old, approval, decided=decided)
    except ApprovalTampered:
        return None
    return request_mac(new, approval), decision_mac(new, approval) if decided else ""
