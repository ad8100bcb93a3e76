"""Where a federation peer's token-signing keys come from: its JWKS (URL or file) or a SPIFFE bundle endpoint.

A peer tether publishes its token-signing keys, and nothing else, as a SPIFFE bundle at ``GET
/federation/bundle`` (``federation.published``; never ``/spiffe/bundle``, whose SVID keys must not
verify access tokens: SECURITY JWT-08), so ``bundle_endpoint`` follows that bundle
(``identity.spiffe_bundle``): refreshed per its hint, kept through a failed refresh, refused if
its sequence goes backwards.
"""

from __future__ import annotations

import httpx

from tether.config.federation import FederationPeer
from tether.identity.jwks_cache import FileKeySource, KeySource, UrlKeySource
from tether.identity.spiffe_bundle import BundleEndpointSource

__all__ = ["peer_key_source"]


def peer_key_source(peer: FederationPeer, http: httpx.AsyncClient, *, refresh: int = 300) -> KeySource:
    """The key source that verifies ``peer``'s access tokens (``[[federation]]`` says which one)."""
    if peer.jwks_file is not None:
        return FileKeySource(peer.jwks_file)
    if peer.jwks_uri is not None:
        return UrlKeySource(peer.jwks_uri, http, ttl=refresh)
    assert peer.bundle_endpoint is not None  # config.federation: exactly one of the three
    return BundleEndpointSource(peer.bundle_endpoint, ca_file=peer.bundle_ca_file, refresh=refresh)
