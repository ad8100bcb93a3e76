"""``DPoPAuth``: an ``httpx.Auth`` (sync and async) that makes every request key-bound and hop-scoped.

Per request it picks the audience (a configured map, else RFC 9728 discovery, whose
``resource`` must equal the origin it was fetched for), gets a cached hop token for exactly
it, signs a proof with ``ath`` (RFC 9449 §4.2) and retries once on a nonce challenge (§9). A
configured audience matches only the same origin and a path at a segment boundary, so a token
never reaches a look-alike host; token fetches are serialised per provider.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from typing import Protocol

import anyio
import httpx

from tether.agent.exchange import RESUMED, Flow, Nonces, Pause, Steps, send_flow
from tether.agent.proof import DPoPKey
from tether.lru import LruCache

__all__ = [
    "DPoPAuth",
    "DiscoveryError",
    "FlowLock",
    "ProofKeyChooser",
    "SessionEnded",
    "TokenProvider",
    "proof_key",
    "url_matches",
]


class DiscoveryError(Exception):
    """The target's protected-resource metadata is missing or does not match."""


class SessionEnded(Exception):
    """The task session was completed: an auth it handed out refuses every further request locally."""


class FlowLock:
    """One lock for sync callers and one per event loop for async callers."""

    def __init__(self) -> None:
        self.sync = threading.Lock()
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()

    def for_loop(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._loops.get(loop)
        if lock is None:
            lock = self._loops[loop] = asyncio.Lock()
        return lock


class _Releasable(Protocol):
    def release(self) -> None: ...


class _Held:
    """A lock taken for a token fetch, released once: when the token is ready or the flow ends."""

    def __init__(self, lock: _Releasable) -> None:
        self._lock: _Releasable | None = lock

    def release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()


class TokenProvider(Protocol):
    key: DPoPKey
    nonces: Nonces
    sts_url: str
    lock: FlowLock

    def token_flow(self, audience: str) -> Flow:
        """A flow that returns an access token (``str``) for ``audience``."""
        ...


class ProofKeyChooser(Protocol):
    def proof_key(self, token: str) -> DPoPKey | None:
        """The key proving possession of ``token`` (RFC 9449), or ``None`` for a certificate-bound
        token without ``jkt``, sent as a bearer token over the mTLS connection (RFC 8705 §3)."""
        ...


def proof_key(provider: TokenProvider, token: str) -> DPoPKey | None:
    """The provider's choice when it makes one (an mTLS ``TaskSession``), else its DPoP key."""
    choose = getattr(provider, "proof_key", None)  # one attribute lookup per request, no isinstance
    if choose is None:
        return provider.key
    key: DPoPKey | None = choose(token)
    return key


def _origin(url: httpx.URL) -> str:
    port = url.port
    netloc = url.host if port is None else f"{url.host}:{port}"
    if ":" in url.host:
        netloc = f"[{url.host}]" if port is None else f"[{url.host}]:{port}"
    return f"{url.scheme}://{netloc}"


def url_matches(prefix: str, url: httpx.URL) -> bool:
    """Same scheme, host and port (userinfo ignored), and the path under the prefix's path."""
    base = httpx.URL(prefix)
    if (base.scheme, base.host, base.port) != (url.scheme, url.host, url.port):
        return False
    root = base.path.rstrip("/")
    return not root or url.path == root or url.path.startswith(root + "/")


class DPoPAuth(httpx.Auth):
    requires_response_body = True

    def __init__(self, provider: TokenProvider, *, audiences: Mapping[str, str] | None = None, discover: bool = True) -> None:
        self.provider = provider
        self.audiences = dict(audiences or {})
        self.discover = discover
        self._discovered: LruCache[str, str] = LruCache(256)  # origins whose metadata named them

    def _audience(self, url: httpx.URL) -> Generator[httpx.Request, httpx.Response, str]:
        for prefix, audience in sorted(self.audiences.items(), key=lambda kv: -len(kv[0])):
            if url_matches(prefix, url):
                return audience
        origin = _origin(url)
        known = self._discovered.get(origin)
        if known is not None:
            return known
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
        self._discovered.put(origin, origin)
        return origin

    def _token(self, url: httpx.URL) -> Flow:
        audience = yield from self._audience(url)
        token = yield from self.provider.token_flow(audience)
        return token

    def _flow(self, request: httpx.Request, unlock: Callable[[], None]) -> Flow:
        """The hop token (``unlock`` is called once it is in hand), then the request with a proof."""
        token = yield from self._token(request.url)
        unlock()
        provider = self.provider
        response = yield from send_flow(request, proof_key(provider, token), provider.nonces, access_token=token)
        return response

    def auth_flow(self, request: httpx.Request) -> Flow:
        return self._flow(request, lambda: None)

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Token fetches hold the provider's lock, so a burst of first requests makes one exchange."""
        lock = self.provider.lock.sync
        lock.acquire()
        held = _Held(lock)
        try:
            yield from _read_sync(self._flow(request, held.release))
        finally:
            held.release()

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """As ``sync_auth_flow``, under the provider's lock for this event loop."""
        lock = self.provider.lock.for_loop()
        await lock.acquire()
        held = _Held(lock)
        try:
            steps = Steps(self._flow(request, held.release))
            while steps.request is not None:
                if isinstance(steps.request, Pause):  # a held exchange's wait between polls
                    await anyio.sleep(steps.request.seconds)
                    steps.answer(RESUMED)
                    continue
                response = yield steps.request
                await response.aread()
                steps.answer(response)
        finally:
            held.release()


def _read_sync(flow: Flow) -> Generator[httpx.Request, httpx.Response, object]:
    """Drive a flow inside a sync auth flow, reading each response body before handing it back."""
    steps = Steps(flow)
    while steps.request is not None:
        if isinstance(steps.request, Pause):  # a held exchange's wait between polls
            time.sleep(steps.request.seconds)
            steps.answer(RESUMED)
            continue
        response = yield steps.request
        response.read()
        steps.answer(response)
    return steps.result
