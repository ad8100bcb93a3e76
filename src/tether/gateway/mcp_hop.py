"""``credential = "hop"``: the gateway mints a tether token for a tether-protected MCP upstream.

The agent's own token is never sent upstream (MCP authorization spec, "Token Passthrough"). For
a hop route the gateway instead makes an RFC 8693 delegation exchange (§2.1): the agent's
token for the route (the one it presented to the gateway, verified there) as
``subject_token``, the gateway's own workload JWT as ``actor_token``, and the upstream's
audience as ``resource`` (RFC 8707). The STS nests the gateway into ``act`` and binds the new
token to the gateway's own DPoP key (RFC 9449): the upstream (a server behind
``tether.mcp.protect``) sees the agent's task and subject with the gateway as the current
actor, and a proof from a key the agent never held.

The exchange is ``tether.agent.onward.Onward`` (one per agent session, on the gateway's one
identity and DPoP key); ``HopTokens`` adapts it, for one agent session, to the MCP client auth
(``tether.agent.mcp_auth.McpAuth`` over ``httpx2``), so every upstream request carries a
fresh proof and the token is renewed near expiry. The gateway also runs the exchange itself
(``HopTokens.ready``) before each use of the session, so an STS refusal reaches the agent as
a JSON-RPC refusal naming the STS's error code, not as a broken upstream connection.

Task design: the STS grants a delegation only for an audience the task lists and only to an
actor registered for the subject token's audience. A task using a hop route therefore lists
both the gateway's route URL (``{gateway.url}/mcp/{name}``) and the upstream's audience,
and the deployment registers the gateway's workload for the route URL::

    [[resources]]
    uri = "https://gateway.example/mcp/notes"
    principals = ["spiffe://example.org/tether-gateway"]

A task that does not list the upstream is refused (``invalid_target``) on its first call.
When the task ends the session is swept (``mcp_sessions``) and the upstream refuses the
minted token anyway (its revocation feed lists the task).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import httpx
from starlette.datastructures import Headers

from tether.agent.auth import FlowLock
from tether.agent.exchange import ExchangeError, Flow, Nonces, run_async
from tether.agent.identity import FileIdentity, IdentitySource, WorkloadApiIdentity
from tether.agent.mcp_auth import McpAuth
from tether.agent.onward import Onward
from tether.agent.proof import DPoPKey
from tether.clock import Clock
from tether.config import Config
from tether.errors import (
    AccessDenied,
    ConfigError,
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    InvalidToken,
    OAuthError,
    TemporarilyUnavailable,
    TooManyRequests,
    UnauthorizedClient,
)
from tether.gateway.mcp_routes import McpRoute
from tether.mcp.messages import ACCESS_DENIED
from tether.mcp.upstream import UpstreamError
from tether.web.dpop_request import authorization

__all__ = ["HopCredentials", "HopTokens", "gateway_identity", "incoming_token", "not_offered", "refusal_of", "upstream_refusal"]

log = logging.getLogger("tether.gateway")

#: the STS's RFC 6749 / 8693 error codes the agent is shown as the same refusal
_KNOWN: dict[str, type[OAuthError]] = {
    cls.error: cls
    for cls in (InvalidTarget, AccessDenied, InvalidGrant, InvalidScope, InvalidRequest, InvalidClient,
                UnauthorizedClient, TooManyRequests, TemporarilyUnavailable)
}  # fmt: skip
#: tokens one session's cache holds (one upstream audience; a renewed incoming token replaces its entry)
_SESSION_TOKENS = 4
#: refusals that say the gateway (its identity or registration) is wrong, not the agent's task
_GATEWAYS_DOING = ("invalid_client", "unauthorized_client")


def gateway_identity(config: Config, env: Mapping[str, str] | None = None) -> IdentitySource | None:
    """The gateway's workload identity for hop routes; None when the configuration has none.

    ``[gateway] identity_file`` (relative to the config file's directory, re-read on every
    exchange since spiffe-helper rewrites it as it rotates), else the SPIFFE Workload API when
    ``SPIFFE_ENDPOINT_SOCKET`` is set. A hop route without either is a ``ConfigError`` naming
    the key, raised when the gateway is built (``tether gateway`` exits with it).
    """
    env = os.environ if env is None else env
    hops = [route.name for route in config.mcp_routes if route.hop]
    if not hops:
        return None
    if config.gateway.identity_file:
        return FileIdentity(config.resolve(config.gateway.identity_file))
    if env.get("SPIFFE_ENDPOINT_SOCKET"):
        try:
            return WorkloadApiIdentity(env["SPIFFE_ENDPOINT_SOCKET"])
        except RuntimeError as exc:
            raise ConfigError("gateway.identity_file", str(exc)) from exc
    raise ConfigError(
        "gateway.identity_file",
        f'MCP route `{hops[0]}` has credential = "hop": the gateway needs a workload identity to act for the agent '
        "(set [gateway] identity_file to a JWT-SVID file, or SPIFFE_ENDPOINT_SOCKET for the Workload API)",
    )


def incoming_token(headers: Mapping[str, str]) -> str | None:
    """The access token of a request the gateway has verified (``Authorization: DPoP <token>``, or
    ``Bearer`` for a certificate-bound token without ``jkt``, RFC 8705 §3: verified against the
    agent's certificate, it is the delegation's subject token like any other)."""
    if not isinstance(headers, Headers):
        return None
    try:
        scheme, token = authorization(headers)
    except OAuthError:
        return None
    return token if scheme.lower() in ("dpop", "bearer") and token else None


def refusal_of(exc: ExchangeError, route: McpRoute) -> OAuthError:
    """The STS's refusal of a delegation exchange as the refusal the agent sees (same error code).

    A refusal that is the gateway's doing (its identity is not accepted) or an STS failure is
    marked ``blameless``: it does not count toward the task's refusal burst."""
    target = route.upstream_audience
    said = f"{exc.error}: {exc.description}" if exc.description else exc.error
    message = f"the STS refused a token for the MCP upstream of route `{route.name}` ({target}): {said}"
    kind = TemporarilyUnavailable if exc.status >= 500 else _KNOWN.get(exc.error, AccessDenied)
    refusal = kind(message, debug=f"delegation exchange for {target}: {exc.status} {said}"[:300])
    if exc.error in _GATEWAYS_DOING or exc.status >= 500:
        refusal.audit["blameless"] = True
        log.error("MCP route %s: the STS refused the gateway's delegation exchange: %s", route.name, said[:300])
    return refusal


