"""Identity sources own disjoint namespaces of principal names, so principals never collide.

Two sources that could render the same string (overlapping OIDC template prefixes, a client id
inside a prefix or trust domain) would let a workload of one act as the same-named workload of
another. A SPIFFE trust domain owns ``spiffe://<td>/``, an OIDC issuer the literal prefix of
its template, a client exactly its id; overlaps are refused when the configuration loads, and
``source_of`` finds a principal's one source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Namespace", "collisions", "source_of"]


@dataclass(frozen=True)
class Namespace:
    """What one identity source can name: ``prefix`` (or exactly it, when ``exact``)."""

    kind: str  # "spiffe", "oidc" or "client" (tether.model.IdentityKind values)
    #: the source as a verified identity names it (WorkloadIdentity.issuer): ``spiffe://td``, the
    #: OIDC issuer URL, or the client id
    issuer: str
    prefix: str
    exact: bool = False
    #: the configuration key that declared it, for error messages
    key: str = ""

    @property
    def trust_domain(self) -> str:
        """What Cedar's ``trust_domain`` attribute names: the SPIFFE trust domain, the OIDC issuer or the client id."""
        return self.issuer.removeprefix("spiffe://")

    def contains(self, principal: str) -> bool:
        return principal == self.prefix if self.exact else principal.startswith(self.prefix)


def _overlap(a: Namespace, b: Namespace) -> bool:
    if a.exact and b.exact:
        return a.prefix == b.prefix
    if a.exact:
        return b.contains(a.prefix)
    if b.exact:
        return a.contains(b.prefix)
    return a.prefix.startswith(b.prefix) or b.prefix.startswith(a.prefix)


def collisions(spaces: Sequence[Namespace]) -> list[tuple[Namespace, Namespace]]:
    """Every pair of namespaces that some principal name could fall into both of."""
    return [(a, b) for i, a in enumerate(spaces) for b in spaces[i + 1 :] if _overlap(a, b)]


def source_of(principal: str, spaces: Sequence[Namespace]) -> Namespace | None:
    """The one source whose namespace holds ``principal`` (``None`` if none does).

    With disjoint namespaces at most one matches; if several do (a configuration that was
    never checked), none is chosen: an ambiguous principal has no source.
    """
    found = [space for space in spaces if space.contains(principal)]
    return found[0] if len(found) == 1 else None
