"""What every STS use case shares: settings, store, keys, identity, proofs, clock, audit.

Use cases live in their own modules (``exchange``, ``tasks``, ``introspection``) and
take this context; none of them touches HTTP. Refusals are audited here, in one
place, with the error code and the internal reason — never a token value.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from tether.audit.anonymous import AnonymousRefusals
from tether.audit.chain import AuditEvent
from tether.clock import Clock
from tether.errors import AccessDenied, InvalidClient, InvalidGrant, InvalidToken, OAuthError
from tether.federation.freshness import ClosedFeeds, PeerFeeds
from tether.identity.approvers import ApproverVerifier
from tether.identity.checks import IdentityError
from tether.identity.jwks_cache import KeySource
from tether.identity.verifier import IdentityVerifier
from tether.identity.x509 import CertificateAuthenticator
from tether.keys.keyring import KeyRing, SigningKey
from tether.lru import LruCache
from tether.model import AccessToken, Approval, Task, WorkloadIdentity
from tether.policy.engine import Decision, PolicyEngine
from tether.policy.entities import PolicyRequest
from tether.proofs import ProofChecker
from tether.rules.claims import Expected, verify_access_token
from tether.rules.jws import JWSError, PublicKey
from tether.store.protocol import Store
from tether.sts.health import SharedCheck
from tether.sts.settings import StsSettings

__all__ = ["StsContext", "new_jti", "spend_key"]

log = logging.getLogger("tether.sts")


def new_jti() -> str:
    """A unique token id: the issue time in milliseconds (12 hex digits), then 80 random bits.

    The time prefix keeps the ``tokens`` primary-key index inserting at one spot, so a
    group commit writes one index page for its tokens instead of one random page each
    (a page per token was most of the write-ahead log written per exchange). A jti need
    only be unique (RFC 7519 §4.1.7); the wall-clock time it reveals is about the token's ``iat``.
    """
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_urlsafe(10)}"


def spend_key(identity: WorkloadIdentity) -> tuple[str, int] | None:
    """The single-use key of a workload JWT's ``jti`` — one namespace for every endpoint.

    A JWT-SVID or assertion redeemed at ``/token`` cannot then authenticate at
    ``/introspect`` or ``/revoke``, nor the other way round. The mark outlives the
    token (its ``exp`` plus a margin) so the jti cannot be reused while the token is valid.
    """
    if identity.jti is None:
        return None
    digest = hashlib.sha256(f"jti\x00{identity.issuer}\x00{identity.jti}".encode()).hexdigest()
    return digest, identity.exp + 600


def _no_risk(principal: str) -> int:
    return 0


@dataclass
class StsContext:
    settings: StsSettings
    store: Store
    keyring: KeyRing
    identity: IdentityVerifier
    proofs: ProofChecker
    clock: Clock
    policy: PolicyEngine
    risk: Callable[[str], int] = _no_risk
    #: token → (claims, kid, the public JWK that verified it)
    verified: LruCache[str, tuple[AccessToken, str, Mapping[str, Any]]] = field(default_factory=lambda: LruCache(50_000))
    tasks: LruCache[str, Task] = field(default_factory=lambda: LruCache(20_000))
    #: unattributed refusals, counted per source and interval (``tether.audit.anonymous``)
    anonymous: AnonymousRefusals | None = None
    #: the effective settings and their sources (``tether.sts.effective``), for ``GET /settings``
    effective: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: ``/healthz``'s store check, shared by concurrent callers and reused for a second
    health: SharedCheck = field(init=False, repr=False)
    #: client authentication by certificate (RFC 8705 §2), from the trust domains' X.509 bundles
    #: and the registered clients' certificates
    certificates: CertificateAuthenticator = field(default_factory=lambda: CertificateAuthenticator({}, {}))
    #: HMAC keys derived from the master key: approvals' MACs and one-time links (``rules.approval_seal``)
    approval_key: bytes = b""
    link_key: bytes = b""
    #: the operator console's sessions, CSRF tokens and login links (``rules.console_session``)
    console_key: bytes = b""
    #: the organisation's OIDC provider for approvers (``identity.approvers``); ``None`` until started
    approvers: ApproverVerifier | None = None
    #: the vaulted secrets' values, redacted from what approvers see (``sts.vault_values``)
    vault_values: Callable[[], Awaitable[tuple[str, ...]]] | None = None
    #: called (not awaited by the token response) for each newly held request: the webhook (``sts.approval_webhook``)
    on_hold: Callable[[Approval, Task], None] | None = None
    #: whether each federation peer's revocation feed is current (``federation.freshness``): closed until followed
    federation: PeerFeeds = field(default_factory=ClosedFeeds)
    #: each federation peer's token-signing key source, by peer name, made on first use (``sts.federation``)
    peer_keys: dict[str, KeySource] = field(default_factory=dict)
    #: the client outbound fetches share (a peer's JWKS); ``None`` where nothing is fetched
    http: httpx.AsyncClient | None = None

    def __post_init__(self) -> None:
        self.health = SharedCheck(self._ping)
        if self.anonymous is None:
            self.anonymous = AnonymousRefusals(self._append, interval=self.settings.refusal_interval,
                                               max_buckets=self.settings.refusal_buckets)  # fmt: skip

    async def _ping(self) -> None:
        await self.store.ping()

    async def _append(self, event: AuditEvent, now: float) -> None:
        await self.store.append_audit(event, now=now)

    def now(self) -> float:
        return self.clock.now()

    def authorize(self, request: PolicyRequest, *, refusal: str = "denied by policy", holds: bool = False) -> Decision:
        """Evaluate Cedar for ``request``; a deny raises ``AccessDenied`` carrying the decision for the audit.

        ``holds``: the caller holds a decision that names ``@approval`` groups (``sts.holds.gate``:
        the token exchange and its tool call). Any other caller (``create_task``, ``admin``) has no
        held path, so such a decision is refused (APR-01, fail closed), never allowed unasked."""
        return self._enforce(self.policy.authorize(request), refusal, holds=holds)

    def authorize_memo(self, key: Hashable, build: Callable[[], PolicyRequest]) -> Decision:
        """``authorize(build())`` through the engine's memo (``PolicyEngine.authorize_memo``): the
        token exchange's decision, which ``sts.holds.gate`` holds when it names approval groups."""
        return self._enforce(self.policy.authorize_memo(key, build), "denied by policy", holds=True)

    def _enforce(self, decision: Decision, refusal: str, *, holds: bool) -> Decision:
        if not decision.allowed:
            exc = AccessDenied(
                refusal, debug=f"policy {decision.version} denied: {', '.join(decision.determining) or 'no permit'}"
            )
            exc.audit["policy"] = decision.audit()
            raise exc
        if decision.approval and not holds:
            policies = ", ".join(decision.approval_policies)
            log.error("policy %s holds an action that cannot be held for approval (%s): refused", decision.version, policies)
            exc = AccessDenied("this action cannot wait for a human approval; the policy that holds it refuses it",
                               debug=f"@approval on {policies}: only token exchanges and tool calls can be held")  # fmt: skip
            exc.audit["policy"] = decision.audit()
            raise exc
        return decision

    async def refuse(
        self,
        exc: OAuthError,
        *,
        kind: str,
        principal: str | None = None,
        task: str | None = None,
        jti: str | None = None,
        detail: dict[str, Any] | None = None,
        source: str | None = None,
    ) -> None:
        """Audit a refusal before the response is sent: one record each when a proven party owns
        it, else counted per ``source`` (the client address) and interval (``tether.audit.anonymous``)."""
        event = AuditEvent(
            kind=kind,
            outcome="refused",
            principal=principal,
            task=task,
            jti=jti,
            error=exc.error,
            detail={"reason": exc.debug[:500], **(detail or {}), **exc.audit},
        )
        assert self.anonymous is not None
        await self.anonymous.record(event, source=source, now=self.now())

    def verify_own_token(self, token: str, *, audience: str | None) -> AccessToken:
        """A tether access token signed by a key in our JWKS (raises ``InvalidToken``).

        A token that verified once is remembered (bounded LRU) until it expires: an agent
        presents the same session token for many exchanges, and re-verifying an unchanged
        string against unchanged keys can only give the same answer. Revocation is never
        cached: the issuance transaction checks the token's lineage every time.
        """
        now = self.now()
        entry = self.verified.get(token)
        # a hit stands only while the key that verified it is still ours and unchanged
        # (RFC 9068 §4; the keyring is reloaded with fresh objects, so compare the public JWK)
        key = self.keyring.public_key(entry[1], now=now) if entry is not None else None
        if entry is not None and key is not None and key.jwk == entry[2]:
            claims = entry[0]
            if now >= claims.exp:
                raise InvalidToken("access token has expired", debug=f"exp {claims.exp} now {now}")
        else:
            claims, used = self._verify_own_token(token, now=now)
            self.verified.put(token, (claims, used.kid, used.jwk))
        if audience is not None and claims.aud != audience:
            raise InvalidToken("access token audience is not this resource", debug=f"aud `{claims.aud:.200}`")
        return claims

    async def task(self, task_id: str) -> Task | None:
        """A task's definition (immutable once created), cached; its state is re-checked at issuance."""
        task = self.tasks.get(task_id)
        if task is None:
            task = await self.store.get_task(task_id)
            if task is not None:
                self.tasks.put(task_id, task)
        return task

    def _verify_own_token(self, token: str, *, now: float) -> tuple[AccessToken, SigningKey]:
        keyring = self.keyring
        used: list[SigningKey] = []

        def resolve(header: Any) -> PublicKey:
            key = keyring.public_key(header.get("kid"), now=now)
            if key is None:
                raise JWSError("unknown kid")
            used.append(key)
            return key.public

        expected = Expected(self.settings.issuer, None, skew=0, max_lifetime=self.settings.max_token_lifetime)
        claims = verify_access_token(token, expected, resolve_key=resolve, algorithms=("ES256", "EdDSA"), now=now)
        return claims, used[-1]

    def verify_subject_token(self, token: str) -> AccessToken:
        try:
            return self.verify_own_token(token, audience=None)
        except InvalidToken as exc:
            raise InvalidGrant("subject token is invalid", debug=exc.debug) from exc

    async def verify_workload(self, token: str, *, as_client: bool) -> WorkloadIdentity:
        """A workload JWT as subject/actor token (``invalid_grant``) or client assertion (``invalid_client``)."""
        try:
            return await self.identity.verify(token, now=self.now())
        except IdentityError as exc:
            if as_client:
                raise InvalidClient("client authentication failed", debug=str(exc)) from exc
            raise InvalidGrant("workload token is invalid", debug=str(exc)) from exc
