"""Reading the DPoP-related request headers (RFC 9449 §4.3 item 1, §7.1; RFC 6750 §2.1).

Exactly one ``DPoP`` header; the header name is case-insensitive (HTTP), and so is the
``DPoP`` authorization scheme (RFC 9110 §11.1). A token sent under ``Bearer`` is returned as
such, so that a DPoP-bound token presented as a bearer token is refused rather than silently
accepted.
"""

from __future__ import annotations

from starlette.datastructures import Headers

from tether.errors import InvalidDPoPProof, InvalidRequest, InvalidToken

__all__ = ["authorization", "dpop_header"]

_MAX_HEADER = 16 * 1024


def dpop_header(headers: Headers) -> str | None:
    values = headers.getlist("dpop")
    if not values:
        return None
    if len(values) > 1 or "," in values[0]:
        raise InvalidDPoPProof("exactly one dpop proof is allowed")
    value = values[0].strip()
    if not value or len(value) > _MAX_HEADER:
        raise InvalidDPoPProof("invalid dpop proof")
    return value


def authorization(headers: Headers) -> tuple[str, str]:
    """``(scheme, token)`` with the scheme lower-cased; refuses missing or malformed values."""
    values = headers.getlist("authorization")
    if not values:
        raise InvalidToken("an access token is required")
    if len(values) > 1:
        raise InvalidRequest("exactly one authorization header is allowed")
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if not token or " " in token or len(token) > _MAX_HEADER:
        raise InvalidToken("malformed authorization header")
    return scheme.lower(), token
