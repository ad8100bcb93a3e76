"""``tether audit verify [FILE]`` and ``tether audit export``: check the hash chain and its signed checkpoints.

An export is JSON lines, one record per line, exactly as stored, with no key set: a verifier
must not trust keys handed over with the log it checks, so it passes its own copy of the
issuer's JWKS (RFC 7517, from ``/jwks``) with ``--jwks``, repeated for archived copies. The
rules are ``tether.audit.export``'s. The longest stretch between checkpoints is reported; one
the STS would not have left (``tether.audit.coverage``) warns, and fails ``--require-signed``.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tether.cli.common import config_or_exit, errors_to_exit
from tether.cli.output import PlainConsole, console, fail

if TYPE_CHECKING:
    from tether.audit.coverage import Stretch
    from tether.audit.export import ExportReport
    from tether.config import Config
    from tether.keys.keyring import KeyRing
    from tether.rules.jws import PublicKey

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit log.")
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="tether.toml")]
_err = PlainConsole(stderr=True, highlight=False, soft_wrap=True)
_POSITION = re.compile(r"(\d+)(?::([0-9a-f]{64}))?")
#: ``audit.checkpoint_every`` when no configuration says otherwise
_EVERY = 1000


def _records(cfg: Config, *, after: int = 0) -> list[dict[str, Any]]:
    import asyncio

    from tether.store.open import open_store

    async def read() -> list[dict[str, Any]]:
        store = await open_store(cfg)
        out: list[dict[str, Any]] = []
        cursor = after
        try:
            while True:
                page = await store.audit_records(after=cursor, limit=5000)
                if not page:
                    return out
                out.extend(r.as_json() for r in page)
                cursor = page[-1].seq
        finally:
            await store.aclose()

    return asyncio.run(read())


def _store_keys(cfg: Config) -> dict[str, PublicKey]:
    """The issuer's keys as the master key vouches for them, for checking the live chain.

    The public key of each row is derived from its sealed private key and the row's state
    is authenticated by the seal (``tether.keys.keyring``): a key a database writer put
    in the store is refused, never trusted to verify checkpoints. Without the master key
    the caller must bring its own JWKS.
    """
    import asyncio

    from tether.errors import ConfigError
    from tether.keys.keyring import load_keyring
    from tether.keys.sealed import load_master_key
    from tether.store.open import open_store

    try:
        master = load_master_key(cfg.master_key_file)
    except ConfigError as exc:
        raise ConfigError("--jwks", f"without the master key ({exc.problem}), pass the issuer's JWKS") from exc

    async def read() -> KeyRing:
        store = await open_store(cfg)
        try:
            return await load_keyring(store, master, now=time.time())
        finally:
            await store.aclose()

    ring = asyncio.run(read())
    return {kid: key.public for kid in ring.kids if (key := ring.public_key(kid, now=time.time())) is not None}


def _load_jwks(files: list[Path]) -> dict[str, PublicKey]:
    from tether.identity.jwks_cache import MAX_DOCUMENT_BYTES, parse_jwks
    from tether.rules.jws import JWSError, strict_json_loads

    keys: dict[str, PublicKey] = {}
    for path in files:
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_DOCUMENT_BYTES + 1)
            if len(data) > MAX_DOCUMENT_BYTES:
                raise ValueError(f"larger than {MAX_DOCUMENT_BYTES} bytes")
            keyset = parse_jwks(strict_json_loads(data))
        except (OSError, JWSError, ValueError) as exc:
            fail(f"`{path}` is not a readable JWKS: {exc}", code=2)
        if not keyset.by_kid:
            fail(f"`{path}` holds no signing key with a `kid`", code=2)
        for kid, key in keyset.by_kid.items():
            if kid in keys and keys[kid].as_dict(private=False) != key.as_dict(private=False):
                fail(f"the JWKS files disagree about the key `{kid}`", code=2)
            keys[kid] = key
    return keys


def _position(value: str | None, option: str) -> tuple[int, str | None] | None:
    if value is None:
        return None
    match = _POSITION.fullmatch(value.strip())
    if match is None:
        raise typer.BadParameter("must be SEQ or SEQ:HASH (64 lowercase hex digits)", param_hint=option)
    return int(match.group(1)), match.group(2)


def _read_export(file: Path) -> list[dict[str, Any]]:
    from tether.rules.jws import JWSError, strict_json_loads

    try:
        lines = file.read_text(encoding="utf-8").splitlines()
        records = [strict_json_loads(line.encode("utf-8")) for line in lines if line.strip()]
    except (OSError, ValueError, RecursionError, JWSError) as exc:
        fail(f"`{file}` is not a readable JSON-lines audit export: {exc}")
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict):
            fail(f"`{file}` is not a JSON-lines audit export: entry {number} is not a json object")
    return records


@app.command()
def export(
    config: ConfigOpt = None,
    out: Annotated[Path | None, typer.Option(help="file (default stdout)")] = None,
    after: Annotated[int, typer.Option(min=0, help="only records after this seq")] = 0,
) -> None:
    """Write the audit log as JSON lines; the head (SEQ:HASH) goes to stderr, for `verify --expect-head`."""
    cfg = config_or_exit(config)
    with errors_to_exit():
        records = _records(cfg, after=after)
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    if out is None:
        sys.stdout.write(lines)
    else:
        with errors_to_exit():
            out.write_text(lines, encoding="utf-8")
    if records:
        first, last = records[0], records[-1]
        _err.print(f"exported {len(records)} records ({first['seq']}-{last['seq']}); head {last['seq']}:{last['hash']}")
    else:
        _err.print(f"exported 0 records (none after {after})")


def _summary(report: ExportReport, *, anchored: bool, after: int) -> None:
    span = f" ({report.first}-{report.head[0]})" if report.head else ""
    console.print(f"audit chain intact: {report.records} records{span}", soft_wrap=True)
    if after and not anchored:
        _err.print(f"warning: the export starts after record {after}; its link to record {after} is taken as given")
    if not report.signatures_checked:
        _err.print("warning: checkpoint signatures not checked: pass --jwks with the issuer's JWKS")
        return
    if report.signed_through is not None:
        older = f"; {report.superseded} older checkpoints signed by keys not in the JWKS" if report.superseded else ""
        console.print(
            f"signed: records up to {report.signed_through} vouched for by {report.checkpoints} checkpoints"
            f" of `{report.issuer}`{older}",
            soft_wrap=True,
        )
    if report.longest is not None:
        s = report.longest
        console.print(f"longest stretch between checkpoints: {s.records} records ({s.first}-{s.last})", soft_wrap=True)
    if report.unsigned and report.head:
        _err.print(f"warning: the last {report.unsigned} records (up to {report.head[0]}) are not covered by a checkpoint")


def _overdue(stretch: Stretch, every: int) -> str:
    from tether.audit.coverage import GRACE_SECONDS

    return (f"checkpoint record {stretch.checkpoint} closes a stretch (records {stretch.first}-{stretch.last}) with "
            f"{stretch.late} records appended over {GRACE_SECONDS} s before it, more than checkpoint_every ({every}) "
            "lets pass: a checkpoint may have been removed and the log signed again")  # fmt: skip


@app.command()
def verify(
    file: Annotated[Path | None, typer.Argument(help="an exported JSON-lines log (default: the live store)")] = None,
    config: ConfigOpt = None,
    jwks: Annotated[
        list[Path] | None, typer.Option("--jwks", help="the issuer's JWKS (your own copy); repeat for archived copies")
    ] = None,
    issuer: Annotated[str | None, typer.Option(help="the issuer the checkpoints must name (iss)")] = None,
    require_signed: Annotated[
        bool, typer.Option("--require-signed", help="fail unless every record is covered by a valid checkpoint")
    ] = False,
    allow_unsigned: Annotated[
        bool, typer.Option("--allow-unsigned", help="with --jwks, accept an export that has no valid checkpoint at all")
    ] = False,
    expect_head: Annotated[
        str | None, typer.Option("--expect-head", help="SEQ:HASH the export must contain (detects truncation)")
    ] = None,
    after: Annotated[
        str | None, typer.Option(help="the export starts after SEQ (SEQ:HASH anchors it to a verified record)")
    ] = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option(min=1, help="the issuer's audit.checkpoint_every (default: the configured one, or 1000 for FILE)"),
    ] = None,
) -> None:
    """Verify every link and every signed checkpoint; on the first bad record print it and exit 1.

    Without FILE the live store is checked against the keys the master key vouches for
    (or `--jwks`). With FILE the checkpoints are checked only against `--jwks`.
    """
    from tether.audit.export import ExportBroken, verify_export

    start = _position(after, "--after") or (0, None)
    head = _position(expect_head, "--expect-head")
    if head is not None and head[1] is None:
        raise typer.BadParameter("must be SEQ:HASH", param_hint="--expect-head")
    keys = _load_jwks(jwks) if jwks else None
    every = checkpoint_every or _EVERY
    if file is not None:
        records = _read_export(file)
    else:
        cfg = config_or_exit(config)
        with errors_to_exit():
            records = _records(cfg, after=start[0])
            keys = keys if keys is not None else _store_keys(cfg)
        issuer = issuer or cfg.issuer
        every = checkpoint_every or cfg.audit.checkpoint_every
    if require_signed and keys is None:
        raise typer.BadParameter("needs --jwks to check the signatures", param_hint="--require-signed")
    try:
        report = verify_export(records, keys=keys, issuer=issuer, after=start[0], after_hash=start[1],
                               expect_head=(head[0], str(head[1])) if head else None, every=every)  # fmt: skip
    except ExportBroken as exc:
        fail(str(exc))
    if jwks and not allow_unsigned and report.records and report.signed_through is None:
        # a log rewritten end to end, checkpoints dropped, is a consistent chain: only a
        # signature ties it to the issuer, so with keys given "nothing signed" is a failure
        fail(f"audit chain not signed at all: none of its {report.records} records is covered by a checkpoint "
             "signed by a key in the JWKS (--allow-unsigned accepts that)")  # fmt: skip
    if require_signed and report.unsigned:
        where = f"after record {report.signed_through}" if report.signed_through is not None else "at all"
        fail(f"audit chain not signed {where}: {report.unsigned} records are not covered by a valid checkpoint")
    if require_signed and report.overdue is not None:
        fail(f"audit chain not signed often enough: {_overdue(report.overdue, every)}")
    _summary(report, anchored=start[1] is not None, after=start[0])
    if report.overdue is not None:
        _err.print(f"warning: {_overdue(report.overdue, every)}")
