"""The gateway as an upstream's OAuth client: token requests (RFC 6749 §4.4, §6; RFC 8693 §2), RFC 7009 revocation.

Three grants, each for one call's narrowest scope and the route's ``resource`` (RFC 8707 §2):

- ``client_credentials`` (§4.4): the client alone;
- ``refresh_token`` (§6): the route's vaulted refresh token (``tether vault oauth-connect``).
  When the upstream rotates it (§10.4, RFC 9700 §4.14.2), the new one is sealed into the vault
  — a new version, audited — *before* the access token is used: a crash after the upstream
  answered must not leave the vault holding a refresh token that is already dead. Refreshes
  of one route are single-flight, so a rotating upstream never sees the same token twice.
- ``token_exchange`` (RFC 8693 §2.1): a subject token the gateway signs naming the agent and the
  task (``tether.gateway.oauth_assertion``).

The client authenticates as configured (RFC 6749 §2.3.1 basic or post, RFC 7523 §2.2
``private_key_jwt`` with a fresh assertion, or ``none``), the same way at the revocation endpoint.
Everything it reads from the vault goes through ``SecretCache`` (which registers each value for
log redaction); the token endpoint's answer never leaves this module except as ``UpstreamToken``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx

from tether.clock import Clock
from tether.gateway.oauth_assertion import client_assertion, load_signing_key, subject_token
from tether.gateway.oauth_config import OAuthCredentials
from tether.gateway.oauth_wire import (
    MAX_RESPONSE_BYTES,
    TokenUnavailable,
    UpstreamToken,
    basic_authorization,
    parse_token_response,
    rotated_refresh_token,
)
from tether.gateway.routes import GatewayRoute
from tether.gateway.vault import SecretCache
from tether.urns import JWT_BEARER, TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS, TOKEN_TYPE_JWT

__all__ = ["Rotate", "UpstreamOAuth"]

#: seals a rotated refresh token into the vault: (route, vault entry name, new value)
Rotate = Callable[[str, str, str], Awaitable[None]]


def _oauth(route: GatewayRoute) -> OAuthCredentials:
    if route.oauth is None:
        raise ValueError(f"route `{route.name}` has no oauth table")
    return route.oauth


class UpstreamOAuth:
    def __init__(self, http: httpx.AsyncClient, secrets: SecretCache, rotate: Rotate, *, clock: Clock,
                 retired: Callable[[str], None] | None = None) -> None:  # fmt: skip
        """``retired`` is told each refresh token rotated away (dead upstream: log redaction may drop it)."""
        self.http = http
        self.secrets = secrets
        self.rotate = rotate
        self.clock = clock
        self.retired = retired
        self._refreshing: dict[str, asyncio.Lock] = {}
        #: refresh tokens rotated, per route (the benchmark and tests read it)
        self.rotations: dict[str, int] = {}

    async def also_scrub(self, route: GatewayRoute) -> tuple[str, ...]:
        """The route's long-lived values an upstream might echo beside the access token (scrubbed too)."""
        oauth = _oauth(route)
        names = [n for n in (oauth.client_secret, oauth.refresh_token) if n]
        return tuple([await self.secrets.get(name) for name in names])

    async def fetch(self, route: GatewayRoute, *, scopes: tuple[str, ...], agent: str, task: str) -> UpstreamToken:
        """One access token for ``scopes`` (``TokenUnavailable``/``TokenRefused``, ``MissingSecret``)."""
        oauth = _oauth(route)
        form: dict[str, str] = {}
        if scopes:
            form["scope"] = " ".join(scopes)
        if oauth.resource:
            form["resource"] = oauth.resource
        if oauth.grant == "refresh_token":
            lock = self._refreshing.setdefault(route.name, asyncio.Lock())
            async with lock:  # single-flight: each refresh token is presented once
                return await self._refresh(route, oauth, form, scopes)
        if oauth.grant == "token_exchange":
            key = load_signing_key(oauth.private_key, await self.secrets.get(oauth.private_key))
            subject = subject_token(key, client_id=oauth.client_id, token_endpoint=oauth.token_endpoint, agent=agent,
                                    task=task, route=route.name, now=self.clock.now())  # fmt: skip
            form |= {"grant_type": TOKEN_EXCHANGE, "subject_token_type": TOKEN_TYPE_JWT,
                     "requested_token_type": TOKEN_TYPE_ACCESS, "subject_token": subject}  # fmt: skip
        else:
            form["grant_type"] = "client_credentials"
        status, body = await self._post(route, oauth.token_endpoint, form)
        return parse_token_response(status, body, requested=scopes, route=route.name,
                                    exchange=oauth.grant == "token_exchange")  # fmt: skip

    async def _refresh(
        self, route: GatewayRoute, oauth: OAuthCredentials, form: dict[str, str], scopes: tuple[str, ...]
    ) -> UpstreamToken:
        self.secrets.forget(oauth.refresh_token)  # the newest version, never a cached one already rotated away
        current = await self.secrets.get(oauth.refresh_token)
        form |= {"grant_type": "refresh_token", "refresh_token": current}
        status, body = await self._post(route, oauth.token_endpoint, form)
        rotated = rotated_refresh_token(status, body)
        if rotated is not None and rotated != current:
            # sealed before the rest of the answer is judged (the one presented is dead now) and before
            # the access token is used; a store failure fails the call (StoreError)
            await self.rotate(route.name, oauth.refresh_token, rotated)
            self.secrets.forget(oauth.refresh_token)
            self.rotations[route.name] = self.rotations.get(route.name, 0) + 1
            if self.retired is not None:
                self.retired(current)
        return parse_token_response(status, body, requested=scopes, route=route.name)

    async def revoke(self, route: GatewayRoute, token: str) -> bool:
        """RFC 7009 §2.1 revocation of one access token; True when the upstream answered 200 (§2.2)."""
        oauth = _oauth(route)
        status, _ = await self._post(route, oauth.revocation_endpoint,
                                     {"token": token, "token_type_hint": "access_token"})  # fmt: skip
        return status == 200

    async def _authenticate(self, oauth: OAuthCredentials, form: dict[str, str], headers: dict[str, str]) -> None:
        """Client authentication as configured (RFC 6749 §2.3.1; RFC 7523 §2.2)."""
        if oauth.client_auth == "client_secret_basic":
            headers["Authorization"] = basic_authorization(oauth.client_id, await self.secrets.get(oauth.client_secret))
            return
        form["client_id"] = oauth.client_id
        if oauth.client_auth == "client_secret_post":
            form["client_secret"] = await self.secrets.get(oauth.client_secret)
        elif oauth.client_auth == "private_key_jwt":
            key = load_signing_key(oauth.private_key, await self.secrets.get(oauth.private_key))
            form["client_assertion_type"] = JWT_BEARER
            form["client_assertion"] = client_assertion(key, client_id=oauth.client_id,
                                                        token_endpoint=oauth.token_endpoint, now=self.clock.now())  # fmt: skip

    async def _post(self, route: GatewayRoute, url: str, fields: dict[str, str]) -> tuple[int, bytes]:
        """POST a form within the route's ``timeout``; the status and at most ``MAX_RESPONSE_BYTES``
        of the body. A transport failure is ``TokenUnavailable`` naming only its kind (the form carries secrets)."""
        oauth = _oauth(route)
        form = dict(fields)
        headers = {"Accept": "application/json"}
        await self._authenticate(oauth, form, headers)
        try:
            async with asyncio.timeout(route.timeout):
                async with self.http.stream("POST", url, data=form, headers=headers) as response:
                    body = b""
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_RESPONSE_BYTES:
                            raise TokenUnavailable("upstream authorization is unavailable",
                                                   debug=f"route {route.name}: oversized answer")  # fmt: skip
                    return response.status_code, body
        except TimeoutError:
            raise TokenUnavailable("upstream authorization is unavailable",
                                   debug=f"route {route.name}: {url} timed out") from None  # fmt: skip
        except (httpx.HTTPError, OSError) as exc:
            raise TokenUnavailable("upstream authorization is unavailable",
                                   debug=f"route {route.name}: {url} {type(exc).__name__}") from None  # fmt: skip