def not_offered(route: McpRoute, tool: str) -> AccessDenied | None:
    """A hop route's upstream lists tools per caller (``tether.mcp.protect`` shows only what the
    minted token's scopes and the upstream's Cedar policy grant): a pinned tool missing from this
    session's listing is the upstream refusing this caller, not drift (no alert, not blameless)."""
    if not route.hop:
        return None
    refusal = AccessDenied(f"the tether-protected upstream does not grant tool `{tool[:128]}` to this task")
    refusal.audit["upstream_refused"] = True
    return refusal


def upstream_refusal(route: McpRoute, exc: UpstreamError) -> AccessDenied | None:
    """A hop route's upstream refused a call itself (``tether.mcp.protect``: JSON-RPC ``-32003``, its
    Cedar policy or scope convention): the agent sees an ``access_denied`` with the upstream's words."""
    if not route.hop or exc.code != ACCESS_DENIED:
        return None
    refusal = AccessDenied(exc.message, debug=f"upstream refusal: {exc.message}"[:300])
    refusal.audit["upstream_refused"] = True
    return refusal


class HopCredentials:
    """The gateway's side of every hop route: its workload identity and its one DPoP key."""

    def __init__(self, sts_url: str, identity: IdentitySource, http: httpx.AsyncClient, *,
                 clock: Clock | None = None) -> None:  # fmt: skip
        self.sts_url = sts_url.rstrip("/")
        self.identity = identity
        self.http = http
        self.clock = clock
        self.key = DPoPKey()
        self.nonces = Nonces()

    @property
    def jkt(self) -> str:
        """The thumbprint of the gateway's DPoP key (every minted token's ``cnf.jkt``)."""
        return self.key.jkt

    def tokens(self, route: McpRoute) -> HopTokens:
        """The token provider of one new upstream session of ``route``."""
        onward = Onward(self.sts_url, self.identity, key=self.key, max_entries=_SESSION_TOKENS, clock=self.clock)
        onward.nonces = self.nonces  # the STS's nonce is the gateway's, whichever session asks
        return HopTokens(onward, self.http, route)


class HopTokens:
    """Hop tokens for one agent session's upstream connection (``McpTokenProvider`` for ``McpAuth``).

    Each session has its own ``Onward`` (and so its own token cache, which dies with it) on
    the gateway's shared key: two sessions of one task never displace each other's token.
    ``incoming`` is the agent's token for the route, replaced by ``ready`` on every use (the
    agent renews it; the cache then replaces the token derived from the older one).
    """

    def __init__(self, onward: Onward, http: httpx.AsyncClient, route: McpRoute) -> None:
        self._onward = onward
        self._http = http
        self.route = route
        self.audience = route.upstream_audience
        self.key = onward.key
        self.nonces = onward.nonces
        self.sts_url = onward.sts_url
        self.lock = FlowLock()  # one exchange at a time for this session (others are not held up)
        self.incoming = ""
        self._auths: list[McpAuth] = []

    def token_flow(self, audience: str) -> Flow:
        if audience != self.audience or not self.incoming:  # McpAuth asks only for the configured audience
            raise InvalidRequest(f"no hop token for {audience[:200]} on MCP route `{self.route.name}`")
        token = yield from self._onward.token_flow(self.incoming, audience)
        return token

    def forget(self, audience: str) -> None:
        if self.incoming:
            self._onward.forget(self.incoming, audience)

    async def ready(self, incoming: str | None) -> None:
        """Take the agent's current token and make sure a hop token for the upstream is in hand.

        Raises the STS's refusal as an ``OAuthError`` (``refusal_of``); an STS or identity
        that cannot be reached is ``TemporarilyUnavailable``."""
        if not incoming:
            raise InvalidToken("the request carries no token to delegate")
        self.incoming = incoming
        async with self.lock.for_loop():
            try:
                await run_async(self.token_flow(self.audience), self._http)
            except ExchangeError as exc:
                raise refusal_of(exc, self.route) from None
            except httpx.HTTPError as exc:
                raise TemporarilyUnavailable("the STS cannot be reached to mint the upstream's token",
                                             debug=type(exc).__name__) from None  # fmt: skip
            except (OSError, ValueError, RuntimeError) as exc:  # IdentitySource.token's failures
                log.error("MCP route %s: the gateway's workload identity is unavailable: %s", self.route.name,
                          type(exc).__name__)  # fmt: skip
                unavailable = TemporarilyUnavailable("the gateway's workload identity is unavailable; retry shortly",
                                                     debug=type(exc).__name__)  # fmt: skip
                unavailable.audit["blameless"] = True
                raise unavailable from None

    def auth(self) -> McpAuth:
        """An ``httpx2.Auth`` for the upstream connection: this session's hop token and a fresh proof per request."""
        made = McpAuth(self, audiences={self.route.url: self.audience}, discover=False)
        self._auths.append(made)
        return made

    def close(self) -> None:
        """The session ended: its auth refuses every further request and its cached token is dropped."""
        for made in self._auths:
            made.close()
        self.forget(self.audience)
