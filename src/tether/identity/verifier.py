"""One entry point for workload JWTs: pick the single verifier whose rules apply.

Each kind of workload JWT has mutually exclusive validation rules: a JWT-SVID is chosen by
the trust domain of its ``sub``, an OIDC token by its pinned ``iss``, a ``private_key_jwt``
assertion by ``iss == sub == client_id``. A token more than one verifier would accept is
ambiguous and refused, so no key set can vouch for a token meant for another.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import httpx

from tether.config import Config
from tether.identity.checks import IdentityError, unverified
from tether.identity.client_assertion import ClientAssertionVerifier
from tether.identity.jwks_cache import FileKeySource, KeySource, StaticKeySource, UrlKeySource, parse_jwks
from tether.identity.oidc import OidcVerifier
from tether.identity.spiffe import SvidVerifier
from tether.identity.spiffe_bundle import BundleEndpointSource
from tether.model import WorkloadIdentity

__all__ = ["IdentityVerifier", "build_identity_verifier"]


class _Verifier(Protocol):
    def handles(self, claims: dict[str, Any]) -> bool: ...

    async def verify(self, token: str, *, now: float) -> WorkloadIdentity: ...


class IdentityVerifier:
    def __init__(self, verifiers: Sequence[_Verifier]) -> None:
        self._verifiers = list(verifiers)

    async def verify(self, token: str, *, now: float) -> WorkloadIdentity:
        """Verify a workload JWT or raise ``IdentityError`` saying why (for ``debug``)."""
        _, claims = unverified(token)
        matches = [v for v in self._verifiers if v.handles(claims)]
        if not matches:
            raise IdentityError("no configured trust domain, issuer or client for this token")
        if len(matches) > 1:
            raise IdentityError("token matches more than one identity source")
        return await matches[0].verify(token, now=now)


def build_identity_verifier(config: Config, client: httpx.AsyncClient) -> IdentityVerifier:
    """Verifiers for every configured trust domain, OIDC issuer and registered client."""
    skew = config.tokens.clock_skew
    max_lifetime = config.identity.max_lifetime
    refresh = config.identity.refresh
    audiences = (config.issuer, config.issuer + "/token", config.issuer + "/introspect", config.issuer + "/revoke")
    bundles: dict[str, KeySource] = {}
    for domain in config.trust_domains:
        if domain.bundle_file is not None:
            bundles[domain.name] = FileKeySource(domain.bundle_file)
        elif domain.bundle_endpoint is not None:
            bundles[domain.name] = BundleEndpointSource(domain.bundle_endpoint, ca_file=domain.bundle_ca_file, refresh=refresh)
        else:
            assert domain.bundle_url is not None
            bundles[domain.name] = UrlKeySource(domain.bundle_url, client, ttl=refresh)
    # a tether's bundle also lists its token-signing keys (``federation.published``): tokens of any
    # tether issuer this deployment knows are never JWT-SVIDs (JWT-12), whatever key signed them
    tether_issuers = [config.issuer, *(peer.issuer for peer in config.federation)]
    verifiers: list[_Verifier] = [
        SvidVerifier(bundles, audiences=audiences, max_lifetime=max_lifetime, skew=skew, foreign_issuers=tether_issuers)
    ]
    for issuer in config.oidc_issuers:
        verifiers.append(OidcVerifier(issuer, client, max_lifetime=max_lifetime, skew=skew))
    clients: dict[str, KeySource] = {}
    for registered in config.clients:
        if registered.jwks_file is not None:
            clients[registered.client_id] = FileKeySource(registered.jwks_file)
        elif registered.jwks is not None:
            clients[registered.client_id] = StaticKeySource(parse_jwks(registered.jwks))
    if clients:
        verifiers.append(ClientAssertionVerifier(clients, audiences=audiences, max_lifetime=max_lifetime, skew=skew))
    return IdentityVerifier(verifiers)
