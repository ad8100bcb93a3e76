"""The one place where errors become HTTP responses (RFC 6749 §5.2, RFC 6750 §3, RFC 9449 §7.1).

At the AS endpoints an error is a JSON body ``{"error", "error_description"}`` with
``Cache-Control: no-store``; at protected resources it is also a ``WWW-Authenticate``
challenge: ``DPoP`` (RFC 9449 §7.1), or ``Bearer`` (RFC 6750 §3) when the request used the
Bearer scheme at a resource that accepts certificate-bound tokens (RFC 8705 §3); a resource
that accepts both schemes names both in a challenge without an error (RFC 9449 §7.2).
``StoreUnavailable`` and ``PolicyUnavailable`` become 503 ``temporarily_unavailable`` with
``Retry-After`` (fail closed, RFC 9110 §10.2.3), logged at most once per
``OUTAGE_LOG_INTERVAL`` per kind (an outage answers every request in milliseconds; a line
each would let a flood fill the disk). Anything unexpected becomes a bare ``server_error`` —
the trace goes to the server log, never to the client.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tether.errors import OAuthError, TemporarilyUnavailable, TooManyRequests, Unavailable, UseDPoPNonce
from tether.logs import WITH_TRACEBACK
from tether.throttle import LogThrottle

__all__ = [
    "NO_STORE",
    "error_response",
    "handle_http",
    "handle_unexpected",
    "request_scheme",
    "unexpected_error",
    "wire_code",
]

log = logging.getLogger("tether.web")

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
#: seconds between two "failing closed" lines of the same kind during an outage
OUTAGE_LOG_INTERVAL = 10.0
_outage_logs: dict[str, LogThrottle] = {}


def _log_failing_closed(exc: Exception) -> None:
    kind = type(exc).__name__
    throttle = _outage_logs.get(kind)
    if throttle is None:
        throttle = _outage_logs.setdefault(kind, LogThrottle(log, logging.ERROR, interval=OUTAGE_LOG_INTERVAL))
    throttle.emit(f"failing closed: {exc}")


def _quoted(value: str) -> str:
    """An RFC 9110 §5.6.4 quoted-string of an already wire-safe value (no quotes or backslashes)."""
    return '"' + value.replace("\\", "?").replace('"', "'") + '"'


def _params(exc: OAuthError, resource_metadata: str | None, *, error: bool = True) -> list[str]:
    """RFC 6750 §3 ``error``/``error_description``/``scope``; RFC 9728 §5.1 ``resource_metadata``."""
    parts = []
    if error and not getattr(exc, "bare_challenge", False):
        parts.append(f"error={_quoted(exc.error)}")
        if exc.description:
            parts.append(f"error_description={_quoted(exc.description)}")
    scope = getattr(exc, "scope", None)
    if error and isinstance(scope, str) and scope:
        parts.append(f"scope={_quoted(scope)}")
    if resource_metadata:
        parts.append(f"resource_metadata={_quoted(resource_metadata)}")
    return parts


def _dpop(parts: list[str], algs: Collection[str]) -> str:
    if algs:
        parts = [*parts, f'algs="{" ".join(algs)}"']
    return ("DPoP " + ", ".join(parts)) if parts else "DPoP"


def _bearer(parts: list[str]) -> str:
    return ("Bearer " + ", ".join(parts)) if parts else "Bearer"


def _challenge(
    exc: OAuthError, algs: Collection[str], resource_metadata: str | None, *, scheme: str | None, bearer: bool
) -> str:
    """The ``WWW-Authenticate`` value for a refusal at a protected resource.

    Without ``bearer`` (the resource takes DPoP only) it is the RFC 9449 §7.1 ``DPoP``
    challenge, whatever scheme the request used. A resource that also takes certificate-bound
    tokens under the Bearer scheme (RFC 8705 §3) answers a Bearer-scheme request with the
    RFC 6750 §3 ``Bearer`` challenge carrying the error, and names the other scheme it
    accepts after it without an error (RFC 9110 §11.6.1 allows several challenges; RFC 9449
    §7.2 shows ``Bearer, DPoP algs=...``), so a DPoP-bound token sent as Bearer still learns
    where to go. A request without credentials gets both challenges, bare (RFC 6750 §3.1).
    A DPoP-scheme request keeps the DPoP challenge alone, as at a DPoP-only resource.
    """
    first = _params(exc, resource_metadata)
    if bearer and scheme == "bearer":
        return _bearer(first) + ", " + _dpop(_params(exc, resource_metadata, error=False), algs)
    if bearer and getattr(exc, "bare_challenge", False):
        return _dpop(first, algs) + ", " + _bearer(first)
    return _dpop(first, algs)


def request_scheme(authorization: str | None) -> str | None:
    """The lower-cased scheme of an ``Authorization`` value (RFC 9110 §11.1: case-insensitive), if any."""
    if not authorization:
        return None
    return authorization.strip().partition(" ")[0].lower() or None


def wire_code(exc: BaseException) -> str:
    """The ``error`` code ``error_response`` sends for ``exc``: for metric labels and audit records,
    which must name the refusal the client saw (fail closed is ``temporarily_unavailable``)."""
    if isinstance(exc, Unavailable):  # StoreUnavailable, PolicyUnavailable
        return TemporarilyUnavailable.error
    if isinstance(exc, OAuthError):
        return exc.error
    return "server_error"


def error_response(
    exc: Exception,
    *,
    resource: bool = False,
    algs: Collection[str] = (),
    quiet: bool = False,
    resource_metadata: str | None = None,
    scheme: str | None = None,
    bearer: bool = False,
) -> Response:
    """Render a refusal. ``resource=True`` uses the resource-server status and challenge
    (naming ``resource_metadata``, the RFC 9728 metadata URL, when given); ``quiet`` logs an
    outage at debug level only (``/healthz``: its 503 is the report). ``scheme`` is the
    request's authorization scheme (``request_scheme``) and ``bearer`` whether this resource
    accepts certificate-bound tokens under the Bearer scheme (RFC 8705 §3): together they
    choose the challenge (``_challenge``)."""
    if isinstance(exc, Unavailable):  # StoreUnavailable, PolicyUnavailable
        if quiet:
            log.debug("failing closed: %s", exc)
        else:
            _log_failing_closed(exc)
        exc = TemporarilyUnavailable("the service cannot decide right now; retry shortly", debug=str(exc))
    if not isinstance(exc, OAuthError):
        return unexpected_error(exc)
    headers = dict(NO_STORE)
    status = exc.rs_status if resource else exc.status
    if isinstance(exc, UseDPoPNonce):
        headers["DPoP-Nonce"] = exc.nonce
    if isinstance(exc, TemporarilyUnavailable):
        headers["Retry-After"] = "1"
    if isinstance(exc, TooManyRequests) and exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    if resource and status in (401, 403):
        headers["WWW-Authenticate"] = _challenge(exc, algs, resource_metadata, scheme=scheme, bearer=bearer)
    body = {**exc.fields, "error": exc.error, "error_description": exc.description}
    return JSONResponse(body, status_code=status, headers=headers)


def unexpected_error(exc: BaseException) -> Response:
    """A 500 with a bare body; the one log record carries the (redacted) traceback at every log level."""
    log.error("unexpected error", exc_info=exc, extra=WITH_TRACEBACK)
    return JSONResponse({"error": "server_error", "error_description": "internal error"}, status_code=500, headers=NO_STORE)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    """Starlette exception handler of last resort."""
    return unexpected_error(exc)


async def handle_http(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 as RFC 6749-style JSON instead of plain text."""
    status = getattr(exc, "status_code", 404)
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "invalid_request")
    return JSONResponse({"error": code, "error_description": code.replace("_", " ")}, status_code=status, headers=NO_STORE)
