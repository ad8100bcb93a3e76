"""What the gateway sends to an upstream OAuth server and how it reads the answer (RFC 6749 §2.3, §5; RFC 7009 §2).

Pure: forms, headers and parsing, no I/O. An upstream answer is read strictly and never passed
on: it may carry the route's refresh token or echo its client secret, so the agent only ever
sees the gateway's own fixed description (``TokenUnavailable`` 503 when the upstream could not
answer, ``TokenRefused`` 502 when it refused the gateway's credentials). The upstream's
``error`` code goes to the log and the audit (``debug``) when it is a well-formed RFC 6749 §5.2
code, never its description or body.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from tether.errors import OAuthError
from tether.gateway.proxy import BadGateway
from tether.rules.scope import parse_scope

__all__ = [
    "MAX_EXPIRES_IN",
    "MAX_TOKEN_BYTES",
    "MIN_TOKEN_BYTES",
    "TokenRefused",
    "TokenUnavailable",
    "UpstreamToken",
    "basic_authorization",
    "parse_token_response",
    "rotated_refresh_token",
    "upstream_error",
    "wider_than",
]

#: an access or refresh token longer than this, or with characters a header cannot carry, is refused
MAX_TOKEN_BYTES = 8192
#: nor one shorter than this: the scrubber matches only forms of 4 bytes or more and refuses a value
#: inside its own ``[REDACTED]`` marker, so a short token could reach the agent (and is guessable anyway)
MIN_TOKEN_BYTES = 16
#: the longest lifetime believed (a year): a token is never cached past its hop token anyway, and an
#: absurd ``expires_in`` (``10**400`` is valid JSON) must not overflow the clock arithmetic
MAX_EXPIRES_IN = 365 * 86400
#: the most of an upstream answer the gateway reads (a token response is a few hundred bytes)
MAX_RESPONSE_BYTES = 65536
#: the lifetime assumed when the upstream does not say (RFC 6749 §5.1 only RECOMMENDS ``expires_in``)
DEFAULT_EXPIRES_IN = 60
_CODE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]{1,64}")
_TOKEN = re.compile(rf"[\x21-\x7e]{{{MIN_TOKEN_BYTES},{MAX_TOKEN_BYTES}}}")


class TokenUnavailable(BadGateway):
    """The upstream token endpoint could not answer (down, timed out, 5xx, malformed): retry later.

    A ``BadGateway``: an upstream's failure is not the task's and never counts toward its suspension."""

    error = "temporarily_unavailable"
    status = 503


class TokenRefused(BadGateway):
    """The upstream refused the gateway's credentials (RFC 6749 §5.2): an operator must act (502)."""


@dataclass(frozen=True)
class UpstreamToken:
    """An upstream token response (RFC 6749 §5.1), checked."""

    access_token: str
    expires_in: int
    scope: tuple[str, ...]
    refresh_token: str | None = None


def basic_authorization(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: both halves form-urlencoded before base64 (a ``:`` in either stays unambiguous)."""
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


def upstream_error(body: bytes) -> str:
    """The upstream's RFC 6749 §5.2 ``error`` code, for the log and the audit; ``-`` when it sent none fit to show."""
    parsed = _json(body[:MAX_RESPONSE_BYTES])
    code = parsed.get("error") if isinstance(parsed, dict) else None
    return code if isinstance(code, str) and _CODE.fullmatch(code) else "-"


def _json(body: bytes) -> Any:
    """The parsed body, or None: not JSON, not UTF-8, or nested deeper than the parser recurses
    (``[[[[...`` raises ``RecursionError``, which a hostile upstream must not turn into a 500)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


def _token(value: Any, what: str, route: str) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise TokenUnavailable("upstream authorization is unavailable", debug=f"route {route}: malformed {what}")
    return value


def _expires_in(value: Any, route: str) -> int:
    """``expires_in`` in seconds, at most ``MAX_EXPIRES_IN``; an ASCII digit string is read too (some
    servers send one; ``str.isdigit`` alone would pass ``"²"``, which ``int`` refuses)."""
    if value is None:
        return DEFAULT_EXPIRES_IN
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise TokenUnavailable("upstream authorization is unavailable", debug=f"route {route}: malformed expires_in")
    return min(value, MAX_EXPIRES_IN)


def wider_than(token: UpstreamToken, requested: tuple[str, ...]) -> list[str]:
    """The scopes granted beyond ``requested`` (RFC 6749 §3.3: the server may grant otherwise). A token
    wider than the call asked for is revoked and refused, never used: the call gets the narrowest."""
    return sorted(set(token.scope) - set(requested)) if requested else []


def parse_token_response(
    status: int, body: bytes, *, requested: tuple[str, ...], route: str, exchange: bool = False
) -> UpstreamToken:
    """A 200 JSON token response, or a typed refusal (RFC 6749 §5.1, §5.2; RFC 8693 §2.2.1).

    ``token_type`` must be Bearer: the gateway injects the token as one (RFC 6750). ``scope``
    defaults to what was requested when the answer leaves it out (§5.1)."""
    if status in (400, 401, 403):
        code = upstream_error(body)
        raise TokenRefused("upstream refused the gateway's credentials", debug=f"route {route}: {status} {code}")
    if status != 200:
        raise TokenUnavailable("upstream authorization is unavailable", debug=f"route {route}: token endpoint {status}")
    parsed = _json(body)
    if not isinstance(parsed, Mapping):
        raise TokenUnavailable("upstream authorization is unavailable", debug=f"route {route}: not a json object")
    access = _token(parsed.get("access_token"), "access_token", route)
    token_type = parsed.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise TokenUnavailable("upstream authorization is unavailable", debug=f"route {route}: token_type is not Bearer")
    issued = parsed.get("issued_token_type")
    if exchange and issued is not None and issued != "urn:ietf:params:oauth:token-type:access_token":
        raise TokenUnavailable("upstream authorization is unavailable", debug=f"route {route}: not an access token")
    refresh = parsed.get("refresh_token")
    granted = requested
    if parsed.get("scope") is not None:
        try:
            granted = tuple(sorted(parse_scope(str(parsed["scope"]))))
        except OAuthError as exc:
            raise TokenUnavailable("upstream authorization is unavailable", debug=f"route {route}: bad scope") from exc
    return UpstreamToken(
        access_token=access,
        expires_in=_expires_in(parsed.get("expires_in"), route),
        scope=granted,
        refresh_token=_token(refresh, "refresh_token", route) if refresh is not None else None,
    )


def rotated_refresh_token(status: int, body: bytes) -> str | None:
    """The well-formed ``refresh_token`` of a 200 JSON answer, whatever else the answer holds.

    Read before the rest is checked: once a rotating upstream answered, the refresh token presented
    is dead (RFC 6749 §6, RFC 9700 §4.14.2), so a new one must be kept even when the access token
    beside it is refused (not Bearer, too wide, malformed); presenting the old one again would lose
    the route's grant, and a server with reuse detection revokes every token of it."""
    parsed = _json(body) if status == 200 else None
    value = parsed.get("refresh_token") if isinstance(parsed, Mapping) else None
    return value if isinstance(value, str) and _TOKEN.fullmatch(value) else None
