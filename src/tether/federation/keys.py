"""Where a federation peer's token-signing keys come from: its JWKS (URL or file) or a SPIFFE bundle endpoint."""

from __future__ import annotations

import httpx

from tether.config.federation import FederationPeer
from tether.identity.jwks_cache import FileKeySource, KeySource, UrlKeySource

__all__ = ["peer_key_source"]


def peer_key_source(peer: FederationPeer, http: httpx.AsyncClient, *, refresh: int = 300) -> KeySource:
    """The key source that verifies ``peer``'s access tokens (``[[federation]]`` says which one)."""
    if peer.jwks_file is not None:
        return FileKeySource(peer.jwks_file)
    if peer.jwks_uri is not None:
        return UrlKeySource(peer.jwks_uri, http, ttl=refresh)
    raise NotImplementedError("SPIFFE bundle endpoints are not followed yet")
