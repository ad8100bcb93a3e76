"""Where a workload's identity JWT comes from: a file, the SPIFFE Workload API, or the dev issuer.

Files cover spiffe-helper output and Kubernetes projected service-account tokens.

Each source returns a fresh token on demand; files are re-read every time, since the
agent that writes them (spiffe-helper, kubelet) rotates them in place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from tether.clock import Clock, SystemClock
from tether.identity.dev_issuer import DevTrustDomain

__all__ = ["DevIdentity", "FileIdentity", "IdentitySource", "WorkloadApiIdentity", "identity_from_environment"]


class IdentitySource(Protocol):
    principal: str | None

    def token(self, audience: str) -> str:
        """A workload JWT for ``audience`` (the STS issuer); ``OSError``, ``ValueError`` or
        ``RuntimeError`` when none can be had right now."""
        ...


class FileIdentity:
    """A JWT-SVID or OIDC token written to disk by another process."""

    def __init__(self, path: Path, principal: str | None = None) -> None:
        self.path = path
        self.principal = principal

    def token(self, audience: str) -> str:
        return self.path.read_text(encoding="ascii").strip()


class DevIdentity:
    """JWT-SVIDs minted locally by the dev trust domain (no SPIRE needed), dated by ``clock``."""

    def __init__(self, domain: DevTrustDomain, spiffe_id: str, *, ttl: int = 300, clock: Clock | None = None) -> None:
        self._domain = domain
        self.principal: str | None = spiffe_id
        self._ttl = ttl
        self._clock = clock or SystemClock()

    def token(self, audience: str) -> str:
        assert self.principal is not None
        return self._domain.issue(self.principal, audience=audience, ttl=self._ttl, now=int(self._clock.now()))


class WorkloadApiIdentity:
    """JWT-SVIDs from the SPIFFE Workload API (SPIRE agent), via the ``spiffe`` package.

    Used when ``SPIFFE_ENDPOINT_SOCKET`` is set; install with ``pip install tether[spiffe]``.
    """

    def __init__(self, socket_path: str | None = None) -> None:
        try:
            from spiffe import WorkloadApiClient
        except ImportError as exc:  # pragma: no cover - depends on the optional extra
            raise RuntimeError("the SPIFFE Workload API needs the `spiffe` package: pip install tether[spiffe]") from exc
        self._client = WorkloadApiClient(socket_path or os.environ.get("SPIFFE_ENDPOINT_SOCKET"))
        self.principal: str | None = None

    def token(self, audience: str) -> str:
        from spiffe.errors import PySpiffeError

        try:
            svid = self._client.fetch_jwt_svid(audience={audience})
        except PySpiffeError as exc:  # the agent is down or has no SVID for us: a transient failure
            raise RuntimeError(f"the SPIFFE Workload API gave no JWT-SVID: {exc}") from exc
        self.principal = str(svid.spiffe_id)
        return str(svid.token)


def identity_from_environment(*, file: Path | None = None) -> IdentitySource:
    """A JWT file if given, else the Workload API when ``SPIFFE_ENDPOINT_SOCKET`` is set."""
    if file is not None:
        return FileIdentity(file)
    if os.environ.get("SPIFFE_ENDPOINT_SOCKET"):
        return WorkloadApiIdentity()
    raise RuntimeError("no workload identity: pass a token file or set SPIFFE_ENDPOINT_SOCKET")
