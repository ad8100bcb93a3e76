"""``DPoPAuth``: an ``httpx.Auth`` (sync and async) that makes every request key-bound and hop-scoped.

For each request it picks the audience (a configured URL-prefix map, else RFC 9728
discovery at the origin, whose ``resource`` must equal the origin it was fetched for,
AUX-03), gets a hop token for exactly that audience from its provider (cached until
shortly before expiry), signs a fresh DPoP proof with ``ath`` (RFC 9449 §4.2), and
retries once when the server answers with a nonce challenge (§9). It never sends a
token to a host that is not the token's audience (MCP-03).
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from typing import Protocol

import httpx

from tether.agent.exchange import Flow, Nonces, is_nonce_challenge
from tether.agent.proof import DPoPKey

__all__ = ["DPoPAuth", "DiscoveryError", "TokenProvider"]


class DiscoveryError(Exception):
    """The target's protected-resource metadata is missing or does not match."""


class TokenProvider(Protocol):
    key: DPoPKey
    nonces: Nonces
    sts_url: str

    def token_flow(self, audience: str) -> Flow:
        """A flow that returns an access token (``str``) for ``audience``."""
        ...


def _origin(url: httpx.URL) -> str:
    return f"{url.scheme}://{url.netloc.decode('ascii')}"


class DPoPAuth(httpx.Auth):
    requires_response_body = True

    def __init__(self, provider: TokenProvider, *, audiences: Mapping[str, str] | None = None, discover: bool = True) -> None:
        self.provider = provider
        self.audiences = dict(audiences or {})
        self.discover = discover
        self._discovered: dict[str, str] = {}

    def _audience(self, url: httpx.URL) -> Generator[httpx.Request, httpx.Response, str]:
        text = str(url)
        for prefix, audience in sorted(self.audiences.items(), key=lambda kv: -len(kv[0])):
            if text.startswith(prefix):
                return audience
        origin = _origin(url)
        if origin in self._discovered:
            return self._discovered[origin]
        if not self.discover:
            raise DiscoveryError(f"no audience configured for {origin}")
        response = yield httpx.Request("GET", origin + "/.well-known/oauth-protected-resource")
        try:
            doc = response.json()
        except ValueError as exc:
            raise DiscoveryError(f"{origin} serves no protected resource metadata") from exc
        if response.status_code != 200 or not isinstance(doc, dict) or doc.get("resource") != origin:
            raise DiscoveryError(f"{origin} metadata does not name {origin} as its resource")
        if self.provider.sts_url not in (doc.get("authorization_servers") or []):
            raise DiscoveryError(f"{origin} does not trust {self.provider.sts_url}")
        self._discovered[origin] = origin
        return origin

    def auth_flow(self, request: httpx.Request) -> Flow:
        audience = yield from self._audience(request.url)
        token = yield from self.provider.token_flow(audience)
        nonces = self.provider.nonces
        response: httpx.Response | None = None
        for _ in range(2):
            request.headers["Authorization"] = f"DPoP {token}"
            request.headers["DPoP"] = self.provider.key.proof(
                request.method, str(request.url), nonce=nonces.get(request.url), access_token=token
            )
            response = yield request
            nonces.remember(request.url, response)
            if not is_nonce_challenge(response):
                return response
        return response
