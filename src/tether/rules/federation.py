"""A federation peer's access token at the border: accepted within the ceiling, never narrowed
(draft-ietf-oauth-identity-chaining §2.3-§2.4; RFC 7523 §3; RFC 8693 §2.1; SECURITY FED-01, FED-02).

An agent of trust domain A presents, at this STS (B), a token A issued for B's issuer. These
rules say whether B accepts it and what B then issues: the peer must vouch for a key-bound,
task-bound token of an admitted agent (``check_foreign_token``); what is asked must lie within
both that token and the ceiling B configured for the peer (``check_ceiling``); the linked task B
opens never exceeds what A's task has left (claim ``tsk``) nor the ceiling (``linked_limits``);
and the session token B issues keeps A's whole chain, every principal renamed ``fed:<peer>/…``
(``derive_linked_session``), so a foreign name never equals a local one.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from tether.errors import InvalidDPoPProof, InvalidGrant, InvalidTarget, UnauthorizedClient
from tether.model import AccessToken, Task, TaskBudget
from tether.rules.claims import MAX_ACT_DEPTH, Grant
from tether.rules.exchange import Ask, check_task_usable, task_budget
from tether.rules.jws import JWSError, b64url_decode, peek_header, strict_json_loads
from tether.rules.principal import is_principal
from tether.rules.scope import check_subset
from tether.rules.task import is_purpose

__all__ = [
    "FEDERATED_KIND",
    "Ceiling",
    "LinkedLimits",
    "check_ceiling",
    "check_foreign_token",
    "derive_linked_session",
    "linked_limits",
    "local_chain",
    "peek_issuer",
]

#: the kind of identity a peer's principal has here (claims ``ckd``/``akd``, Cedar ``kind``)
FEDERATED_KIND = "federated"
#: a foreign ``txn`` or ``jti``: an identifier, printable ASCII without spaces (as B's own ids are)
_FOREIGN_ID = re.compile(r"[\x21-\x7e]{1,128}")


class Ceiling(Protocol):
    """What this deployment allows one peer (``config.federation.FederationPeer`` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def audiences(self) -> tuple[str, ...]: ...
    @property
    def scopes(self) -> frozenset[str]: ...
    @property
    def max_depth(self) -> int: ...
    @property
    def max_ttl(self) -> int: ...
    @property
    def max_tokens(self) -> int: ...
    def admits_agent(self, principal: str) -> bool: ...
    def local_name(self, principal: str) -> str: ...


@dataclass(frozen=True)
class LinkedLimits:
    """The limits of the linked task opened for a foreign token (``linked_limits``)."""

    expires_at: int
    max_depth: int
    max_tokens: int


def peek_issuer(token: str, *, max_length: int) -> str | None:
    """The ``iss`` of an unverified compact JWS, or ``None`` if it has none or is malformed.

    Only to tell a peer's token from a local one *before* any verification (so a local token
    keeps its path and a foreign one is checked against that peer's keys alone); nothing read
    here is trusted until the signature of the peer it names verifies.
    """
    try:
        peek_header(token, max_length=max_length)  # the size and shape gates, before any decoding
        claims = strict_json_loads(b64url_decode(token.split(".")[1]))
    except (JWSError, ValueError):
        return None
    value = claims.get("iss") if isinstance(claims, dict) else None
    return value if isinstance(value, str) else None


def check_foreign_token(token: AccessToken, ceiling: Ceiling) -> TaskBudget:
    """A verified peer token may cross the border only if it is key-bound, task-bound, says what its
    task has left, and was issued to an agent the ceiling admits; returns its ``tsk``.

    Bearer tokens never cross (RFC 9449 §6.1: ``cnf.jkt`` names the key the caller proves here;
    a certificate binding cannot be proven to another STS). The linked task needs the foreign
    task (``txn``) to join and to be revoked with, and ``tsk`` to stay within it. An agent the
    peer may not send is ``unauthorized_client`` (RFC 6749 §5.2): the grant is fine, its client is not.
    """
    if token.jkt is None:
        raise InvalidGrant("a foreign token must be bound to a dpop key", debug="foreign token without cnf.jkt")
    if token.txn is None:
        raise InvalidGrant("foreign token is not bound to a task", debug="foreign token without txn")
    if token.tsk is None:
        raise InvalidGrant("foreign token does not say what its task has left", debug="foreign token without tsk")
    _check_foreign_values(token, ceiling)
    if not ceiling.admits_agent(token.client_id):
        raise UnauthorizedClient(
            "this peer's agent is not accepted here", debug=f"client_id `{token.client_id:.200}` not in peer agents"
        )
    return token.tsk


def _check_foreign_values(token: AccessToken, ceiling: Ceiling) -> None:
    """What the peer signed is held to the rules B applies to the same values of its own (FED-02).

    ``purp`` becomes the linked task's purpose (``rules.task.is_purpose``: no control or bidi
    characters an operator would misread); ``txn`` and ``jti`` go into link rows and audit records
    as identifiers; every principal must still be one once renamed ``fed:<peer>/…`` — otherwise B
    would issue a session its own verifier refuses at the next hop (RFC 8725 §3.10: received claims
    are not trusted as they are)."""
    assert token.txn is not None
    if token.purp is not None and not is_purpose(token.purp):
        raise InvalidGrant("foreign token's purpose is not printable text", debug="foreign purp malformed")
    for name, value in (("txn", token.txn), ("jti", token.jti)):
        if not _FOREIGN_ID.fullmatch(value):
            raise InvalidGrant(f"foreign token's `{name}` is malformed", debug=f"foreign {name} malformed")
    for principal in (token.sub, token.client_id, *token.actors):
        if not is_principal(ceiling.local_name(principal)):
            raise InvalidGrant(
                "a foreign principal does not fit this deployment's names",
                debug=f"principal `{principal:.64}` too long once namespaced",
            )


def check_ceiling(token: AccessToken, ceiling: Ceiling, ask: Ask, *, now: int) -> frozenset[str]:
    """FED-01: refuse, never narrow. Returns the scope granted (``ask.scope``, default the token's).

    The token and its task must still be alive (``exp``, ``tsk.exp``); its chain must leave
    room: shorter than the peer's ``max_depth`` and with at least one level left in A's task
    (``tsk.depth``), since crossing into this domain counts as a delegation level; a named
    ``resource``/``audience`` (RFC 8707 §2, RFC 8693 §2.1) must be one of the peer's audiences
    (or this issuer, which the session token is for); the scope must be within both the token's
    scope and the ceiling (RFC 6749 §3.3) — widening either is ``invalid_scope``.
    """
    tsk = token.tsk
    assert tsk is not None  # check_foreign_token
    if now >= token.exp:
        raise InvalidGrant("foreign token has expired", debug=f"exp {token.exp} now {now}")
    if now >= tsk.exp:
        raise InvalidGrant("the foreign task has ended", debug=f"tsk.exp {tsk.exp} now {now}")
    if len(token.actors) >= ceiling.max_depth:
        raise InvalidGrant(
            f"delegation depth {len(token.actors)} reaches the peer's max_depth {ceiling.max_depth}",
            debug=f"foreign act chain of {len(token.actors)}",
        )
    if tsk.depth < 1:
        raise InvalidGrant("the foreign task allows no further delegation", debug=f"tsk.depth {tsk.depth}")
    if ask.audience is not None and ask.audience != ask.issuer and ask.audience not in ceiling.audiences:
        raise InvalidTarget(f"resource `{ask.audience:.200}` is not allowed for this peer's agents")
    granted = token.scope if ask.scope is None else ask.scope
    check_subset(granted, token.scope)
    check_subset(granted, ceiling.scopes, what="the federation ceiling")
    return granted


def linked_limits(token: AccessToken, ceiling: Ceiling, *, now: int) -> LinkedLimits:
    """The linked task's limits: the least of the ceiling and what A's task has left (``tsk``).

    ``max_depth`` here bounds the whole ``act`` chain of the linked task's tokens, which carry
    A's chain: at most the peer's ``max_depth``, and at most A's chain plus what A's task has
    left minus the one level crossing the border took (``check_ceiling`` ensured both leave the
    chain as it stands).
    """
    tsk = token.tsk
    assert tsk is not None
    chain = len(token.actors)
    return LinkedLimits(
        expires_at=min(now + ceiling.max_ttl, tsk.exp),
        max_depth=min(ceiling.max_depth, chain + tsk.depth - 1, MAX_ACT_DEPTH),
        max_tokens=min(ceiling.max_tokens, tsk.tokens),
    )


def local_chain(actors: Collection[str], ceiling: Ceiling) -> tuple[str, ...]:
    """FED-02: the foreign ``act`` chain with every principal in the peer's namespace, newest first."""
    return tuple(ceiling.local_name(actor) for actor in actors)


def derive_linked_session(token: AccessToken, task: Task, ceiling: Ceiling, ask: Ask, *, now: int) -> Grant:
    """The session token of the linked ``task`` for the agent that presented ``token``.

    Bound to the same key the foreign token names (RFC 9449 §6.1: the proof at this endpoint
    must come from it); audience this issuer; the foreign subject and chain renamed into the
    peer's namespace (FED-02); no longer-lived than the foreign token, the task or the session
    TTL (a token never outlives its parent). ``ask.scope`` (checked by ``check_ceiling``) must
    also lie within a linked task that was joined rather than opened.
    """
    if ask.jkt is None:
        raise InvalidDPoPProof("a dpop proof is required")
    if ask.jkt != token.jkt:
        raise InvalidDPoPProof("dpop proof key does not match the foreign token binding")
    check_task_usable(task, now)
    agent = ceiling.local_name(token.client_id)
    if task.agent != agent:
        raise InvalidGrant("linked task is not this agent's", debug=f"{task.agent} != {agent}")
    granted = token.scope if ask.scope is None else ask.scope
    check_subset(granted, task.scopes, what="the linked task")
    actors = local_chain(token.actors, ceiling)
    if len(actors) > min(task.max_depth, MAX_ACT_DEPTH):
        raise InvalidGrant(f"delegation depth {len(actors)} exceeds the linked task's max_depth {task.max_depth}")
    exp = min(now + ask.limits.session_ttl, task.expires_at, token.exp)
    if exp <= now:
        raise InvalidGrant("foreign token or linked task expires too soon to derive a token")
    return Grant(
        sub=ceiling.local_name(token.sub),
        aud=ask.issuer,
        scope=granted,
        exp=exp,
        client_id=agent,
        agent=agent,
        jkt=ask.jkt,
        txn=task.id,
        actors=actors,
        purp=task.purpose,
        client_kind=FEDERATED_KIND,
        agent_kind=FEDERATED_KIND,
        client_domain=ceiling.name,
        agent_domain=ceiling.name,
        tsk=task_budget(task, actors),
    )
