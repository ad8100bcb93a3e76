"""Following each federation peer's revocation feed: linked tasks end when the peer's do (SECURITY FED-03).

One ``PeerFollower`` per ``[[federation]]`` peer reads the peer's ``/revocations/stream`` as an
ordinary feed subscriber (``resource.revocations.RevocationFeed``): a fresh JWT-SVID of
``feed_principal`` per connect, resuming from its cursor after a disconnect; after a restart it
starts from the beginning and the peer replays its live entries (ending is idempotent). The
peer lists ``feed_principal`` in its ``[revocations] subscribers`` and trusts this deployment's
trust domain to authenticate it.

Each entry ends the local tasks linked to it (``Store.linked_tasks``): a ``task`` entry every
task linked to that foreign task, a ``jti`` entry every task opened or joined from that foreign
token. They end through ``sts.tasks.move_task`` (cancelled, audited with the principal
``federation:<peer>``), so this deployment's own feed then revokes every token derived here and
its resource servers and gateway see it. An entry counts as applied only once its tasks have
ended: a store that cannot answer makes the feed reconnect and the entry come again.

``fresh(peer, now)`` (``federation.freshness.PeerFeeds``) is true only while the peer's feed was
heard, an entry or a heartbeat, within its ``stale_after``; the exchange refuses the peer's
agents otherwise (fail closed). Going stale and recovering are logged once each.

With ``tether serve --workers N`` every worker follows every peer: freshness gates each
worker's own exchanges, so each must know it first-hand (a freshness carried through the store
would itself need a heartbeat, and would lag by its period). Ending a task twice is harmless:
the store ends it once and the other workers find it ended.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping
from typing import Any

import httpx

from tether.agent.identity import DevIdentity, FileIdentity, IdentitySource
from tether.background import cancel
from tether.config import Config
from tether.config.federation import FederationPeer
from tether.errors import ConfigError
from tether.identity.dev_issuer import DevTrustDomain
from tether.metrics import FEDERATION_FEED_AGE, FEDERATION_FEED_FRESH, FEDERATION_TASKS_ENDED
from tether.resource.revocations import RevocationFeed
from tether.rules.principal import spiffe_trust_domain
from tether.sts.context import StsContext
from tether.sts.federation import end_linked_task

__all__ = ["FederationFeeds", "PeerFollower", "check_feed_identities", "feed_identity"]

log = logging.getLogger("tether.federation")

#: the dev trust domain ``tether init`` creates when ``[dev] trust_domain`` does not name one
_DEFAULT_DOMAIN = "tether.local"


def check_feed_identities(config: Config) -> None:
    """``ConfigError`` for a peer whose ``feed_principal`` this deployment cannot mint nor read from a file."""
    domain = config.dev.trust_domain or _DEFAULT_DOMAIN
    for index, peer in enumerate(config.federation):
        if peer.feed_identity_file is None and spiffe_trust_domain(peer.feed_principal) != domain:
            raise ConfigError(
                f"federation[{index}].feed_principal",
                f"is not in this deployment's dev trust domain `{domain}`: set feed_identity_file",
            )


def feed_identity(peer: FederationPeer, index: int, config: Config, master: bytes, ctx: StsContext) -> IdentitySource:
    """Who this deployment is at the peer's feed: ``feed_identity_file`` (a JWT-SVID kept fresh by a
    SPIFFE helper) or, when ``feed_principal`` is in this deployment's dev trust domain, an SVID
    minted here per connect."""
    if peer.feed_identity_file is not None:
        return FileIdentity(peer.feed_identity_file, peer.feed_principal)
    domain = config.dev.trust_domain or _DEFAULT_DOMAIN
    if spiffe_trust_domain(peer.feed_principal) != domain or not DevTrustDomain.key_path(config.data_dir, domain).exists():
        raise ConfigError(
            f"federation[{index}].feed_principal",
            f"is not in this deployment's dev trust domain `{domain}`: set feed_identity_file",
        )
    return DevIdentity(DevTrustDomain.load(config.data_dir, domain, master), peer.feed_principal, ttl=60, clock=ctx.clock)


class PeerFollower:
    """One peer's feed, and the linked tasks it ends here."""

    def __init__(self, peer: FederationPeer, ctx: StsContext, http: httpx.AsyncClient, identity: IdentitySource,
                 *, reconnect_delay: float = 0.2) -> None:  # fmt: skip
        self.peer = peer
        self._ctx = ctx
        self.feed = RevocationFeed(peer.issuer, http, identity=identity, audience=peer.issuer,
                                   stale_after=peer.stale_after, clock=ctx.clock, reconnect_delay=reconnect_delay)  # fmt: skip
        self.feed.on_revocation = self.apply
        # a foreign token lives at most max_token_lifetime here (and its iat precedes its task's
        # end): an entry kept that long past its arrival, with both clocks' skew, covers every
        # token it could refuse, so a peer cannot make this view grow with far-future entries
        settings = ctx.settings
        self.feed.keep_at_most = settings.max_token_lifetime + 2 * settings.skew
        #: what was last logged: ``None`` before the feed was first heard
        self.was_fresh: bool | None = None
        self.ended = 0

    def fresh(self, now: float) -> bool:
        return self.feed.fresh(now)

    def revoked(self, *, task: str | None, jti: str | None) -> bool:
        """Whether the peer's feed said this foreign task ended or this token was revoked (kept until
        what it covers expires): a token of an ended foreign task must open nothing here."""
        return (jti is not None and jti in self.feed.jtis) or (task is not None and task in self.feed.tasks)

    async def apply(self, entry: Mapping[str, Any]) -> None:
        """End every active local task linked to the entry's foreign task or token."""
        kind, value = entry.get("kind"), entry.get("value")
        if not isinstance(value, str) or kind not in ("task", "jti"):
            return
        store, name = self._ctx.store, self.peer.name
        if kind == "task":
            linked = await store.linked_tasks(name, foreign_task=value)
        else:
            linked = await store.linked_tasks(name, foreign_jti=value)
        for task_id in linked:
            await self._end(task_id, {"federation": name, f"foreign_{kind}": value})

    async def _end(self, task_id: str, detail: dict[str, Any]) -> None:
        if not await end_linked_task(self._ctx, self.peer.name, task_id, detail):
            return
        self.ended += 1
        FEDERATION_TASKS_ENDED.labels(peer=self.peer.name).inc()
        log.info("linked task %s of peer %s ended: the peer revoked what it came from", task_id, self.peer.name)

    def observe(self, now: float) -> None:
        """Publish the feed's state and log a change of it (once per change)."""
        fresh = self.fresh(now)
        heard = self.feed.last_heard
        FEDERATION_FEED_FRESH.labels(peer=self.peer.name).set(1 if fresh else 0)
        if heard is not None:
            FEDERATION_FEED_AGE.labels(peer=self.peer.name).set(max(0.0, now - heard))
        if fresh == self.was_fresh or (not fresh and self.was_fresh is None):
            return
        if fresh:
            again = " again" if self.was_fresh is False else ""
            log.warning("revocation feed of peer %s is current%s: its agents are served", self.peer.name, again)
        else:
            log.warning("revocation feed of peer %s went stale (nothing heard for %ds): refusing its agents",
                        self.peer.name, self.peer.stale_after)  # fmt: skip
        self.was_fresh = fresh


