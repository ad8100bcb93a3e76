"""Approvers: humans proved by the organisation's OIDC provider (``[approvals]``), with their groups.

An approver presents an ID token (OIDC Core §2) from ``[approvals] issuer`` for ``[approvals]
audience``; it is verified as any OIDC identity is (discovery or a pinned JWKS, ``typ``,
signature, ``iss``/``aud``/``exp``, bounded lifetime: ``identity.oidc.OidcVerifier``). The
principal is rendered from its claims by ``[approvals] principal`` (``user:{/email}``), and the
groups it is in are those of ``[[approver_groups]]`` that list that principal in ``members`` or
share a value with the token's ``group_claim`` in ``idp_groups``. Workload identities (SPIFFE,
clients) never approve: only this provider's tokens are accepted here. A principal made from the
``email`` claim needs the address verified: a token with ``email_verified`` other than ``true``
is refused (OIDC Core §5.1; a provider that does not send the claim at all is taken at its word).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from tether.config import Config, OidcIssuerConfig
from tether.config.approvers import ApproverGroup
from tether.config.sections import ApprovalSettings
from tether.errors import InvalidToken
from tether.identity.checks import IdentityError
from tether.identity.oidc import OidcVerifier
from tether.rules.approval import Approver

__all__ = ["ApproverVerifier", "groups_of"]


def _uses_email(template: str) -> bool:
    """Whether the principal template reads the ``email`` claim (``user:{/email}``, the default)."""
    return "{/email}" in template


def groups_of(principal: str, claims: Mapping[str, Any], groups: Sequence[ApproverGroup], *, claim: str) -> frozenset[str]:
    """The approver groups ``principal`` is in: listed by name, or by a value of the provider's group claim."""
    raw = claims.get(claim, [])
    held = {v for v in raw if isinstance(v, str)} if isinstance(raw, list) else ({raw} if isinstance(raw, str) else set())
    return frozenset(g.name for g in groups if principal in g.members or held & set(g.idp_groups))


class ApproverVerifier:
    def __init__(
        self,
        settings: ApprovalSettings,
        groups: Sequence[ApproverGroup],
        client: httpx.AsyncClient,
        *,
        jwks_file: Path | None,
        max_lifetime: int,
        skew: int,
    ) -> None:
        self.settings = settings
        self.groups = tuple(groups)
        self._oidc: OidcVerifier | None = None
        if settings.issuer:
            config = OidcIssuerConfig(
                issuer=settings.issuer,
                audience=settings.audience,
                principal=settings.principal,
                algorithms=settings.algorithms,
                jwks_file=jwks_file,
                jwks_uri=settings.jwks_uri or None,
            )
            self._oidc = OidcVerifier(config, client, max_lifetime=max_lifetime, skew=skew)

    @classmethod
    def from_config(cls, config: Config, client: httpx.AsyncClient) -> ApproverVerifier:
        settings = config.approvals
        return cls(
            settings,
            config.approver_groups,
            client,
            jwks_file=config.resolve(settings.jwks_file) if settings.jwks_file else None,
            max_lifetime=config.identity.max_lifetime,
            skew=config.tokens.clock_skew,
        )

    @property
    def configured(self) -> bool:
        return self._oidc is not None

    async def verify(self, token: str, *, now: float) -> Approver:
        """The approver an ID token proves; ``InvalidToken`` (401) for anything else."""
        if self._oidc is None:
            raise InvalidToken("approvers are not configured here (`[approvals] issuer`)")
        try:
            identity = await self._oidc.verify(token, now=now)
        except IdentityError as exc:
            raise InvalidToken("the approver's token is not valid", debug=str(exc)) from exc
        claims = identity.claims
        if _uses_email(self.settings.principal) and claims.get("email_verified", True) is not True:
            # OIDC Core §5.1: the provider says it never verified this address; as a principal
            # (``user:{/email}``, the ``members`` lists) it would make anyone who typed it a member
            raise InvalidToken("the approver's e-mail address is not verified", debug="email_verified is not true")
        groups = groups_of(identity.principal, identity.claims, self.groups, claim=self.settings.group_claim)
        return Approver(principal=identity.principal, groups=groups)
