"""Whom a refused exchange is pinned on: only a party that proved it sent the request.

The monitor suspends tasks and scores agents by the principal and task of refusals, so a
refusal names them only when this request spends a fresh credential of that party: a DPoP
proof from the subject token's key (RFC 9449 §11.1) or an unredeemed workload JWT (RFC 7523
§3). A replay proves nothing about its sender and is audited unattributed (``claimed_principal``,
``claimed_task``). Deciding spends the proof but not the JWT, so an agent can fix its request
and retry; a JWT attributes at most one refusal.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from tether.errors import OAuthError
from tether.model import DPoPProof
from tether.proofs import predates_refusal_marker
from tether.sts.context import StsContext

__all__ = ["Claim", "refuse_exchange"]


@dataclass
class Claim:
    """Who the request's credentials name, filled in as each check passes."""

    principal: str | None = None
    task: str | None = None
    subject_jti: str | None = None
    #: the task the verified subject token names (whether or not its holder proved itself)
    claimed_task: str | None = None
    #: the DPoP proof's replay key, and the workload JWTs' single-use marks
    proof: tuple[str, int] | None = None
    #: the checked DPoP proof ``proof`` is the key of (spent through the replay epoch rule)
    checked: DPoPProof | None = None
    spends: list[tuple[str, int]] = field(default_factory=list)
    #: the issuance step spent the proof (it stays spent when the issuance refuses: Store.issue_token)
    consumed: bool = False
    #: a workload JWT without a ``jti`` was presented: nothing single-use proves who sent it
    unprovable: bool = False

    async def proven(self, ctx: StsContext, exc: OAuthError) -> bool:
        """True if what the request presented was fresh, i.e. this request's own; spends its proof."""
        if self.principal is None or self.unprovable or exc.audit.get("replay") or exc.audit.get("spent"):
            return False
        if exc.audit.get(predates_refusal_marker):  # possibly a replay the lost cache forgot
            return False
        now = ctx.now()
        fresh = True
        if self.proof is not None and not self.consumed:
            # the same epoch rule as an issuance: after a loss of the replay cache a proof made
            # before it proves nothing (a resent capture with a changed body is refused, and
            # must not be pinned on the key's holder)
            if self.checked is None:
                return False
            fresh = await ctx.proofs.spend(self.checked, self.proof[0], self.proof[1])
        for key, until in self.spends:
            if not fresh or await ctx.store.spent(key, now=now):
                return False
            fresh = await ctx.store.first_use(_attributed(key), until=until, now=now)
        return fresh


def _attributed(spend_key: str) -> str:
    """The replay-cache key marking that a workload JWT has been pinned on its principal once."""
    return hashlib.sha256(b"attributed\x00" + spend_key.encode()).hexdigest()


async def refuse_exchange(
    ctx: StsContext, exc: OAuthError, claim: Claim, *, audience: str | None, task: str | None, source: str | None
) -> None:
    """Audit a refused exchange; ``audience`` and ``task`` are what the request asked for."""
    proven = await claim.proven(ctx, exc)
    detail: dict[str, Any] = {"audience": audience} if audience else {}
    if not proven:
        if claim.principal is not None:
            detail["claimed_principal"] = claim.principal
        if (claim.task or claim.claimed_task) is not None:
            detail["claimed_task"] = claim.task or claim.claimed_task
    if task is not None and not (proven and claim.task is not None):
        detail["requested_task"] = task[:128]
    await ctx.refuse(
        exc,
        kind="token.refused",
        principal=claim.principal if proven else None,
        task=claim.task if proven else None,
        jti=claim.subject_jti,
        detail=detail or None,
        source=source,
    )
