"""Per-request verification at a resource server (RFC 9068 §4, RFC 9449 §4.3 and §7, RFC 8705 §3, RFC 6750 §3).

``Verifier.verify`` accepts a token from the STS's JWKS with ``typ at+jwt``, exact ``iss``,
this resource as ``aud`` and a bounded lifetime, presented with the proof its binding asks
for (``tether.rules.binding``): a DPoP-bound token (``cnf.jkt``) under the ``DPoP`` scheme
with a fresh, unreplayed proof for this method and URL from that key, with this token's
``ath`` (a bound token sent as ``Bearer`` is refused); a certificate-bound token
(``cnf.x5t#S256``) only with that client certificate (this server's TLS, or a trusted
proxy's RFC 9440 header), under ``Bearer`` when it has no ``jkt``; a token with both needs
both. Then a fresh revocation view listing neither token nor task. A token verified once is
remembered (bounded) with the key that verified it, while the JWKS still names that key and
until ``exp``; the rest — binding and certificate included — runs every call.

Held calls (SECURITY APR-01, ``rules.approval.check_call``): a ``call`` permit annotated
``@approval`` makes the call need a token issued under a human approval (``apr``), and for
an MCP ``tools/call`` one issued for exactly that call (``tctx``, the RFC 8785 hash of the
tool and its arguments); a ``tctx`` token serves no other request. A token carrying ``apr``
serves one held call: its ``jti`` is spent in the replay cache (``apr-call:<jti>``) first.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.datastructures import Headers
from starlette.responses import Response

from tether.agent.identity import IdentitySource
from tether.clock import Clock, SystemClock
from tether.errors import AccessDenied, InvalidToken, OAuthError, TemporarilyUnavailable
from tether.identity.jwks_cache import KeySet, KeySource, UrlKeySource
from tether.lru import LruCache
from tether.model import AccessToken
from tether.policy.engine import PolicyEngine
from tether.policy.entities import call_request
from tether.proofs import ProofChecker, ReplayCache
from tether.resource.approvals import POLICY_DENIAL, approval_fields, spend
from tether.resource.principal import Principal
from tether.resource.replay import MemoryReplayCache
from tether.resource.revocations import RevocationFeed
from tether.rules.approval import ApprovalRequired, check_call
from tether.rules.binding import SCHEMES, needs_dpop_proof
from tether.rules.certificate import ClientCertificate
from tether.rules.claims import Expected, verify_access_token
from tether.rules.dpop import DEFAULT_DPOP_ALGS
from tether.rules.jws import JWSError, PublicKey, peek_header
from tether.rules.tool_call import ToolCall, argument_tags
from tether.urns import JWT_BEARER
from tether.web.client_cert import TrustedProxies
from tether.web.dpop_request import authorization, dpop_header
from tether.web.errors import error_response, request_scheme

__all__ = ["MissingToken", "ResourceSettings", "Verifier"]

log = logging.getLogger("tether.resource")


class MissingToken(InvalidToken):
    """No credentials at all: RFC 6750 §3.1 says the challenge then carries no error code."""

    bare_challenge = True


@dataclass(frozen=True)
class ResourceSettings:
    issuer: str
    resource: str
    jwks_uri: str | None = None
    token_algs: tuple[str, ...] = ("ES256", "EdDSA")
    dpop_algs: tuple[str, ...] = DEFAULT_DPOP_ALGS
    skew: int = 10
    max_token_lifetime: int = 900
    proof_max_age: int = 60
    nonce: bool = False
    nonce_ttl: int = 120
    stale_after: float = 10.0
    revocation_feed: bool = True
    policy_dir: str | None = None
    policy_from_sts: bool = False
    policy_mode: str = "enforce"
    tags: tuple[str, ...] = ()
    #: verified tokens remembered (0 disables the cache)
    token_cache: int = 10_000
    #: accept certificate-bound tokens (RFC 8705 §3; ``Bearer`` scheme for those without ``jkt``).
    #: On by default: it weakens nothing, since such a token is honoured only with its
    #: certificate and every other token needs DPoP as before; off refuses them all.
    mtls: bool = True
    #: TLS terminators (addresses or CIDRs) whose RFC 9440 ``Client-Cert`` header is believed;
    #: empty (the default): none, the certificate is only ever this server's own TLS client's
    trusted_proxies: tuple[str, ...] = ()

    @property
    def origin(self) -> str:
        parts = urlsplit(self.resource)
        return f"{parts.scheme}://{parts.netloc}"


class Verifier:
    def __init__(
        self,
        settings: ResourceSettings,
        *,
        http: httpx.AsyncClient | None = None,
        clock: Clock | None = None,
        replay: ReplayCache | None = None,
        keys: KeySource | None = None,
        feed: RevocationFeed | None = None,
        policy: PolicyEngine | None = None,
        identity: IdentitySource | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        """``keys``, ``replay``, ``feed`` and ``policy`` can be shared by several verifiers
        (the gateway has one per route); a shared feed is started and closed by its owner.

        ``identity`` is this service's workload identity: the STS serves its revocation
        feed and its policies only to registered workloads, so a verifier that follows
        either (``revocation_feed``, ``policy_from_sts``) without being handed a ``feed``
        or a ``policy`` must have one — it fails here rather than run unauthenticated."""
        needs_identity = [
            what
            for what, needed in (
                ("revocation_feed", settings.revocation_feed and feed is None),
                ("policy_from_sts", settings.policy_from_sts and policy is None and settings.policy_dir is None),
            )
            if needed
        ]
        if needs_identity and identity is None:
            missing = " and ".join(needs_identity)
            raise ValueError(f"a workload identity is required for {missing}: pass Verifier(settings, identity=...)")
        self.settings = settings
        self.identity = identity
        #: whose RFC 9440 headers count as the caller's certificate (``presented_certificate``)
        self.proxies = TrustedProxies(settings.trusted_proxies)
        self._expected = Expected(settings.issuer, settings.resource, settings.skew, settings.max_token_lifetime)
        self._own_http = http is None
        # ``verify``: how the verifier's own client (JWKS, feed, policies) checks an https STS's certificate
        self.http = http or httpx.AsyncClient(follow_redirects=False, timeout=5.0, trust_env=False, verify=verify)
        self.clock = clock or SystemClock()
        self.keys = keys or UrlKeySource(settings.jwks_uri or settings.issuer + "/jwks", self.http, ttl=300, min_refresh=5.0)
        #: DPoP ``jti``s, and the tokens issued under approval that served their call (``spend_approval``)
        self.replay: ReplayCache = replay if replay is not None else MemoryReplayCache()
        self.proofs = ProofChecker(
            self.replay,
            self.clock,
            nonce_key=os.urandom(32) if settings.nonce else None,
            algorithms=settings.dpop_algs,
            max_age=settings.proof_max_age,
            skew=settings.skew,
            nonce_ttl=settings.nonce_ttl,
        )
        self._proofs_started = False
        self._own_feed = feed is None
        self.feed = feed
        if feed is None and settings.revocation_feed:
            assert identity is not None
            self.feed = RevocationFeed(
                settings.issuer, self.http, identity=identity, stale_after=settings.stale_after, clock=self.clock
            )
        self.policy: PolicyEngine | None = policy
        self._verified: LruCache[str, tuple[AccessToken, object, PublicKey]] = LruCache(settings.token_cache)
        if policy is None and settings.policy_dir is not None:
            self.policy = PolicyEngine(Path(settings.policy_dir), mode=settings.policy_mode)
        elif policy is None and settings.policy_from_sts:
            self.policy = PolicyEngine(None, mode=settings.policy_mode)
            if self.feed is not None:
                self.feed.on_policy_version = self._fetch_policies

    async def start(self) -> None:
        """Start the feed and learn the replay cache's epoch. The middleware calls this on every
        request (an app without lifespan events) so it must be cheap after the first: the
        epoch is read once (a Redis script), and later learnt from each spend."""
        if not self._proofs_started:
            self._proofs_started = True
            await self.proofs.start()
        if self.feed is not None and self._own_feed:
            self.feed.start()

    async def aclose(self) -> None:
        if self.feed is not None and self._own_feed:
            await self.feed.aclose()
        if self._own_http:
            await self.http.aclose()

    async def _fetch_policies(self, version: str) -> str | None:
        """Install the STS's policy set (pushed: the feed heartbeat announced ``version``).

        ``POST /policies`` with a fresh client assertion of this service's identity, as the feed."""
        assert self.policy is not None and self.identity is not None
        form = {"client_assertion_type": JWT_BEARER, "client_assertion": self.identity.token(self.settings.issuer)}
        response = await self.http.post(self.settings.issuer + "/policies", data=form, headers={"Accept": "application/json"})
        if response.status_code != 200:
            raise ValueError(f"/policies answered {response.status_code}")
        body = response.json()
        files = body.get("files") if isinstance(body, dict) else None
        if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise ValueError("/policies did not return a policy bundle")
        self.policy.mode = "shadow" if body.get("mode") == "shadow" else "enforce"
        self.policy.install_texts(files)
        return self.policy.version

    def metadata(self) -> dict[str, Any]:
        """RFC 9728 §2 protected resource metadata naming the STS.

        ``dpop_bound_access_tokens_required`` is true only while certificate-bound tokens
        without ``jkt`` are refused; with ``mtls`` the resource says it takes them
        (``tls_client_certificate_bound_access_tokens``) and, truthfully, that DPoP is not
        the only binding it accepts. Either way no unbound token is ever accepted."""
        document: dict[str, Any] = {
            "resource": self.settings.resource,
            "authorization_servers": [self.settings.issuer],
            "bearer_methods_supported": ["header"],
            "dpop_signing_alg_values_supported": list(self.settings.dpop_algs),
            "dpop_bound_access_tokens_required": not self.settings.mtls,
        }
        if self.settings.mtls:
            document["tls_client_certificate_bound_access_tokens"] = True
        return document

    def refusal(
        self, exc: Exception, headers: Headers | Mapping[str, str], *, resource_metadata: str | None = None
    ) -> Response:
        """The HTTP answer to a refusal of a request to this resource: its status, and the
        challenge for the scheme the request used (``tether.web.errors``, the one mapping place)."""
        return error_response(
            exc,
            resource=True,
            algs=self.settings.dpop_algs,
            resource_metadata=resource_metadata,
            scheme=request_scheme(headers.get("authorization")),
            bearer=self.settings.mtls,
        )

    async def verify(
        self,
        *,
        method: str,
        path: str,
        headers: Headers | Mapping[str, str],
        client: str | None = None,
        route_path: str | None = None,
        authorize: bool = True,
        certificate: ClientCertificate | None = None,
        per_message: bool = False,
    ) -> Principal:
        """Verify one request. ``path`` is the path as sent (for ``htu``); ``route_path`` is the
        decoded path the application routes on, which the ``call`` policy must see (default: ``path``).
        ``authorize=False`` leaves the ``call`` policy to the caller (the gateway runs it after
        its own route checks, so a refusal still knows whose call it was). ``certificate`` is
        the client certificate this request came with (``presented_certificate(scope,
        verifier.proxies)``), or None: a certificate-bound token is refused without it.
        ``per_message=True`` (an MCP server: ``tether.mcp.protect``) leaves the approval checks to
        each ``tools/call`` the request carries; otherwise this request is a plain HTTP call, which a
        ``tctx`` token never serves and a held route serves once per approved token (APR-01)."""
        hdrs = headers if isinstance(headers, Headers) else Headers(headers=dict(headers))
        if "authorization" not in hdrs:
            raise MissingToken("an access token is required")
        scheme, token = authorization(hdrs)
        if scheme not in SCHEMES or (scheme == "bearer" and not self.settings.mtls):
            schemes = "the dpop or bearer scheme" if self.settings.mtls else "the dpop scheme"
            raise InvalidToken(f"tokens must be presented with {schemes}", debug=f"scheme {scheme}")
        now = self.clock.now()
        cached = self._verified.get(token) if self.settings.token_cache else None
        kid = cached[1] if cached is not None else _peek_kid(token)
        keyset = await self.keys.keys(kid=kid, now=now)
        if cached is not None and keyset.find(kid) is cached[2] and now < cached[0].exp + self.settings.skew:
            claims = cached[0]
        else:
            claims = self._verify_token(token, keyset, now)
        # every request, cached token or not: the certificate belongs to this connection
        dpop = needs_dpop_proof(jkt=claims.jkt, x5t=claims.x5t, scheme=scheme, certificate=certificate, mtls=self.settings.mtls)
        principal = Principal.from_token(claims)
        if dpop:
            proof, (key, until) = self.proofs.check_unconsumed(
                dpop_header(hdrs), method=method, url=self.settings.origin + path, access_token=token
            )
            if proof.jkt != claims.jkt:
                raise InvalidToken("dpop proof key does not match the token binding", debug=f"{proof.jkt} != {claims.jkt}")
            try:
                await self.proofs.consume(proof, key, until)
            except OAuthError as exc:
                # a replay proves nothing about who sent it (anyone who saw the request can): it
                # names the token's task and agent only as claimed, never as the refusal's party
                exc.audit.update(claimed_task=principal.task, claimed_principal=principal.client_id)
                raise
        try:
            # from here the caller has proven it holds the token's key (a fresh proof) and/or
            # its certificate's (the TLS handshake, here or at a trusted terminator): a
            # revoked token is this principal's (or its stolen credentials') doing, audited so
            if self.feed is not None:
                self.feed.check(jti=claims.jti, task=claims.txn, now=now)
        except OAuthError as exc:
            exc.holder = principal
            raise
        if authorize:
            path = route_path or path
            required = self.authorize_call(
                principal, method=method, path=path, client=client, now=now, approvals=not per_message
            )
            if not per_message:
                await self.spend_approval(principal, required=required, call=None, now=now)
        return principal

    def _verify_token(self, token: str, keyset: KeySet, now: float) -> AccessToken:
        used: list[tuple[object, PublicKey]] = []

        def resolve(header: Mapping[str, Any]) -> PublicKey:
            key = keyset.find(header.get("kid"))
            if key is None:
                raise JWSError("unknown kid")
            used.append((header.get("kid"), key))
            return key

        settings = self.settings
        claims = verify_access_token(token, self._expected, resolve_key=resolve, algorithms=settings.token_algs, now=now)
        if self.settings.token_cache:
            self._verified.put(token, (claims, *used[0]))
        return claims

    def authorize_call(
        self,
        principal: Principal,
        *,
        method: str,
        path: str,
        client: str | None,
        now: float,
        tool: str | None = None,
        call: ToolCall | None = None,
        approvals: bool = True,
    ) -> tuple[str, ...]:
        """Cedar ``call`` for this route; the caller is the current actor, else the agent.

        For an MCP ``tools/call``, ``call`` is the tool and its arguments (Cedar sees both);
        ``tool`` alone (no arguments, empty ``arguments_digest``) asks whether a tool may be
        listed (``tools/list``): a tool held for approval is listed, since it can be called
        once approved. Otherwise (``approvals``) the token must fit the call
        (``rules.approval.check_call``, APR-01): ``ApprovalRequired`` names the groups when the
        call is held and the token carries no approval for it; a ``tctx`` token for another call,
        or for a request that is no tool call, is ``access_denied``. Returns the groups of the
        ``@approval`` policies that hold the call (empty if none): with ``spend_approval`` the
        caller then spends an approved token on it."""
        required = self._decide(principal, method=method, path=path, client=client, now=now, tool=tool, call=call)
        if not approvals or (tool is not None and call is None):
            return required
        try:
            check_call(principal.tctx, principal.apr, call, required=required)
        except ApprovalRequired as exc:
            exc.audit.update(approval_required=",".join(exc.groups), call_tctx=exc.tctx or "")
            log.info(
                "call held for approval by %s: %s %s%s by %s",
                ", ".join(exc.groups),
                method,
                path[:200],
                f" tool {call.name} tctx {exc.tctx}" if call is not None else "",
                principal.actor or principal.client_id,
                extra={"groups": list(exc.groups), **approval_fields(principal)},
            )
            raise
        except AccessDenied as exc:
            log.info(
                "call refused: %s: %s %s%s by %s",
                exc.description,
                method,
                path[:200],
                f" tool {call.name}" if call is not None else "",
                principal.actor or principal.client_id,
                extra=approval_fields(principal),
            )
            raise
        return required

    async def spend_approval(
        self, principal: Principal, *, required: Collection[str], call: ToolCall | None, now: float
    ) -> None:
        """A token issued under approval (``apr``) serves one call (APR-01): every ``tools/call``,
        and a plain request the policy holds (``required``). Its ``jti`` is spent in the replay
        cache, atomically and shared by every replica on a shared cache, before the call runs; a
        second call is ``access_denied``. Call after ``authorize_call`` allowed it."""
        until = principal.expires_at + self.settings.skew + 1
        await spend(self.replay, principal, required=required, call=call, until=until, now=now, proofs=self.proofs)

    def _decide(
        self,
        principal: Principal,
        *,
        method: str,
        path: str,
        client: str | None,
        now: float,
        tool: str | None,
        call: ToolCall | None,
    ) -> tuple[str, ...]:
        """Cedar's ``call`` decision (refusing a deny); the ``@approval`` groups of an allow."""
        if self.policy is None:
            return ()
        if self.settings.policy_from_sts and self.feed is not None and not self.feed.policy_current(now):
            raise TemporarilyUnavailable(
                "policy set is behind the STS; refusing until it is current",
                debug=f"announced {self.feed.announced_version}, installed {self.feed.policy_version}",
            )
        request = call_request(
            caller=principal.actor or principal.client_id,
            service=self.settings.resource,
            method=method,
            path=path.split("?", 1)[0],
            scopes=principal.scopes,
            actors=principal.actors,
            subject=principal.subject,
            agent=principal.agent,
            task=principal.task,
            purpose=principal.purpose,
            token_age=int(now) - principal.issued_at,
            now=now,
            client=client,
            tags={self.settings.resource: self.settings.tags},
            caller_kind=principal.client_kind,  # the caller is the token's client (its current actor, if any)
            caller_domain=principal.client_domain,
            tool=call.name if call is not None else tool,
            arguments=argument_tags(call.arguments) if call is not None else None,
            arguments_digest=call.digest if call is not None else "",
        )
        decision = self.policy.authorize(request)
        if not decision.allowed:
            # a tools/list visibility check is not a refusal the caller saw: one line per hidden tool
            # on every listing would drown the real denials
            log.log(
                logging.DEBUG if call is None and tool is not None else logging.INFO,
                "call denied by policy %s (%s): %s %s%s by %s",
                decision.version,
                ", ".join(decision.determining) or "no permit",
                method,
                path[:200],
                f" tool {call.name if call is not None else tool}" if (call or tool) else "",
                principal.actor or principal.client_id,
            )
            raise AccessDenied(
                POLICY_DENIAL, debug=f"policy {decision.version}: {', '.join(decision.determining) or 'no permit'}"
            )
        return decision.approval


def _peek_kid(token: str) -> object:
    try:
        return peek_header(token, max_length=8192).get("kid")
    except JWSError:
        return None
