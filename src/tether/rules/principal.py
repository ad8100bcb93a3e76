"""Principal names: SPIFFE IDs (SPIFFE ID spec §2) and other URI-shaped workload names.

Principals end up in ``sub``, ``act`` and audit records, and are compared as strings,
so they are held to one canonical form: a SPIFFE ID must already be normalised
(lower-case trust domain, no empty, ``.`` or ``..`` segments, no trailing ``/``)
rather than being normalised here, which would let two strings name one workload.
"""

from __future__ import annotations

import functools
import re

__all__ = ["MAX_PRINCIPAL_LENGTH", "is_principal", "spiffe_trust_domain"]

MAX_PRINCIPAL_LENGTH = 2048
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_GENERIC = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[\x21-\x7e]+")


def spiffe_trust_domain(value: str) -> str | None:
    """The trust domain of a well-formed SPIFFE ID with a path, else ``None``.

    Memoised: a fleet has few workload names, and every token names several of them. The
    length gate comes first, so an oversized (unverified) ``sub`` never enters the memo.
    """
    if len(value) > MAX_PRINCIPAL_LENGTH or not value.startswith("spiffe://"):
        return None
    return _spiffe_trust_domain(value)


@functools.lru_cache(maxsize=4096)
def _spiffe_trust_domain(value: str) -> str | None:
    rest = value[len("spiffe://") :]
    domain, sep, path = rest.partition("/")
    if not sep or not path or not _TRUST_DOMAIN.fullmatch(domain):
        return None
    for segment in path.split("/"):
        if segment in ("", ".", "..") or not _SEGMENT.fullmatch(segment):
            return None
    return domain


def is_principal(value: object) -> bool:
    """A printable-ASCII, scheme-prefixed name (``spiffe://…``, ``k8s:…``, ``user:…``)."""
    if not isinstance(value, str) or len(value) > MAX_PRINCIPAL_LENGTH or not _GENERIC.fullmatch(value):
        return False
    if value.lower().startswith("spiffe:"):
        return spiffe_trust_domain(value) is not None
    return True
