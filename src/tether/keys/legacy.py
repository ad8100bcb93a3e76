"""One-time upgrade of values sealed before their state was bound into the seal.

Older releases sealed an issuer key with its ``kid`` only and a vault entry with its name
only, so a database writer could change a key's retirement or expiry, or put a rotated-out
secret back. The operator runs ``tether keys upgrade`` once (never automatically: a writer
who could trigger it could launder rows it put back); it re-seals such values with their state
as stored at that moment, and from then on that state is authenticated. Anything that opens
under neither form is left alone for the loaders to refuse.
"""

from __future__ import annotations

import logging

from tether.audit.chain import AuditEvent
from tether.keys.keyring import KeyRejected, issuer_key_aad, legacy_issuer_key_aad, open_key
from tether.keys.sealed import SealError, legacy_vault_aad, seal, unseal, vault_aad
from tether.store.protocol import Store
from tether.store.records import StoredKey, VaultEntry

__all__ = ["reseal_legacy"]

log = logging.getLogger("tether.keys")


def _key_seal(master: bytes, row: StoredKey) -> str:
    """``bound`` (sealed with its state), ``legacy`` (kid only) or ``bad`` (neither: refused by the loader)."""
    for legacy, answer in ((False, "bound"), (True, "legacy")):
        try:
            open_key(master, row, legacy=legacy)
            return answer
        except KeyRejected:
            continue
    return "bad"


def _entry_seal(master: bytes, entry: VaultEntry) -> str:
    """``bound`` (sealed with name, creation and version), ``legacy`` (name only) or ``bad``."""
    bound = vault_aad(entry.name, created_at=entry.created_at, version=entry.version)
    for aad, answer in ((bound, "bound"), (legacy_vault_aad(entry.name), "legacy")):
        try:
            unseal(master, entry.sealed, aad=aad)
            return answer
        except SealError:
            continue
    return "bad"


async def reseal_legacy(store: Store, master: bytes, *, now: float) -> list[str]:
    """Re-seal legacy signing keys and vault entries with their state bound; returns what was upgraded.

    Only a store that holds nothing sealed the new way is upgraded. Once one value is bound,
    a legacy value appearing beside it can only be an old row put back (a backup restored
    over the current one, its state edited at will): it is left for the loaders to refuse.
    """
    key_seals = {row.kid: (row, _key_seal(master, row)) for row in await store.signing_keys(now=0)}
    entry_seals = {entry.name: (entry, _entry_seal(master, entry)) for entry in await store.vault_list()}
    keys = {kid: row for kid, (row, seal_) in key_seals.items() if seal_ == "legacy"}
    entries = {name: entry for name, (entry, seal_) in entry_seals.items() if seal_ == "legacy"}
    if not keys and not entries:
        return []
    if any(seal_ == "bound" for _, seal_ in [*key_seals.values(), *entry_seals.values()]):
        log.error("legacy-sealed %s beside state-bound values: an old row put back? refused, not re-sealed",
                  ", ".join([*keys, *entries]))  # fmt: skip
        return []

    def reseal(kind: str, ident: str, blob: bytes) -> bytes:
        if kind == "key" and ident in keys:
            return seal(master, unseal(master, blob, aad=legacy_issuer_key_aad(ident)), aad=issuer_key_aad(keys[ident]))
        if kind == "vault" and ident in entries:
            entry = entries[ident]
            aad = vault_aad(ident, created_at=entry.created_at, version=entry.version)
            return seal(master, unseal(master, blob, aad=legacy_vault_aad(ident)), aad=aad)
        return blob

    upgraded = [f"signing key {kid}" for kid in sorted(keys)] + [f"vault entry {name}" for name in sorted(entries)]
    await store.rewrap_sealed(reseal, now=now, audit=AuditEvent(kind="keys.resealed", outcome="ok",
                                                                   detail={"resealed": upgraded}))  # fmt: skip
    return upgraded
