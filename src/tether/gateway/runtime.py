"""What a started gateway holds open until it stops, built in the serving loop.

The store; a client for the STS (its JWKS); the revocation feed, which the gateway follows in
the store it holds, with no identity to present; one token verifier per route, for the route's
own audience; one upstream connection pool per route, so a slow upstream exhausts only its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
import httpx

from tether.clock import Clock
from tether.config import Config
from tether.gateway.proxy import upstream_client
from tether.identity.jwks_cache import UrlKeySource
from tether.metrics import count_epoch_refusal
from tether.policy.engine import PolicyEngine
from tether.resource.revocations import RevocationFeed
from tether.resource.verifier import ResourceSettings, Verifier
from tether.store.protocol import Store

__all__ = ["Runtime", "open_runtime"]


@dataclass
class Runtime:
    store: Store
    http: httpx.AsyncClient
    feed: RevocationFeed
    verifiers: dict[str, Verifier]
    upstream: dict[str, aiohttp.ClientSession]

    async def aclose(self) -> None:
        await self.feed.aclose()
        for client in self.upstream.values():
            await client.close()
        await self.http.aclose()
        await self.store.aclose()


async def open_runtime(config: Config, store: Store, *, clock: Clock, policy: PolicyEngine) -> Runtime:
    settings = config.gateway
    http = httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=10.0)
    upstream = {route.name: upstream_client(route.max_connections) for route in config.routes}
    keys = UrlKeySource(config.issuer + "/jwks", http, ttl=300, min_refresh=5.0)
    stale = float(settings.stale_after)
    feed = RevocationFeed.from_store(store, stale_after=stale, clock=clock)
    feed.start()
    verifiers = {}
    for route in config.routes:
        resource = ResourceSettings(issuer=config.issuer, resource=route.audience(settings.url), stale_after=stale,
                                    tags=route.tags)  # fmt: skip
        verifiers[route.name] = Verifier(resource, http=http, clock=clock, replay=store, keys=keys, feed=feed, policy=policy)
        verifiers[route.name].proofs.on_epoch_refusal = count_epoch_refusal
        await verifiers[route.name].start()  # the replay cache's epoch, before any nonce (the feed is shared)
    return Runtime(store, http, feed, verifiers, upstream)
