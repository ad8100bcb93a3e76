"""The token endpoint's use case: RFC 8693 token exchange, DPoP- and/or certificate-bound, task-bound.

Three shapes, told apart by the subject token: a workload JWT with ``task`` gives a session
token (so does ``client_credentials``, RFC 6749 §4.4, from a client authenticated by its
certificate, RFC 8705 §2: the token is then bound to that certificate, §3); a session token
with a proof from its key and/or its certificate and a ``resource`` gives a hop token; a hop
token with the audience's own workload JWT as ``actor_token`` gives a token for the next
service, the actor nested in ``act`` (RFC 8693 §4.1). An admin principal's workload JWT without
``task`` gives an admin token (the CLI). Checks run shape, proof, nonce, replay, identity,
attenuation, then one atomic store write (spend, count, lineage, audit). Between the decision
and the write, ``holds.gate`` judges an RFC 9396 tool call and holds a request the policies
hold for a human's approval (RFC 8628 §3.5 polling with ``approval_id``).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Histogram

from tether.audit.chain import AuditEvent
from tether.config.federation import FEDERATED_PREFIX, FederationPeer
from tether.errors import (
    AccessDenied,
    AuthorizationPending,
    InvalidClient,
    InvalidDPoPProof,
    InvalidGrant,
    InvalidRequest,
    InvalidTarget,
    OAuthError,
    UnsupportedGrantType,
    after_end,
    spent,
)
from tether.identity.x509 import CertificateAuthentication
from tether.metrics import EXCHANGE_SECONDS, ISSUED
from tether.model import AccessToken, DPoPProof, Task, WorkloadIdentity, binding_name
from tether.policy.engine import Decision
from tether.policy.entities import ExchangeQuestion, admin_request, exchange_request
from tether.proofs import replayed_proof
from tether.rules.certificate import ClientCertificate
from tether.rules.claims import Grant, build_claims
from tether.rules.exchange import Ask, check_hop_binding, derive_hop, derive_session
from tether.rules.federation import check_ceiling, check_foreign_token, derive_linked_session, local_chain
from tether.rules.namespace import source_of
from tether.rules.scope import check_subset, format_scope
from tether.rules.tool_call import ToolCall
from tether.store.errors import (
    AlreadySpent,
    Blocked,
    CapReached,
    ParentRevoked,
    PredatesReplayCache,
    Replayed,
    StoreError,
    TaskNotActive,
)
from tether.store.records import IssuedToken
from tether.sts.attribution import Claim, refuse_exchange
from tether.sts.context import StsContext, new_jti, spend_key
from tether.sts.federation import (
    check_feeds,
    check_not_revoked,
    check_still_current,
    count_crossing,
    foreign_issuer,
    link_task,
    linked_candidate,
    peer_of_token,
    redeem,
    unredeemed,
    verify_foreign_token,
)
from tether.sts.holds import gate
from tether.urns import CLIENT_CREDENTIALS, JWT_BEARER, JWT_BEARER_GRANT, TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS, TOKEN_TYPE_JWT

__all__ = ["ExchangeRequest", "ExchangeResult", "exchange"]


@dataclass(frozen=True)
class ExchangeRequest:
    grant_type: str
    subject_token: str | None
    subject_token_type: str | None
    dpop: str | None
    actor_token: str | None = None
    actor_token_type: str | None = None
    audience: str | None = None
    scope: frozenset[str] | None = None
    requested_token_type: str | None = None
    task: str | None = None
    client_id: str | None = None
    client_assertion: str | None = None
    client_assertion_type: str | None = None
    client_ip: str | None = None
    #: the client certificate of the connection (``web.client_cert.presented_certificate``)
    certificate: ClientCertificate | None = None
    #: RFC 9396 ``authorization_details``: the one MCP tool call the token is for (``rules.approval``)
    tool_call: ToolCall | None = None
    #: RFC 8628-style poll of a held request (``rules.approval.valid_approval_id`` checked the shape)
    approval_id: str | None = None
    #: RFC 7523 §2.1 ``assertion`` of the ``jwt-bearer`` grant: a federation peer's access token
    assertion: str | None = None


@dataclass(frozen=True)
class ExchangeResult:
    access_token: str
    expires_in: int
    scope: str
    kind: str = "session"  # session, hop or admin (metrics label; not on the wire)
    #: RFC 9449 §5 ``DPoP`` for a key-bound token; RFC 8705 §3 / RFC 6750 ``Bearer`` for a certificate-only one
    token_type: str = "DPoP"

    def as_json(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "issued_token_type": TOKEN_TYPE_ACCESS,
            "token_type": self.token_type,
            "expires_in": self.expires_in,
            "scope": self.scope,
        }


def _check_shape(req: ExchangeRequest) -> None:
    if req.grant_type == CLIENT_CREDENTIALS:
        _check_credentials_shape(req)
        return
    if req.grant_type == JWT_BEARER_GRANT:
        _check_bearer_shape(req)
        return
    if req.grant_type != TOKEN_EXCHANGE:
        raise UnsupportedGrantType("only the token exchange and client credentials grants are supported")
    if req.assertion is not None:
        raise InvalidRequest("`assertion` is not a token exchange parameter")
    if req.subject_token is None or req.subject_token_type is None:
        raise InvalidRequest("`subject_token` and `subject_token_type` are required")
    if req.subject_token_type not in (TOKEN_TYPE_JWT, TOKEN_TYPE_ACCESS):
        raise InvalidRequest("`subject_token_type` must be the jwt or access_token token type")
    if req.requested_token_type not in (None, TOKEN_TYPE_ACCESS):
        raise InvalidRequest("only access tokens can be requested")
    if (req.actor_token is None) != (req.actor_token_type is None):
        raise InvalidRequest("`actor_token` and `actor_token_type` go together")
    if req.actor_token_type not in (None, TOKEN_TYPE_JWT):
        raise InvalidRequest("`actor_token_type` must be the jwt token type")
    if (req.client_assertion is None) != (req.client_assertion_type is None):
        raise InvalidRequest("`client_assertion` and `client_assertion_type` go together")
    if req.client_assertion_type not in (None, JWT_BEARER):
        raise InvalidClient("unsupported client assertion type")
    if req.subject_token_type == TOKEN_TYPE_JWT and req.actor_token is not None:
        raise InvalidRequest("an actor token is only accepted with a tether access token as subject")


def _check_credentials_shape(req: ExchangeRequest) -> None:
    """RFC 6749 §4.4.2 with RFC 8705 §2: the certificate is the client's one authentication
    (§2.3: never more than one method), and a session needs its ``task``."""
    extra = [name for name, value in (("subject_token", req.subject_token), ("subject_token_type", req.subject_token_type),
                                      ("actor_token", req.actor_token), ("actor_token_type", req.actor_token_type))
             if value is not None]  # fmt: skip
    if extra:
        raise InvalidRequest(f"`{extra[0]}` is not a client credentials parameter")
    if req.client_assertion is not None or req.client_assertion_type is not None:
        raise InvalidRequest("a certificate-authenticated client must not also send a client assertion")
    if req.requested_token_type not in (None, TOKEN_TYPE_ACCESS):
        raise InvalidRequest("only access tokens can be requested")
    if req.client_id is None:
        raise InvalidRequest("`client_id` is required")
    if req.task is None:
        raise InvalidRequest("`task` is required")


def _check_bearer_shape(req: ExchangeRequest) -> None:
    """RFC 7523 §2.1: the ``assertion`` is the grant, and the only credential besides the DPoP
    proof; the linked task is the foreign token's to name, never the request's."""
    _check_linked_shape(req)
    if req.assertion is None:
        raise InvalidRequest("`assertion` is required")
    extra = [name for name, value in (("subject_token", req.subject_token), ("subject_token_type", req.subject_token_type))
             if value is not None]  # fmt: skip
    if extra:
        raise InvalidRequest(f"`{extra[0]}` is not a jwt-bearer parameter")


def _check_linked_shape(req: ExchangeRequest) -> None:
    """A federation peer's token, as assertion or subject token, opens (or joins) its linked task:
    no ``task``, actor, client assertion, tool call or approval poll goes with it."""
    extra = [name for name, value in (("task", req.task), ("actor_token", req.actor_token),
                                      ("actor_token_type", req.actor_token_type),
                                      ("client_assertion", req.client_assertion),
                                      ("client_assertion_type", req.client_assertion_type),
                                      ("authorization_details", req.tool_call), ("approval_id", req.approval_id))
             if value is not None]  # fmt: skip
    if extra:
        raise InvalidRequest(f"`{extra[0]}` is not accepted with a federation peer's token")
    if req.requested_token_type not in (None, TOKEN_TYPE_ACCESS):
        raise InvalidRequest("only access tokens can be requested")


async def _unredeemed(ctx: StsContext, claim: Claim, identity: WorkloadIdentity) -> WorkloadIdentity:
    """A workload JWT already redeemed is refused at once, whatever the request asks.

    Otherwise its holder — or whoever captured it — could learn from the scope, audience and
    policy checks that still run which requests would be granted, with refusals that are
    never attributed (a redeemed JWT proves nothing about who sent it). A JWT without a
    ``jti`` cannot be redeemed once, so it proves nothing either: its refusals are never
    pinned on its principal (``attribution.Claim``).
    """
    spend = spend_key(identity)
    claim.principal = identity.principal
    if spend is None:
        claim.unprovable = True
        return identity
    claim.spends = [spend]
    if await ctx.store.spent(spend[0], now=ctx.now()):
        raise spent(InvalidGrant("workload token has already been used", debug="identity jti already redeemed"))
    return identity


def _spends(*identities: WorkloadIdentity | None) -> list[tuple[str, int]]:
    """Single-use marks for every workload JWT of the request (deduplicated)."""
    keys = [spend_key(i) for i in identities if i is not None]
    return list(dict.fromkeys(k for k in keys if k is not None))


def _source(ctx: StsContext, principal: str) -> tuple[str, str] | None:
    """The (kind, issuer) of the identity source whose namespace holds ``principal``.

    ``None`` only when no source is configured; a principal outside every namespace gets a
    source no identity has, so no workload redeems its task.
    """
    spaces = ctx.settings.namespaces
    if not spaces:
        return None
    found = source_of(principal, spaces)
    return (found.kind, found.issuer) if found is not None else ("none", "")


def chain_risk(ctx: StsContext, *principals: str) -> int:
    """The highest risk of everyone in the chain: requester, task agent, subject and every actor.

    A service exchanging on an agent's behalf must not launder the agent's risk: Cedar's
    ``context.risk`` is the worst score among all the parties the new token would speak for.
    """
    return max(ctx.risk(p) for p in dict.fromkeys(principals) if p)


def _authorize(
    ctx: StsContext,
    req: ExchangeRequest,
    grant: Grant,
    task: Task,
    *,
    kind: str,
    principal: str,
    risk: int,
    holds: bool = True,
) -> Decision:
    """Cedar ``exchange`` for the token about to be issued (after the built-in attenuation rules);
    ``risk`` is ``chain_risk`` of its parties, computed once for this and the tool call's ``call``.
    ``holds=False``: the caller cannot hold the request for approval, so a held decision is refused."""
    q = ExchangeQuestion(
        kind=kind,
        principal=principal,
        principal_kind=grant.client_kind,  # the requester is the new token's client
        audience=grant.aud,
        task=task,
        scopes=grant.scope,
        actors=grant.actors,
        subject=grant.sub,
        now=ctx.now(),
        client=req.client_ip,
        admins=ctx.settings.admin_principals,
        tags=ctx.settings.tags,
        risk=risk,
        agent_kind=grant.agent_kind,
        principal_domain=grant.client_domain,
        agent_domain=grant.agent_domain,
        binding=binding_name(grant.jkt, grant.x5t),
        foreign_issuer=foreign_issuer(ctx, task),
    )
    if not holds:
        return ctx.authorize(exchange_request(q))
    return ctx.authorize_memo(q.key(), lambda: exchange_request(q))


async def _client(ctx: StsContext, req: ExchangeRequest, expected: str) -> WorkloadIdentity | None:
    """RFC 6749 §2.3 client authentication must name the same workload the tokens prove."""
    if req.client_id is not None and req.client_id != expected:
        raise InvalidClient("client_id does not match the authenticated workload")
    if req.client_assertion is None:
        return None
    client = await ctx.verify_workload(req.client_assertion, as_client=True)
    if client.principal != expected:
        raise InvalidClient("client assertion does not match the authenticated workload")
    return client


@functools.lru_cache(maxsize=16)
def _seconds(kind: str) -> Histogram:
    """The labelled child, looked up once per kind (``labels()`` takes a lock and checks names per call)."""
    return EXCHANGE_SECONDS.labels(kind=kind)


@functools.lru_cache(maxsize=16)
def _issued(kind: str) -> Counter:
    return ISSUED.labels(kind=kind)


async def exchange(ctx: StsContext, req: ExchangeRequest) -> ExchangeResult:
    """Run one exchange, auditing the refusal if any check fails; count and time it (``tether.metrics``)."""
    claim = Claim()
    started = time.perf_counter()
    try:
        result = await _exchange(ctx, req, claim)
    except AuthorizationPending:
        # held: the approval.requested record says so once; a poll is neither audited (it
        # would flood the chain) nor a refusal the monitor could count against the agent
        _seconds("held").observe(time.perf_counter() - started)
        raise
    except OAuthError as exc:
        _seconds("refused").observe(time.perf_counter() - started)
        if exc.error != "use_dpop_nonce":
            await refuse_exchange(ctx, exc, claim, audience=req.audience, task=req.task, source=req.client_ip)
        raise
    _seconds(result.kind).observe(time.perf_counter() - started)
    _issued(result.kind).inc()
    return result


@dataclass(frozen=True)
class _Checked:
    """What the checks before issuance established, and what the issuance must consume atomically."""

    proof: DPoPProof | None
    replay: tuple[str, int] | None
    spends: list[tuple[str, int]]


def _proof(ctx: StsContext, req: ExchangeRequest, claim: Claim) -> tuple[DPoPProof | None, tuple[str, int] | None]:
    """The request's DPoP proof, checked but not yet spent; ``None`` without one.

    Whether one is needed is for each shape to say: a workload JWT always needs one, a
    certificate-bound session token only if it also has ``jkt`` (RFC 8705 §3, RFC 9449 §4.3).
    """
    if req.dpop is None:
        return None, None
    proof, replay = ctx.proofs.check_unconsumed(req.dpop, method="POST", url=ctx.settings.token_endpoint)
    claim.proof, claim.checked = replay, proof
    return proof, replay


def _required(proof: DPoPProof | None) -> DPoPProof:
    if proof is None:
        raise InvalidDPoPProof("a dpop proof is required")
    return proof


async def _exchange(ctx: StsContext, req: ExchangeRequest, claim: Claim) -> ExchangeResult:
    if req.grant_type == CLIENT_CREDENTIALS and not ctx.certificates:
        # no trust domain has an X.509 bundle and no client a certificate: nobody can authenticate
        raise UnsupportedGrantType("client credentials need certificate client authentication, not configured here")
    if req.grant_type == JWT_BEARER_GRANT and not ctx.settings.federation:
        raise UnsupportedGrantType("the jwt-bearer grant is only for federation peers, none configured here")
    _check_shape(req)
    if req.grant_type == CLIENT_CREDENTIALS:
        return await _credentials(ctx, req, claim)
    if req.grant_type == JWT_BEARER_GRANT:
        assert req.assertion is not None
        return await _linked(ctx, req, claim, req.assertion, peer_of_token(ctx, req.assertion))
    assert req.subject_token is not None
    if req.subject_token_type == TOKEN_TYPE_ACCESS:
        peer = peer_of_token(ctx, req.subject_token)  # exact ``iss``, before any verification
        if peer is not None:
            _check_linked_shape(req)
            return await _linked(ctx, req, claim, req.subject_token, peer)
    proof, replay = _proof(ctx, req, claim)
    if req.subject_token_type == TOKEN_TYPE_JWT:
        _required(proof)
        identity = await _unredeemed(ctx, claim, await ctx.verify_workload(req.subject_token, as_client=False))
        client = await _client(ctx, req, identity.principal)
        checked = _Checked(proof, replay, _spends(identity, client))
        claim.spends = checked.spends
        if req.task is None:
            return await _admin(ctx, req, identity, checked, claim)
        return await _session(ctx, req, identity, checked, claim)
    parent = ctx.verify_subject_token(req.subject_token)
    claim.subject_jti, claim.claimed_task = parent.jti, parent.txn
    if req.task is not None and req.task != parent.txn:
        raise InvalidRequest("`task` does not match the subject token")
    return await _hop(ctx, req, parent, proof, replay, claim)


async def _session(
    ctx: StsContext,
    req: ExchangeRequest,
    identity: WorkloadIdentity,
    checked: _Checked,
    claim: Claim,
    *,
    x5t: str | None = None,
) -> ExchangeResult:
    assert req.task is not None
    task = await ctx.task(req.task)
    if task is None:
        raise InvalidGrant("unknown task", debug=f"task {req.task:.64}")
    now = int(ctx.now())
    jkt = checked.proof.jkt if checked.proof is not None else None
    ask = Ask(req.scope, req.audience, jkt, ctx.settings.issuer, ctx.settings.limits, x5t=x5t)
    grant = derive_session(identity, task, ask, now=now, agent_source=_source(ctx, task.agent))
    claim.task = task.id  # derive_session checked that the task is this workload's
    risk = chain_risk(ctx, identity.principal, task.agent, grant.sub, *grant.actors)
    decision = _authorize(ctx, req, grant, task, kind="session", principal=identity.principal, risk=risk)
    gated = await gate(ctx, grant, task, decision, kind="session", call=req.tool_call, approval_id=req.approval_id,
                       proof=checked.proof, replay=checked.replay, claim=claim, client=req.client_ip,
                       risk=risk)  # fmt: skip
    checked = _Checked(checked.proof, gated.replay, checked.spends)
    return await _issue(ctx, gated.grant, "session", task, checked, claim, principals=[identity.principal], now=now,
                        policy=decision)  # fmt: skip


async def _credentials(ctx: StsContext, req: ExchangeRequest, claim: Claim) -> ExchangeResult:
    """``client_credentials`` (RFC 6749 §4.4) from a client authenticated by its certificate (RFC 8705 §2).

    The certificate the handshake (or a trusted terminator, RFC 9440) verified is proof of
    who sent this request, so once it authenticates the client, refusals are pinned on it
    (``attribution.Claim``). A DPoP proof is optional; if sent it must be valid, and the
    session is then bound to its key as well (RFC 9449 §6 with RFC 8705 §3).
    """
    proof, replay = _proof(ctx, req, claim)
    auth: CertificateAuthentication = ctx.certificates.authenticate(req.certificate, req.client_id, now=ctx.now())
    assert req.certificate is not None
    claim.principal = auth.identity.principal
    checked = _Checked(proof, replay, [])
    return await _session(ctx, req, auth.identity, checked, claim, x5t=req.certificate.thumbprint)


async def _hop(
    ctx: StsContext,
    req: ExchangeRequest,
    parent: AccessToken,
    proof: DPoPProof | None,
    replay: tuple[str, int] | None,
    claim: Claim,
) -> ExchangeResult:
    if parent.txn is None:
        raise InvalidGrant("subject token is not bound to a task")
    presented = req.certificate.thumbprint if req.certificate is not None else None
    ask = Ask(req.scope, req.audience, proof.jkt if proof else None, ctx.settings.issuer, ctx.settings.limits, x5t=presented)
    actor: WorkloadIdentity | None = None
    if req.actor_token is not None:
        _required(proof)
        actor = await _unredeemed(ctx, claim, await ctx.verify_workload(req.actor_token, as_client=False))
        client = await _client(ctx, req, actor.principal)
    else:
        check_hop_binding(parent, ask, actor=None)
        # a proof from the token's key and/or its certificate on this connection: its holder's,
        # if the proof (when there is one) is fresh (attribution.Claim.proven)
        claim.principal, claim.task = parent.client_id, parent.txn
        client = await _client(ctx, req, parent.client_id)
    task = await ctx.task(parent.txn)
    if task is None:
        raise InvalidGrant("unknown task")
    now = int(ctx.now())
    grant = derive_hop(
        parent,
        task,
        ask,
        now=now,
        actor=actor.principal if actor else None,
        actor_kind=actor.kind.value if actor else "unknown",
        actor_domain=actor.trust_domain if actor else "",
        audience_principals=ctx.settings.resources.get(parent.aud, frozenset()),
    )
    claim.task = task.id  # an actor is tied to the task only once the delegation is allowed
    requester = actor.principal if actor else parent.client_id
    kind = "delegation" if actor else "hop"
    risk = chain_risk(ctx, requester, task.agent, grant.sub, *grant.actors)
    decision = _authorize(ctx, req, grant, task, kind=kind, principal=requester, risk=risk)
    principals = [parent.sub, parent.agent, *parent.actors] + ([actor.principal] if actor else [])
    spends = _spends(actor, client)
    claim.spends = spends
    gated = await gate(ctx, grant, task, decision, kind=kind, call=req.tool_call, approval_id=req.approval_id,
                       proof=proof, replay=replay, claim=claim, client=req.client_ip, risk=risk)  # fmt: skip
    checked = _Checked(proof, gated.replay, spends)
    return await _issue(ctx, gated.grant, "hop", task, checked, claim, principals=principals, now=now, policy=decision)


async def _linked(
    ctx: StsContext, req: ExchangeRequest, claim: Claim, token: str, peer: FederationPeer | None
) -> ExchangeResult:
    """A federation peer's access token for a session of its linked task (``sts.federation``).

    Order: the DPoP proof (and nonce), the peer and its signature, the token's shape and agent,
    the proof's key against ``cnf.jkt`` (from here refusals are the agent's), not yet redeemed,
    the peer's feed fresh and silent about the token and its task (FED-03), the ceiling (FED-01),
    policy on the task it would open, the peer's crossings this minute (``count_crossing``); then
    the token is spent, the linked task opened or joined, and the session issued atomically.
    """
    checked_proof, replay = _proof(ctx, req, claim)
    proof = _required(checked_proof)
    if peer is None:
        raise InvalidGrant("assertion is not from a federation peer", debug="iss names no [[federation]] peer")
    foreign = await verify_foreign_token(ctx, token, peer)
    check_foreign_token(foreign, peer)
    if proof.jkt != foreign.jkt:
        raise InvalidDPoPProof("dpop proof key does not match the foreign token binding")
    agent = peer.local_name(foreign.client_id)
    claim.principal = agent
    await unredeemed(ctx, peer, foreign)
    clock = ctx.now()
    now = int(clock)
    check_feeds(ctx, [agent, peer.local_name(foreign.sub), *local_chain(foreign.actors, peer)], now=clock)
    check_not_revoked(ctx, peer, foreign, now=clock)
    ask = Ask(req.scope, req.audience, proof.jkt, ctx.settings.issuer, ctx.settings.limits)
    scope = check_ceiling(foreign, peer, ask, now=now)
    candidate = linked_candidate(peer, foreign, scope, now=now)
    grant = derive_linked_session(foreign, candidate, peer, ask, now=now)
    risk = chain_risk(ctx, agent, grant.sub, *grant.actors)
    decision = _authorize(ctx, req, grant, candidate, kind="session", principal=agent, risk=risk, holds=False)
    await count_crossing(ctx, peer, now=now)
    await redeem(ctx, peer, foreign)
    task = await link_task(ctx, peer, foreign, candidate, now=now)
    claim.task = task.id
    await check_still_current(ctx, peer, foreign, task)
    if task.id != candidate.id:  # joined the linked task already open: judge the token for that task
        grant = derive_linked_session(foreign, task, peer, ask, now=now)
        decision = _authorize(ctx, req, grant, task, kind="session", principal=agent, risk=risk, holds=False)
    origin = {"iss": peer.issuer, "jti": foreign.jti, "txn": foreign.txn, "peer": peer.name}
    checked = _Checked(proof, replay, [])
    return await _issue(ctx, grant, "session", task, checked, claim, principals=[agent, grant.sub, *grant.actors], now=now,
                        policy=decision, foreign=origin)  # fmt: skip


async def _admin(
    ctx: StsContext, req: ExchangeRequest, identity: WorkloadIdentity, checked: _Checked, claim: Claim
) -> ExchangeResult:
    """An admin token for the task API: only for configured admin principals, never task-bound."""
    settings = ctx.settings
    if identity.principal not in settings.admin_principals:
        raise InvalidRequest("`task` is required")
    if req.tool_call is not None or req.approval_id is not None:
        raise InvalidRequest("`authorization_details` and `approval_id` need a task")
    scope = req.scope if req.scope is not None else settings.admin_scope
    check_subset(scope, settings.admin_scope, what="the admin scope")
    if req.audience is not None and req.audience != settings.issuer:
        raise InvalidTarget("admin tokens are only issued for the issuer")
    now = int(ctx.now())
    proof = _required(checked.proof)
    exp = min(now + settings.admin_ttl, identity.exp)
    if exp <= now:
        raise InvalidGrant("workload token expires too soon")
    grant = Grant(
        sub=identity.principal,
        aud=settings.issuer,
        scope=scope,
        exp=exp,
        client_id=identity.principal,
        agent=identity.principal,
        jkt=proof.jkt,
        txn=None,
        client_kind=identity.kind.value,
        agent_kind=identity.kind.value,
        client_domain=identity.trust_domain,
        agent_domain=identity.trust_domain,
    )
    decision = ctx.authorize(
        admin_request(
            caller=identity.principal,
            caller_kind=identity.kind.value,
            caller_domain=identity.trust_domain,
            issuer=settings.issuer,
            operation="token",
            now=now,
            client=req.client_ip,
            admins=settings.admin_principals,
            risk=ctx.risk(identity.principal),
        )
    )
    return await _issue(ctx, grant, "admin", None, checked, claim, principals=[identity.principal], now=now, policy=decision)


async def _issue(
    ctx: StsContext,
    grant: Grant,
    kind: str,
    task: Task | None,
    checked: _Checked,
    claim: Claim,
    *,
    principals: list[str],
    now: int,
    policy: Decision,
    foreign: dict[str, Any] | None = None,
) -> ExchangeResult:
    """Sign, then commit atomically: proof consumed, identity spent, count taken, lineage and audit written.

    FED-03 first: nothing naming a federation peer's principal while that peer's feed is stale.
    ``foreign``: the peer token a linked session was issued for (its ``iss``, ``jti``, ``txn``)."""
    # the one check the local hot path pays; a linked task outliving its peer's configuration still fails closed
    if ctx.settings.federation or grant.agent.startswith(FEDERATED_PREFIX):
        parties = (task.agent, task.on_behalf_of or "") if task is not None else ()
        check_feeds(ctx, [grant.client_id, grant.agent, grant.sub, *grant.actors, *parties], now=ctx.now())
    depth = len(grant.actors)
    jti = new_jti()
    token = ctx.keyring.sign(build_claims(grant, issuer=ctx.settings.issuer, jti=jti, now=now))
    record = IssuedToken(
        jti=jti,
        kind=kind,
        sub=grant.sub,
        client_id=grant.client_id,
        aud=grant.aud,
        scope=format_scope(grant.scope),
        jkt=grant.jkt or "",
        iat=now,
        exp=grant.exp,
        depth=depth,
        task_id=task.id if task else None,
        parent_jti=grant.parent_jti,
        x5t=grant.x5t,
    )
    event = AuditEvent(
        kind="token.issued",
        outcome="ok",
        principal=grant.client_id,
        task=record.task_id,
        jti=jti,
        detail={
            "token_kind": kind,
            "aud": grant.aud,
            "scope": record.scope,
            "exp": grant.exp,
            "parent": grant.parent_jti,
            "act": list(grant.actors),
            "depth": depth,
            "agent": grant.agent,
            "jkt": grant.jkt,
            "x5t": grant.x5t,
            "binding": binding_name(grant.jkt, grant.x5t),
            "policy": policy.audit(),
            **({"approval": grant.apr.id} if grant.apr is not None else {}),
            **({"tctx": grant.tctx} if grant.tctx is not None else {}),
            **({"foreign": foreign} if foreign is not None else {}),
        },
    )
    if task is not None:
        principals = [*principals, task.agent, task.on_behalf_of or ""]
    try:
        await ctx.store.issue_token(
            record,
            now=now,
            spends=checked.spends,
            audit=event,
            replay=checked.replay,
            principals=principals,
            vouch=functools.partial(ctx.proofs.admits, checked.proof) if checked.replay is not None and checked.proof else None,
        )
    except Replayed as exc:
        raise replayed_proof(str(grant.jkt)) from exc
    except PredatesReplayCache as exc:
        claim.consumed = True  # spent with the check: the client retries with a new proof
        assert checked.proof is not None  # only a proof can predate the replay cache
        raise ctx.proofs.predates_refusal(checked.proof) from exc
    except (AlreadySpent, Blocked, CapReached, TaskNotActive, ParentRevoked) as exc:
        claim.consumed = True  # the proof was spent first, and stays spent (Store.issue_token)
        raise _issue_refusal(exc) from exc
    return ExchangeResult(
        access_token=token,
        expires_in=grant.exp - now,
        scope=record.scope,
        kind=kind,
        token_type="DPoP" if grant.jkt else "Bearer",
    )


def _issue_refusal(exc: StoreError) -> OAuthError:
    """The wire refusal of an issuance the store refused (RFC 6749 §5.2 codes)."""
    if isinstance(exc, AlreadySpent):
        return spent(InvalidGrant("workload token has already been used", debug="identity jti already redeemed"))
    if isinstance(exc, Blocked):
        return AccessDenied("principal is blocked")
    if isinstance(exc, CapReached):
        return InvalidGrant("task token limit reached")
    if isinstance(exc, TaskNotActive):
        return after_end(InvalidGrant(f"task is {exc}"))
    return after_end(InvalidGrant("subject token has been revoked", debug="revoked or unknown parent jti"))