class FederationFeeds:
    """Every peer's follower (``PeerFeeds``), started and stopped with the STS."""

    def __init__(self, followers: Mapping[str, PeerFollower], ctx: StsContext,
                 clients: tuple[httpx.AsyncClient, ...] = ()) -> None:  # fmt: skip
        self.followers = dict(followers)
        self._ctx = ctx
        self._clients = clients
        self._watch: asyncio.Task[None] | None = None

    @classmethod
    def for_config(cls, config: Config, ctx: StsContext, http: httpx.AsyncClient, master: bytes) -> FederationFeeds:
        """A follower per peer: over ``http``, or a client trusting only ``bundle_ca_file`` (the
        peer's private CA) when the peer names one."""
        followers: dict[str, PeerFollower] = {}
        clients: list[httpx.AsyncClient] = []
        for index, peer in enumerate(config.federation):
            identity = feed_identity(peer, index, config, master, ctx)
            client = http
            if peer.bundle_ca_file is not None:
                verify = ssl.create_default_context(cafile=str(peer.bundle_ca_file))
                client = httpx.AsyncClient(verify=verify, follow_redirects=False, timeout=httpx.Timeout(5.0), trust_env=False)
                clients.append(client)
            followers[peer.name] = PeerFollower(peer, ctx, client, identity)
        return cls(followers, ctx, tuple(clients))

    def fresh(self, peer: str, now: float) -> bool:
        follower = self.followers.get(peer)
        return follower is not None and follower.fresh(now)

    def revoked(self, peer: str, *, task: str | None, jti: str | None, now: float) -> bool:
        """For the exchange, before it links a foreign token: ``True`` if ``peer`` revoked its task or
        the token itself, or if the peer is not followed or stale (nothing can be known: fail closed)."""
        follower = self.followers.get(peer)
        return follower is None or not follower.fresh(now) or follower.revoked(task=task, jti=jti)

    def states(self, now: float) -> dict[str, bool]:
        return {name: follower.fresh(now) for name, follower in self.followers.items()}

    def start(self) -> None:
        for name, follower in self.followers.items():
            log.info("following the revocation feed of peer %s at %s", name, follower.peer.issuer)
            follower.feed.start()
        if self._watch is None and self.followers:
            self._watch = asyncio.create_task(self._observe(), name="tether-federation-feeds")

    async def _observe(self) -> None:
        tick = max(0.1, min(1.0, min(f.peer.stale_after for f in self.followers.values()) / 4))
        while True:
            now = self._ctx.now()
            for follower in self.followers.values():
                follower.observe(now)
            await asyncio.sleep(tick)

    async def aclose(self) -> None:
        task, self._watch = self._watch, None
        await cancel(task)
        for follower in self.followers.values():
            await follower.feed.aclose()
        for client in self._clients:
            await client.aclose()
