"""``tether alerts``: the monitor's ``alert.raised`` records, newest first.

Alerts live in the audit chain (so they are as tamper-evident as what they point at);
this reads the store directly, like ``tether audit``, and needs no running STS.
``--since`` starts the read near that time (``monitor.cursor.seq_before``) instead of at
the beginning of the log.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tether.cli.common import config_or_exit, errors_to_exit
from tether.cli.output import fail, print_json, print_table

if TYPE_CHECKING:
    from tether.audit.chain import AuditRecord
    from tether.config import Config

__all__ = ["alerts"]

_PAGE = 5000


def _view(record: AuditRecord) -> dict[str, Any]:
    detail = record.detail
    return {
        "seq": record.seq,
        "ts": record.ts,
        "time": dt.datetime.fromtimestamp(record.ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "detector": detail.get("detector"),
        "severity": detail.get("severity"),
        "agent": detail.get("agent"),
        "task": record.task,
        "reason": detail.get("reason"),
        "evidence": detail.get("evidence", {}),
        "actions": detail.get("actions", []),
    }


def read_alerts(cfg: Config, *, since: float | None, limit: int) -> list[dict[str, Any]]:
    """``alert.raised`` records (at or after ``since``, epoch seconds), newest first, at most ``limit``."""
    import asyncio

    from tether.monitor.cursor import seq_before
    from tether.store.open import open_store

    async def read() -> list[dict[str, Any]]:
        store = await open_store(cfg)
        try:
            after = await seq_before(store, since) if since is not None else 0
            found: list[dict[str, Any]] = []
            while True:
                page = await store.audit_records(after=after, limit=_PAGE)
                found.extend(_view(r) for r in page if r.kind == "alert.raised" and (since is None or r.ts >= since))
                found = found[-limit:]
                if len(page) < _PAGE:
                    break
                after = page[-1].seq
            return found[::-1]
        finally:
            await store.aclose()

    return asyncio.run(read())


def alerts(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="tether.toml (default ./tether.toml)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    since: Annotated[int | None, typer.Option(help="only alerts of the last SECONDS")] = None,
    limit: Annotated[int, typer.Option(help="at most N alerts (newest first)")] = 50,
) -> None:
    """List the monitor's alerts (newest first): detector, severity, agent, task and reason."""
    if since is not None and since <= 0:
        fail("--since must be a positive number of seconds", code=2)
    if limit <= 0:
        fail("--limit must be a positive number", code=2)
    cfg = config_or_exit(config)
    with errors_to_exit():
        found = read_alerts(cfg, since=time.time() - since if since is not None else None, limit=limit)
    if json_out:
        print_json(found)
        return
    rows = [(a["time"], a["detector"], a["severity"], a["agent"], a["task"], a["reason"]) for a in found]
    print_table(f"alerts ({len(found)})", ("time", "detector", "severity", "agent", "task", "reason"), rows)
