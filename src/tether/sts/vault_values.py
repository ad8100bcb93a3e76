"""The vaulted secrets' values, for redacting what approvers are shown (SECURITY APR-05).

An agent never holds a vaulted secret, but a tool call's arguments are whatever the agent sent
(it may have read a secret from a compromised upstream's answer): a held request's view is
stored and shown to humans, so any argument that contains a vaulted value is redacted before the
view is stored (``rules.approval.redact``). Entries are listed at each hold (one query) and
opened only when new or rotated (one AES-GCM each), so a secret stored a moment ago is redacted
too; an entry that does not open under its stored version is skipped (the gateway refuses it).
"""

from __future__ import annotations

import logging

from tether.keys.sealed import SealError, unseal, vault_aad
from tether.store.protocol import Store

__all__ = ["VaultValues"]

log = logging.getLogger("tether.sts")


class VaultValues:
    def __init__(self, store: Store, master: bytes) -> None:
        self._store = store
        self._master = master
        #: name -> ((created_at, version), value) of the entries opened
        self._opened: dict[str, tuple[tuple[float, int], str]] = {}

    async def values(self) -> tuple[str, ...]:
        entries = await self._store.vault_list()
        opened: dict[str, tuple[tuple[float, int], str]] = {}
        for entry in entries:
            state = (entry.created_at, entry.version)
            known = self._opened.get(entry.name)
            if known is not None and known[0] == state:
                opened[entry.name] = known
                continue
            try:
                aad = vault_aad(entry.name, created_at=entry.created_at, version=entry.version)
                opened[entry.name] = (state, unseal(self._master, entry.sealed, aad=aad).decode("utf-8"))
            except (SealError, UnicodeDecodeError):
                log.warning("vault entry `%s` does not open under its stored version; not used for redaction", entry.name)
        self._opened = opened
        return tuple(value for _, value in opened.values())
