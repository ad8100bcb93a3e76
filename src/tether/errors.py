"""Typed errors carrying their OAuth wire code (RFC 6749 §5.2, RFC 6750 §3.1, RFC 9449 §7.1).

Every refusal in tether is one of these. The public ``description`` goes on the wire;
``debug`` goes only to logs and the audit record, so a client learns what it can fix without
learning which internal check an attack tripped. Rendering to HTTP happens in exactly one
place, ``tether.web.errors``.
"""

from __future__ import annotations

import re
from typing import TypeVar

__all__ = [
    "AccessDenied",
    "AuthorizationPending",
    "ConfigError",
    "ExpiredToken",
    "InsufficientScope",
    "InvalidClient",
    "InvalidDPoPProof",
    "InvalidGrant",
    "InvalidRequest",
    "InvalidScope",
    "InvalidTarget",
    "InvalidToken",
    "NotFoundError",
    "OAuthError",
    "PolicyUnavailable",
    "SlowDown",
    "TemporarilyUnavailable",
    "TetherError",
    "TooManyRequests",
    "UnauthorizedClient",
    "Unavailable",
    "UnsupportedGrantType",
    "UseDPoPNonce",
    "after_end",
    "replay",
    "spent",
]

# RFC 6749 §5.2: error_description is limited to %x20-21 / %x23-5B / %x5D-7E.
_DESCRIPTION_CHARS = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def _wire_safe(text: str) -> str:
    return _DESCRIPTION_CHARS.sub("?", text)[:300]


class TetherError(Exception):
    """Root of every error tether raises on purpose."""


class OAuthError(TetherError):
    """An error with an RFC wire code; ``status`` is the HTTP status at an AS endpoint.

    ``rs_status`` is the status when the same error is raised at a resource server
    (RFC 6750 §3.1 / RFC 9449 §7.1 use 401 where the AS uses 400).
    """

    error: str = "invalid_request"
    status: int = 400
    rs_status: int = 400

    def __init_subclass__(cls, **kwargs: object) -> None:
        """A subclass that sets ``status`` alone answers the same at a resource server."""
        super().__init_subclass__(**kwargs)
        if "status" in cls.__dict__ and "rs_status" not in cls.__dict__:
            cls.rs_status = cls.status

    def __init__(self, description: str, *, debug: str | None = None) -> None:
        self.description = _wire_safe(description)
        self.debug = debug or description
        #: extra fields for the audit record of this refusal (never rendered on the wire)
        self.audit: dict[str, object] = {}
        #: further members of the JSON error body (RFC 8628 §3.5: ``interval``, the approval id)
        self.fields: dict[str, object] = {}
        #: who the refusal may be attributed to: set only once the caller proved possession
        #: of the token's key (a replayed proof, a revoked token), never from a mere claim
        self.holder: object | None = None
        super().__init__(self.description)


E = TypeVar("E", bound=OAuthError)


def after_end(exc: E) -> E:
    """Mark a refusal caused by an ended task or a revoked token (the monitor's
    ``use_after_end`` detector reads this marker, never the description)."""
    exc.audit["after_end"] = True
    return exc


def replay(exc: E) -> E:
    """Mark a refusal of a DPoP proof presented twice (the ``dpop_replay`` detector)."""
    exc.audit["replay"] = True
    return exc


def spent(exc: E) -> E:
    """Mark a refusal of a single-use workload JWT presented again: like a replayed proof,
    it proves nothing about who sent it, so the refusal is never attributed."""
    exc.audit["spent"] = True
    return exc


class InvalidRequest(OAuthError):
    error = "invalid_request"


class InvalidClient(OAuthError):
    error = "invalid_client"
    status = 401


class InvalidGrant(OAuthError):
    error = "invalid_grant"


class UnauthorizedClient(OAuthError):
    error = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"


class InvalidScope(OAuthError):
    error = "invalid_scope"


class InvalidTarget(OAuthError):
    error = "invalid_target"


class AccessDenied(OAuthError):
    error = "access_denied"
    status = 403


class InvalidDPoPProof(OAuthError):
    error = "invalid_dpop_proof"
    rs_status = 401


class UseDPoPNonce(OAuthError):
    """RFC 9449 §8/§9: the caller must retry with the nonce in ``DPoP-Nonce``."""

    error = "use_dpop_nonce"
    rs_status = 401

    def __init__(self, nonce: str, description: str = "a fresh dpop nonce is required") -> None:
        super().__init__(description)
        self.nonce = nonce


class AuthorizationPending(OAuthError):
    """RFC 8628 §3.5 / CIBA §11: the request is held for a human's decision; poll again.

    The body names the approval to poll with (``approval_id``), how often (``interval``
    seconds) and for how long it can still be decided (``expires_in``)."""

    error = "authorization_pending"

    def __init__(self, approval_id: str, *, interval: int, expires_in: int, description: str | None = None) -> None:
        super().__init__(description or "the request is held for approval; poll again with `approval_id`")
        self.approval_id = approval_id
        self.fields.update({"approval_id": approval_id, "interval": interval, "expires_in": max(0, expires_in)})


class SlowDown(AuthorizationPending):
    """RFC 8628 §3.5: still pending, and polled faster than ``interval``; the interval grows by 5 s."""

    error = "slow_down"


class ExpiredToken(OAuthError):
    """RFC 8628 §3.5: the approval expired before anyone decided; start a new request."""

    error = "expired_token"


class InvalidToken(OAuthError):
    error = "invalid_token"
    status = 401


class InsufficientScope(OAuthError):
    """RFC 6750 §3.1: ``scope`` names every scope the request needs (the challenge's
    ``scope`` attribute), so a client can ask for all of them in one step-up."""

    error = "insufficient_scope"
    status = 403

    def __init__(self, description: str, *, debug: str | None = None, scope: str | None = None) -> None:
        super().__init__(description, debug=debug)
        self.scope = scope


class TooManyRequests(OAuthError):
    """A cap or rate was hit; ``retry_after`` seconds, when known, goes in ``Retry-After``."""

    error = "too_many_requests"
    status = 429

    def __init__(self, description: str, *, retry_after: int | None = None, debug: str | None = None) -> None:
        super().__init__(description, debug=debug)
        self.retry_after = retry_after


class NotFoundError(OAuthError):
    error = "not_found"
    status = 404


class TemporarilyUnavailable(OAuthError):
    """Fail closed: a dependency could not answer, so nothing was granted (503)."""

    error = "temporarily_unavailable"
    status = 503


class Unavailable(TetherError):
    """Something that must answer could not (the store, the policy engine): 503 at the edge, nothing granted."""


class PolicyUnavailable(Unavailable):
    """The policy engine could not decide; mapped to 503 at the edge (fail closed)."""


class ConfigError(TetherError):
    """A configuration problem, reported as one line naming the key (CLI exit code 2)."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = _one_line(key)
        self.problem = _one_line(problem)
        super().__init__(f"{self.key}: {self.problem}")


def _one_line(text: str) -> str:
    """Escape control characters so a message stays one line (no log-line injection)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
