"""Storage behind one protocol; SQLite embedded by default."""

from tether.store.errors import AlreadySpent, CapReached, Conflict, NotFound, StoreError, StoreUnavailable, TaskNotActive
from tether.store.protocol import Store
from tether.store.records import BlockKind, IssuedToken, LookupResult, Revocation, RevocationKind, StoredKey

__all__ = [
    "AlreadySpent",
    "BlockKind",
    "CapReached",
    "Conflict",
    "IssuedToken",
    "LookupResult",
    "NotFound",
    "Revocation",
    "RevocationKind",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredKey",
    "TaskNotActive",
]
