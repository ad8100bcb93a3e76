"""One-time upgrade of values sealed before their state was bound into the seal.

Older releases sealed an issuer key with its ``kid`` only and a vault entry with its name
only, so a database writer could change a key's retirement or expiry, or put a rotated-out
secret back. Whoever holds the master key (the STS, at start) re-seals such values once with
their state as stored at that moment; from then on that state is authenticated. Anything
that opens under neither form is left alone for the loaders to refuse.
"""

from __future__ import annotations

from tether.audit.chain import AuditEvent
from tether.keys.keyring import KeyRejected, issuer_key_aad, legacy_issuer_key_aad, open_key
from tether.keys.sealed import SealError, legacy_vault_aad, seal, unseal, vault_aad
from tether.store.protocol import Store
from tether.store.records import StoredKey, VaultEntry

__all__ = ["reseal_legacy"]


def _legacy_key(master: bytes, row: StoredKey) -> bool:
    try:
        open_key(master, row)
        return False
    except KeyRejected:
        try:
            open_key(master, row, legacy=True)
            return True
        except KeyRejected:
            return False


def _legacy_entry(master: bytes, entry: VaultEntry) -> bool:
    try:
        unseal(master, entry.sealed, aad=vault_aad(entry.name, created_at=entry.created_at, version=entry.version))
        return False
    except SealError:
        try:
            unseal(master, entry.sealed, aad=legacy_vault_aad(entry.name))
            return True
        except SealError:
            return False


async def reseal_legacy(store: Store, master: bytes, *, now: float) -> list[str]:
    """Re-seal legacy signing keys and vault entries with their state bound; returns what was upgraded."""
    keys = {row.kid: row for row in await store.signing_keys(now=0) if _legacy_key(master, row)}
    entries = {entry.name: entry for entry in await store.vault_list() if _legacy_entry(master, entry)}
    if not keys and not entries:
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
