"""What a started gateway holds open until it stops, built in the serving loop.

The store; a client for the STS (its JWKS) and for upstream OAuth servers; the revocation feed,
which the gateway follows in the store it holds, with no identity to present (and which tells
it when a task ends, ``tether.gateway.task_ends``); one token verifier per route, for the route's
own audience (``/routes/{name}``, and ``/mcp/{name}`` for an MCP route: the two kinds of route
have separate names and verifiers sharing the keys, feed, replay cache and policy); one
upstream connection pool per HTTP route, so a slow upstream exhausts only its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
import httpx

from tether.clock import Clock
from tether.config import Config
from tether.gateway.proxy import upstream_client
from tether.gateway.task_ends import TaskEndFeed, follow_store
from tether.identity.jwks_cache import UrlKeySource
from tether.metrics import count_epoch_refusal
from tether.policy.engine import PolicyEngine
from tether.resource.verifier import ResourceSettings, Verifier
from tether.store.protocol import Store
from tether.web.tls import client_trust

__all__ = ["Runtime", "open_runtime"]


@dataclass
class Runtime:
    store: Store
    http: httpx.AsyncClient
    feed: TaskEndFeed
    verifiers: dict[str, Verifier]
    upstream: dict[str, aiohttp.ClientSession]
    #: one verifier per MCP route, for its audience ``{gateway.url}/mcp/{name}``
    mcp_verifiers: dict[str, Verifier]

    async def aclose(self) -> None:
        await self.feed.aclose()
        for client in self.upstream.values():
            await client.close()
        await self.http.aclose()
        await self.store.aclose()


async def open_runtime(config: Config, store: Store, *, clock: Clock, policy: PolicyEngine) -> Runtime:
    settings = config.gateway
    ca_file = config.resolve(config.tls.ca_file) if config.tls.ca_file else None
    http = httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=10.0, verify=client_trust(ca_file))
    upstream = {route.name: upstream_client(route.max_connections) for route in config.routes}
    keys = UrlKeySource(config.issuer + "/jwks", http, ttl=300, min_refresh=5.0)
    stale = float(settings.stale_after)
    feed = follow_store(store, stale_after=stale, clock=clock)
    feed.start()

    async def verifier(audience: str, tags: tuple[str, ...]) -> Verifier:
        # the caller's certificate: the gateway's own TLS client's, or a [tls] trusted_proxies header (RFC 9440)
        resource = ResourceSettings(issuer=config.issuer, resource=audience, stale_after=stale, tags=tags,
                                    trusted_proxies=config.tls.trusted_proxies)  # fmt: skip
        made = Verifier(resource, http=http, clock=clock, replay=store, keys=keys, feed=feed, policy=policy)
        made.proofs.on_epoch_refusal = count_epoch_refusal
        await made.start()  # the replay cache's epoch, before any nonce (the feed is shared)
        return made

    verifiers = {route.name: await verifier(route.audience(settings.url), route.tags) for route in config.routes}
    mcp = {route.name: await verifier(route.audience(settings.url), route.tags) for route in config.mcp_routes}
    return Runtime(store, http, feed, verifiers, upstream, mcp)
