"""Kit for the records and approvals page tests: write audit records into a deployment's real store.

Records are appended through the store's own ``append_audit`` (so the hash chain is real), from
a store opened for the call — as another STS replica or the monitor would write them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from tether.audit.chain import AuditEvent, AuditRecord
from tether.config import Config
from tether.keys.keyring import load_keyring
from tether.keys.sealed import load_master_key
from tether.store.open import open_store
from tether.store.protocol import Store
from tether.sts.checkpoints import AuditCheckpoints

__all__ = ["append", "cells", "checkpoint", "run"]

T = TypeVar("T")


def run(config: Config, fn: Callable[[Store], Awaitable[T]]) -> T:
    """``fn(store)`` on a store of ``config`` opened for this call."""

    async def main() -> T:
        store = await open_store(config)
        try:
            return await fn(store)
        finally:
            await store.aclose()

    return asyncio.run(main())


def append(
    config: Config, kind: str, *, now: float, outcome: str = "ok", principal: str | None = None, task: str | None = None,
    error: str | None = None, detail: Mapping[str, Any] | None = None,
) -> AuditRecord:  # fmt: skip
    event = AuditEvent(kind=kind, outcome=outcome, principal=principal, task=task, error=error, detail=dict(detail or {}))
    return run(config, lambda store: store.append_audit(event, now=now))


def checkpoint(config: Config, *, now: float) -> AuditRecord | None:
    """Sign a checkpoint of everything so far, with the issuer's keys, as the STS's upkeep does."""

    async def sign(store: Store) -> AuditRecord | None:
        ring = await load_keyring(store, load_master_key(config.master_key_file), now=now)
        return await AuditCheckpoints(every=1, seconds=1).tick(store, ring, issuer=config.issuer, now=now)

    return run(config, sign)


def cells(html: str, label: str) -> list[str]:
    """The text of every table cell with ``data-label="label"`` (tags stripped, whitespace collapsed)."""
    found = re.findall(rf'<td data-label="{re.escape(label)}">(.*?)</td>', html, re.S)
    return [" ".join(re.sub(r"<[^>]+>", "", cell).split()) for cell in found]
