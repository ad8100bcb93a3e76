"""``tether audit verify [FILE]`` and ``tether audit export`` — check the hash chain."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tether.audit.chain import first_broken
from tether.cli.common import config_or_exit, errors_to_exit
from tether.cli.output import console, fail
from tether.config import Config
from tether.store.open import open_store

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit log.")
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="tether.toml")]


def _records(cfg: Config) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        store = await open_store(cfg)
        out: list[dict[str, Any]] = []
        after = 0
        try:
            while True:
                page = await store.audit_records(after=after, limit=5000)
                if not page:
                    return out
                out.extend(r.as_json() for r in page)
                after = page[-1].seq
        finally:
            await store.aclose()

    return asyncio.run(read())


@app.command()
def export(config: ConfigOpt = None, out: Annotated[Path | None, typer.Option(help="file (default stdout)")] = None) -> None:
    """Write the audit log as JSON lines."""
    cfg = config_or_exit(config)
    with errors_to_exit():
        records = _records(cfg)
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    if out is None:
        sys.stdout.write(lines)
    else:
        out.write_text(lines, encoding="utf-8")


@app.command()
def verify(
    file: Annotated[Path | None, typer.Argument(help="an exported JSON-lines log (default: the live store)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Verify every link of the chain; report the first broken record and exit 1 if any."""
    if file is not None:
        try:
            records = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, ValueError) as exc:
            fail(f"`{file}` is not a readable JSON-lines audit export: {exc}")
    else:
        cfg = config_or_exit(config)
        with errors_to_exit():
            records = _records(cfg)
    broken = first_broken(records)
    if broken is not None:
        fail(f"audit chain broken at record {broken}")
    console.print(f"audit chain intact: {len(records)} records")
