"""The typed caller a protected resource sees: who, on whose behalf, through whom, for what."""

from __future__ import annotations

from dataclasses import dataclass

from tether.model import AccessToken, ApprovalClaim

__all__ = ["Principal"]


@dataclass(frozen=True)
class Principal:
    """Built from a verified, key-bound, unrevoked tether token.

    Authorise on ``subject``, ``scopes`` and the current ``actor`` only: RFC 8693 §4.1
    says nested actors in ``actors[1:]`` are informational.
    """

    subject: str
    agent: str
    client_id: str
    scopes: frozenset[str]
    task: str | None
    purpose: str | None
    actors: tuple[str, ...]
    jti: str
    audience: str
    expires_at: int
    jkt: str | None
    issued_at: int = 0
    #: the kind of identity ``client_id`` proved (``spiffe``, ``oidc``, ``client``; ``unknown`` if the token does not say)
    client_kind: str = "unknown"
    #: the identity source ``client_id`` proved (Cedar's ``trust_domain``; ``""`` if the token does not say)
    client_domain: str = ""
    #: RFC 8705 ``cnf.x5t#S256``: the client certificate the token is bound to, if any
    x5t: str | None = None
    #: the one tool call the token was issued for, and the human approval it carries (``rules.approval``)
    tctx: str | None = None
    apr: ApprovalClaim | None = None

    @property
    def binding(self) -> str:
        """The token's key binding as one stable string (its DPoP key and/or certificate thumbprint)."""
        return f"jkt={self.jkt or ''} x5t={self.x5t or ''}"

    @property
    def actor(self) -> str | None:
        """The current actor (the service that called us on the subject's behalf), if any."""
        return self.actors[0] if self.actors else None

    @classmethod
    def from_token(cls, token: AccessToken) -> Principal:
        assert token.jkt is not None or token.x5t is not None
        return cls(
            subject=token.sub,
            agent=token.agent,
            client_id=token.client_id,
            scopes=token.scope,
            task=token.txn,
            purpose=token.purp,
            actors=token.actors,
            jti=token.jti,
            audience=token.aud,
            expires_at=token.exp,
            jkt=token.jkt,
            issued_at=token.iat,
            client_kind=token.client_kind,
            client_domain=token.client_domain,
            x5t=token.x5t,
            tctx=token.tctx,
            apr=token.apr,
        )
