"""``tether.web.errors.wire_code``: the code a metric label or an audit record names is the code the client got.

For every kind of exception an edge can catch, ``wire_code`` is compared with the ``error``
member of the body ``error_response`` renders for it, at an AS endpoint and at a resource
server: typed refusals keep their code, a store or policy outage is ``temporarily_unavailable``
(fail closed), and anything else is the bare ``server_error``.
"""

from __future__ import annotations

import json

import pytest

from tether.errors import (
    AccessDenied,
    ConfigError,
    InvalidRequest,
    InvalidToken,
    PolicyUnavailable,
    TooManyRequests,
    UseDPoPNonce,
)
from tether.gateway.proxy import BadGateway, GatewayTimeout
from tether.store.errors import Conflict, NotFound, StoreUnavailable, TaskNotActive
from tether.web.errors import error_response, wire_code

CASES: list[tuple[Exception, str]] = [
    (InvalidRequest("bad"), "invalid_request"),
    (AccessDenied("no"), "access_denied"),
    (InvalidToken("expired"), "invalid_token"),
    (UseDPoPNonce("n-1"), "use_dpop_nonce"),
    (TooManyRequests("slow down", retry_after=1), "too_many_requests"),
    (BadGateway("upstream unreachable"), "bad_gateway"),
    (GatewayTimeout("upstream did not answer in time"), "gateway_timeout"),
    (StoreUnavailable("connection refused"), "temporarily_unavailable"),
    (PolicyUnavailable("no policy set"), "temporarily_unavailable"),
    (NotFound("task"), "server_error"),
    (Conflict("changed"), "server_error"),
    (TaskNotActive("revoked"), "server_error"),
    (ConfigError("gateway.url", "must be set"), "server_error"),
    (ValueError("unexpected"), "server_error"),
]


@pytest.mark.parametrize("resource", [False, True], ids=["as", "rs"])
@pytest.mark.parametrize(("exc", "code"), CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_wire_code_is_the_code_error_response_sends(exc: Exception, code: str, resource: bool) -> None:
    body = json.loads(bytes(error_response(exc, resource=resource).body))
    assert wire_code(exc) == code
    assert body["error"] == code
