"""Held calls at a resource: an approved token serves one call (SECURITY APR-01; ``rules.approval``).

``rules.approval.check_call`` says whether a token fits a call (``Verifier.authorize_call``
runs it); this module adds the one thing that needs state: a token issued under a human
approval (``apr``) is spent on the first call it serves, by its ``jti`` in the replay cache
(``first_use``: atomic, and shared by every replica on a shared cache such as Redis), so a
second call with it is refused. Log and audit lines name the approval and ``tctx``, never the
call's arguments (``approval_fields``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from tether.errors import AccessDenied
from tether.model import ApprovalClaim
from tether.proofs import EpochReplayCache, ProofChecker, ReplayCache
from tether.resource.principal import Principal
from tether.rules.tool_call import ToolCall

__all__ = ["APPROVED_CALL_PREFIX", "POLICY_DENIAL", "ApprovalSpent", "approval_fields", "spend"]

log = logging.getLogger("tether.resource")

#: the description of a Cedar ``call`` deny (a held call's refusals say something else)
POLICY_DENIAL = "denied by policy"
#: the replay-cache key prefix that spends a token issued under approval on its one call
APPROVED_CALL_PREFIX = "apr-call:"


class ApprovalSpent(AccessDenied):
    """A token issued under a human approval presented for a second call (APR-01: one approval,
    one request); the agent asks for a new token, and a human approves again if the policy says so."""

    def __init__(self, claim: ApprovalClaim, jti: str) -> None:
        super().__init__(
            "this approved token has already been used for its call: request a new token",
            debug=f"approval {claim.id} token {jti} used twice",
        )


def approval_fields(principal: Principal) -> dict[str, str]:
    """What a log or audit line says about a token's approval: its id and ``tctx``, never arguments."""
    fields: dict[str, str] = {}
    if principal.apr is not None:
        fields["approval"] = principal.apr.id
    if principal.tctx is not None:
        fields["tctx"] = principal.tctx
    return fields


async def spend(
    replay: ReplayCache,
    principal: Principal,
    *,
    required: Collection[str],
    call: ToolCall | None,
    until: int,
    now: float,
    proofs: ProofChecker | None = None,
) -> None:
    """Spend ``principal``'s approved token on this call, or refuse it as already spent.

    Every ``tools/call`` (``call``) spends an ``apr`` token, and so does a plain request the
    policy holds (``required`` not empty); a token without ``apr``, or an unheld plain request,
    spends nothing. ``until``: how long the spend is remembered (past the token's ``exp``)."""
    if principal.apr is None or (call is None and not required):
        return
    key = APPROVED_CALL_PREFIX + principal.jti
    if isinstance(replay, EpochReplayCache) and proofs is not None:
        # a cache that can lose keys (Redis): the mark of a call made before a loss is gone, so a
        # token issued before the cache's epoch began is refused as possibly used (fail closed;
        # the agent asks for a new token, within what the approval still grants)
        fresh, epoch = await replay.spend_proof(key, until=until, now=now)
        if fresh and not proofs.vouches_issued(principal.issued_at, epoch):
            log.info("approved token predates the replay cache's epoch", extra=approval_fields(principal))
            exc = ApprovalSpent(principal.apr, principal.jti)
            exc.holder = principal
            raise exc
    else:
        fresh = await replay.first_use(key, until=until, now=now)
    if not fresh:
        log.info(
            "approved token used again by %s%s",
            principal.actor or principal.client_id,
            f" for tool {call.name}" if call is not None else "",
            extra=approval_fields(principal),
        )
        exc = ApprovalSpent(principal.apr, principal.jti)
        exc.holder = principal
        raise exc
