"""Principal names: SPIFFE IDs (SPIFFE ID spec §2) and other URI-shaped workload names.

Principals end up in ``sub``, ``act`` and audit records, and are compared as strings,
so they are held to one canonical form: a SPIFFE ID must already be normalised
(lower-case trust domain, no empty, ``.`` or ``..`` segments, no trailing ``/``)
rather than being normalised here, which would let two strings name one workload.
"""

from __future__ import annotations

import functools
import re

__all__ = ["FEDERATED_PREFIX", "MAX_PRINCIPAL_LENGTH", "is_federated", "is_principal", "spiffe_trust_domain"]

MAX_PRINCIPAL_LENGTH = 2048
#: a federation peer ``n``'s principal ``p`` is ``fed:n/p`` here (``config.federation``, SECURITY FED-02)
FEDERATED_PREFIX = "fed:"
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


def is_federated(principal: str) -> bool:
    """Whether ``principal`` lies in the ``fed:`` scheme that only a federation peer's linked task names.

    URI schemes are case-insensitive (RFC 3986 §3.1), so ``FED:a/x`` is refused wherever ``fed:a/x`` is:
    no local source may mint a name a reader would take for a peer's principal (FED-02)."""
    return principal[: len(FEDERATED_PREFIX)].lower() == FEDERATED_PREFIX
