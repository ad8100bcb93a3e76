"""Where a workload's identity JWT comes from: a file (SPIRE helper, Kubernetes projected token) or the dev issuer.

Each source returns a fresh token on demand; files are re-read every time, since the
agent that writes them (spiffe-helper, kubelet) rotates them in place.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

from tether.identity.dev_issuer import DevTrustDomain

__all__ = ["DevIdentity", "FileIdentity", "IdentitySource"]


class IdentitySource(Protocol):
    principal: str | None

    def token(self, audience: str) -> str:
        """A workload JWT for ``audience`` (the STS issuer)."""
        ...


class FileIdentity:
    """A JWT-SVID or OIDC token written to disk by another process."""

    def __init__(self, path: Path, principal: str | None = None) -> None:
        self.path = path
        self.principal = principal

    def token(self, audience: str) -> str:
        return self.path.read_text(encoding="ascii").strip()


class DevIdentity:
    """JWT-SVIDs minted locally by the dev trust domain (no SPIRE needed)."""

    def __init__(self, domain: DevTrustDomain, spiffe_id: str, *, ttl: int = 300) -> None:
        self._domain = domain
        self.principal: str | None = spiffe_id
        self._ttl = ttl

    def token(self, audience: str) -> str:
        assert self.principal is not None
        return self._domain.issue(self.principal, audience=audience, ttl=self._ttl, now=int(time.time()))
