"""Token exchange as httpx request flows, shared by the sync and async paths.

A flow is a generator that yields ``httpx.Request`` objects and receives the
responses, the pattern of ``httpx.Auth.auth_flow``: the same code then runs inside an
auth flow (sync or async client) or under a tiny driver. Each flow signs a fresh DPoP
proof per attempt and retries once when the server asks for a nonce (RFC 9449 §8).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import httpx

from tether.agent.proof import DPoPKey
from tether.clock import Clock, SystemClock
from tether.lru import LruCache

__all__ = [
    "ACCESS",
    "JWT",
    "TOKEN_EXCHANGE",
    "ExchangeError",
    "Flow",
    "IssuedToken",
    "Nonces",
    "exchange_flow",
    "is_nonce_challenge",
    "run_sync",
]

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"

Flow = Generator[httpx.Request, httpx.Response, Any]


class ExchangeError(Exception):
    """The STS refused an exchange; ``error`` is its RFC 6749 code."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.status = status
        self.error = error
        self.description = description


@dataclass(frozen=True)
class IssuedToken:
    value: str
    expires_at: float
    scope: frozenset[str]

    def usable(self, now: float, margin: float) -> bool:
        return now < self.expires_at - margin


class Nonces:
    """The last ``DPoP-Nonce`` each origin gave us (RFC 9449 §8.2: use it for the next proof), for the
    256 origins used last (a forgotten one costs one ``use_dpop_nonce`` round trip)."""

    def __init__(self) -> None:
        self._by_origin: LruCache[str, str] = LruCache(256)

    def get(self, url: httpx.URL) -> str | None:
        return self._by_origin.get(_origin(url))

    def remember(self, url: httpx.URL, response: httpx.Response) -> None:
        nonce = response.headers.get("dpop-nonce")
        if nonce:
            self._by_origin.put(_origin(url), nonce)


def _origin(url: httpx.URL) -> str:
    return f"{url.scheme}://{url.netloc.decode('ascii')}"


def is_nonce_challenge(response: httpx.Response) -> bool:
    if response.status_code == 401:
        return "use_dpop_nonce" in response.headers.get("www-authenticate", "")
    if response.status_code == 400 and response.headers.get("content-type", "").startswith("application/json"):
        try:
            return bool(response.json().get("error") == "use_dpop_nonce")
        except ValueError:
            return False
    return False


def exchange_flow(token_url: str, form: dict[str, str], key: DPoPKey, nonces: Nonces, *, clock: Clock | None = None) -> Flow:
    """POST an RFC 8693 exchange; returns an ``IssuedToken`` (``expires_at`` on ``clock``) or raises ``ExchangeError``."""
    url = httpx.URL(token_url)
    response: httpx.Response | None = None
    for _ in range(2):
        proof = key.proof("POST", token_url, nonce=nonces.get(url))
        response = yield httpx.Request("POST", url, data=form, headers={"DPoP": proof, "Accept": "application/json"})
        nonces.remember(url, response)
        if not is_nonce_challenge(response):
            break
    assert response is not None
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200 or not isinstance(body, dict) or "access_token" not in body:
        raise ExchangeError(response.status_code, str(body.get("error", "error")), str(body.get("error_description", "")))
    scope = frozenset(str(body.get("scope", "")).split())
    now = (clock or SystemClock()).now()
    return IssuedToken(str(body["access_token"]), now + float(body.get("expires_in", 0)), scope)


def run_sync(flow: Flow, client: httpx.Client) -> Any:
    """Drive a flow with a synchronous client."""
    try:
        request = next(flow)
        while True:
            response = client.send(request)
            response.read()
            request = flow.send(response)
    except StopIteration as done:
        return done.value


async def run_async(flow: Flow, client: httpx.AsyncClient) -> Any:
    """Drive a flow with an asynchronous client."""
    try:
        request = next(flow)
        while True:
            response = await client.send(request)
            await response.aread()
            request = flow.send(response)
    except StopIteration as done:
        return done.value
