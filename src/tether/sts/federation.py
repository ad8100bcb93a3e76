"""The border at this STS: a federation peer's access token becomes a session of a linked task.

draft-ietf-oauth-identity-chaining §2.4: the agent presents at this (the foreign) STS the token
its home STS issued for this issuer, as an RFC 7523 §2.1 ``jwt-bearer`` assertion or an RFC 8693
§2.1 ``subject_token``. Here: which peer a token comes from (its exact ``iss``, read before any
verification), its signature with that peer's keys alone, its single redemption, the linked task
it opens or joins (``Store.link_task``), and FED-03: nothing is issued for a peer's principal
while the peer's revocation feed is stale. The checks themselves are ``rules.federation``.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from tether.audit.chain import AuditEvent
from tether.config.federation import FEDERATED_PREFIX, FederationPeer
from tether.errors import (
    AccessDenied,
    InvalidGrant,
    InvalidRequest,
    InvalidToken,
    NotFoundError,
    TemporarilyUnavailable,
    TooManyRequests,
    after_end,
    spent,
)
from tether.federation.keys import peer_key_source
from tether.identity.jwks_cache import KeySource
from tether.model import AccessToken, Task, TaskState
from tether.rules.claims import MAX_ACCESS_TOKEN, Expected, verify_access_token
from tether.rules.federation import linked_limits, peek_issuer
from tether.rules.jws import JWSError, PublicKey, peek_header
from tether.rules.scope import format_scope
from tether.store.errors import Blocked, Conflict
from tether.store.records import FederationLink
from tether.sts.context import StsContext
from tether.sts.tasks import move_task

__all__ = [
    "check_feeds",
    "check_not_revoked",
    "check_still_current",
    "count_crossing",
    "end_linked_task",
    "foreign_issuer",
    "link_task",
    "linked_candidate",
    "opened_by",
    "peer_of_token",
    "redeem",
    "stale_peer",
    "unredeemed",
    "verify_foreign_token",
]

log = logging.getLogger("tether.federation")

#: a redeemed foreign token stays marked this long past its ``exp`` (as a workload JWT's jti)
_SPEND_MARGIN = 600
#: the fixed window ``max_crossings_per_minute`` counts in
_WINDOW = 60


def peer_of_token(ctx: StsContext, token: str) -> FederationPeer | None:
    """The peer whose issuer is exactly the token's (unverified) ``iss``; ``None`` for any other token.

    One cheap check when no ``[[federation]]`` is configured: the local path does no more work; nor
    for a token this STS has already verified with its own keys (a local hop's subject token, the
    common case), whose payload would otherwise be decoded once more here."""
    peers = ctx.settings.federation
    if not peers or ctx.verified.get(token) is not None:
        return None
    issuer = peek_issuer(token, max_length=MAX_ACCESS_TOKEN)
    return next((peer for peer in peers if peer.issuer == issuer), None)


def _peer_named(principal: str) -> str | None:
    """The peer name of a principal in a federation namespace (``fed:<name>/…``), else ``None``."""
    if not principal.startswith(FEDERATED_PREFIX):
        return None
    return principal[len(FEDERATED_PREFIX) :].partition("/")[0]


def stale_peer(ctx: StsContext, principals: Iterable[str], *, now: float) -> str | None:
    """The first peer named by ``principals`` (``fed:<name>/…``) whose revocation feed is not fresh,
    else ``None``; a name whose peer is no longer configured is stale (no feed is fresh for it)."""
    for name in dict.fromkeys(n for n in map(_peer_named, principals) if n is not None):
        if not ctx.federation.fresh(name, now):
            return name
    return None


def check_feeds(ctx: StsContext, principals: Iterable[str], *, now: float) -> None:
    """FED-03: refuse (503 ``temporarily_unavailable``) to issue anything naming a peer's principal
    — requester, task agent, subject or any actor — unless that peer's revocation feed is fresh:
    a revocation the peer published might not have arrived. Fail closed (``stale_peer``)."""
    name = stale_peer(ctx, principals, now=now)
    if name is not None:
        raise TemporarilyUnavailable(
            "the federation peer's revocations are not current; retry shortly",
            debug=f"feed of peer `{name:.64}` is stale",
        )


def check_not_revoked(ctx: StsContext, peer: FederationPeer, token: AccessToken, *, now: float) -> None:
    """FED-03: a foreign token whose task the peer ended, or which the peer revoked, opens nothing here.

    Its ``exp`` and ``tsk.exp`` are the foreign task's hard cap, not its end: after the peer's feed
    said the task ended, the token (in a thief's hands, or the agent's) would otherwise open a new
    linked task — the first one, or one replacing the task the follower just cancelled."""
    if ctx.federation.revoked(peer.name, task=token.txn, jti=token.jti, now=now):
        raise after_end(InvalidGrant("the foreign task has ended or the token was revoked", debug="revoked by the peer's feed"))


def opened_by(task: Task, peer: str) -> bool:
    """Whether ``peer`` opened ``task`` here (its agent in ``fed:<peer>/``, created by ``federation:<peer>``).

    A ``federation_links`` row is only a pointer: one left by a database writer (or a bug) naming
    a local task, or another peer's linked task, must not let this peer's feed end it (FED-03 ends
    what the peer's task gave rise to here, nothing else)."""
    return task.created_by == f"federation:{peer}" and task.agent.startswith(f"{FEDERATED_PREFIX}{peer}/")


async def end_linked_task(ctx: StsContext, peer: str, task_id: str, detail: dict[str, Any]) -> bool:
    """Cancel a linked task because its peer revoked what it came from (audited as ``federation:<peer>``);
    ``False`` if it had already ended (here, by another worker or replica, or by its hard cap), or if
    the peer did not open it (``opened_by``)."""
    task = await ctx.store.get_task(task_id)
    if task is None or task.effective_state(ctx.now()) is not TaskState.ACTIVE:
        return False
    if not opened_by(task, peer):
        log.warning("a link row of peer %s names task %s, which that peer did not open: not ended", peer, task_id)
        return False
    try:
        await move_task(ctx, task, TaskState.CANCELLED, principal=f"federation:{peer}", detail=detail)
    except (InvalidRequest, NotFoundError):
        return False  # ended between the read and the write: what was wanted
    return True


async def check_still_current(ctx: StsContext, peer: FederationPeer, token: AccessToken, task: Task) -> None:
    """FED-03, asked again once the linked task is committed: the peer's feed may have said the
    foreign task ended while it was being linked, after the follower looked for linked tasks to
    end. The follower marks an entry before it ends anything (``RevocationFeed._consume``), so
    either it finds this task or this check sees the entry; then the task ends here and nothing
    is issued."""
    if not ctx.federation.revoked(peer.name, task=token.txn, jti=token.jti, now=ctx.now()):
        return
    await end_linked_task(ctx, peer.name, task.id, {"federation": peer.name, "foreign_task": token.txn, "while": "linking"})
    raise after_end(InvalidGrant("the foreign task has ended or the token was revoked", debug="ended while linking"))


def foreign_issuer(ctx: StsContext, task: Task) -> str:
    """The issuer of the peer a linked task's chain came from (Cedar ``foreign_issuer``); ``""`` for a local task."""
    if not ctx.settings.federation:
        return ""
    name = _peer_named(task.agent)
    return next((peer.issuer for peer in ctx.settings.federation if peer.name == name), "")


def _key_source(ctx: StsContext, peer: FederationPeer) -> KeySource:
    """The peer's key source, made once per peer and kept on the context (a JWKS URL is cached there)."""
    source = ctx.peer_keys.get(peer.name)
    if source is None:
        if ctx.http is None:
            raise TemporarilyUnavailable("the federation peer's keys cannot be fetched", debug="no outbound http client")
        source = ctx.peer_keys[peer.name] = peer_key_source(peer, ctx.http)
    return source


async def verify_foreign_token(ctx: StsContext, token: str, peer: FederationPeer) -> AccessToken:
    """The peer's token verified as RFC 9068 §4 asks, against the peer's keys and algorithms only:
    ``typ`` at+jwt, ``iss`` exactly the peer's, one ``aud`` exactly this issuer, times within the
    skew and a lifetime no longer than this STS's own tokens, a well-formed ``act`` (≤ 5) and ``tsk``.
    Every failure is the same public ``invalid_grant`` (the ``debug`` says which check)."""
    now = ctx.now()
    try:
        header = peek_header(token, max_length=MAX_ACCESS_TOKEN)
        keyset = await _key_source(ctx, peer).keys(kid=header.get("kid"), now=now)

        def resolve(h: Mapping[str, Any]) -> PublicKey:
            key = keyset.find(h.get("kid"))
            if key is None:
                raise JWSError("no key of the peer has this kid")
            return key

        settings = ctx.settings
        expected = Expected(peer.issuer, settings.issuer, skew=settings.skew, max_lifetime=settings.max_token_lifetime)
        return verify_access_token(token, expected, resolve_key=resolve, algorithms=peer.algorithms, now=now)
    except (JWSError, InvalidToken) as exc:
        debug = exc.debug if isinstance(exc, InvalidToken) else str(exc)
        raise InvalidGrant("foreign token is invalid", debug=f"peer {peer.name}: {debug}") from exc


def _spend_key(peer: FederationPeer, token: AccessToken) -> tuple[str, int]:
    digest = hashlib.sha256(f"fed\x00{peer.name}\x00{token.jti}".encode()).hexdigest()
    return digest, token.exp + _SPEND_MARGIN


def _replayed() -> InvalidGrant:
    return spent(InvalidGrant("foreign token has already been used", debug="foreign jti already redeemed"))


async def unredeemed(ctx: StsContext, peer: FederationPeer, token: AccessToken) -> None:
    """A foreign token already redeemed here is refused at once, before the ceiling is consulted
    (a captured token must not learn what would be granted), like a redeemed workload JWT."""
    if await ctx.store.spent(_spend_key(peer, token)[0], now=ctx.now()):
        raise _replayed()


async def redeem(ctx: StsContext, peer: FederationPeer, token: AccessToken) -> None:
    """Spend the foreign token (peer + ``jti``, until ``exp`` plus a margin): once only, atomically."""
    key, until = _spend_key(peer, token)
    if not await ctx.store.spend(key, until=until, now=ctx.now()):
        raise _replayed()


async def count_crossing(ctx: StsContext, peer: FederationPeer, *, now: int) -> None:
    """Count one crossing from ``peer`` in this minute's window; beyond ``max_crossings_per_minute``,
    429 ``too_many_requests`` with ``Retry-After`` (the window's end). A compromised peer signs any
    ``txn`` it likes, and each new one opens a linked task (store rows, a ceiling's worth of tokens):
    the count bounds how many it can open, whatever each one is allowed."""
    window = now - now % _WINDOW
    count = await ctx.store.count(f"fed:crossings:{peer.name}:{window}", until=window + _WINDOW, now=now)
    if count > peer.max_crossings_per_minute:
        raise TooManyRequests(
            "too many crossings from this federation peer; retry later",
            retry_after=max(1, window + _WINDOW - now),
            debug=f"peer `{peer.name}` crossings {count} > max_crossings_per_minute {peer.max_crossings_per_minute}",
        )


def linked_candidate(peer: FederationPeer, token: AccessToken, scope: frozenset[str], *, now: int) -> Task:
    """The linked task ``token`` would open: its agent and subject the foreign ones renamed into the
    peer's namespace, the peer's audiences, the scope granted, ``rules.federation.linked_limits``,
    created by ``federation:<peer>``. (Policy judges it before anything is written.)"""
    limits = linked_limits(token, peer, now=now)
    return Task(
        id="tsk_" + secrets.token_urlsafe(16),
        agent=peer.local_name(token.client_id),
        audiences=peer.audiences,
        scopes=scope,
        created_at=now,
        expires_at=limits.expires_at,
        max_depth=limits.max_depth,
        max_tokens=limits.max_tokens,
        on_behalf_of=peer.local_name(token.sub) if token.sub != token.client_id else None,
        purpose=token.purp,
        created_by=f"federation:{peer.name}",
    )


async def link_task(ctx: StsContext, peer: FederationPeer, token: AccessToken, task: Task, *, now: int) -> Task:
    """Open ``task`` (``linked_candidate``) as the linked task of ``token``'s foreign task, or join
    the active one of that foreign task and agent; ``Store.link_task`` writes task, link and
    ``federation.linked`` audit record at once. Returns the task linked."""
    assert token.txn is not None
    audit = AuditEvent(
        kind="federation.linked",
        outcome="ok",
        principal=task.agent,
        task=task.id,
        detail={
            "peer": peer.name,
            "iss": peer.issuer,
            "foreign_task": token.txn,
            "foreign_jti": token.jti,
            "scope": format_scope(task.scopes),
            "expires_at": task.expires_at,
            "max_depth": task.max_depth,
            "max_tokens": task.max_tokens,
        },
    )
    link = FederationLink(peer.name, token.txn, token.jti, task.id, now)
    try:
        return await ctx.store.link_task(task, link, now=now, audit=audit)
    except Blocked as exc:
        raise AccessDenied("principal is blocked") from exc
    except Conflict as exc:
        raise _replayed() from exc
