"""Token exchange as httpx request flows, shared by the sync and async paths.

A flow is a generator that yields ``httpx.Request`` objects and receives the
responses, the pattern of ``httpx.Auth.auth_flow``: the same code then runs inside an
auth flow (sync or async client) or under a tiny driver. Each flow signs a fresh DPoP
proof per attempt and retries once when the server asks for a nonce (RFC 9449 §8).

A request the STS holds for a human's approval (RFC 8628 §3.5, as CIBA §11 uses it) is
answered ``authorization_pending`` with an ``approval_id``: ``exchange_flow`` polls with it,
the same form and a fresh proof, every ``interval`` seconds (5 more after ``slow_down``)
until the caller's ``approval_timeout`` would pass, then raises ``ApprovalPending``. The wait
is a ``Pause`` the flow yields: every driver sleeps it (``time.sleep``, ``anyio.sleep``) and
sends nothing. A denial is ``ApprovalDenied``, an approval that expired ``ApprovalExpired``.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from tether.agent.proof import DPoPKey
from tether.clock import Clock, SystemClock
from tether.lru import LruCache

__all__ = [
    "RESUMED",
    "ApprovalDenied",
    "ApprovalExpired",
    "ApprovalPending",
    "ExchangeError",
    "Flow",
    "IssuedToken",
    "Nonces",
    "Pause",
    "Steps",
    "exchange_flow",
    "is_nonce_challenge",
    "refusal",
    "run_async",
    "run_sync",
    "send_flow",
]

Flow = Generator[httpx.Request, httpx.Response, Any]


class ExchangeError(Exception):
    """The STS refused a request (an exchange or an API call); ``error`` is its RFC 6749 code."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.status = status
        self.error = error
        self.description = description


class ApprovalPending(ExchangeError):
    """The request is held for a human's approval and the caller's deadline (``approval_timeout``)
    came first, or the caller would not wait (RFC 8628 §3.5 ``authorization_pending``). Ask again
    later with ``approval_id``: the same request waits on the same approval."""

    def __init__(self, approval_id: str, expires_in: int, *, interval: int = 5, description: str = "") -> None:
        super().__init__(400, "authorization_pending", description or f"held for approval {approval_id}")
        self.approval_id = approval_id
        self.expires_in = expires_in
        self.interval = interval


class ApprovalDenied(ExchangeError):
    """The approver said no (RFC 6749 §4.1.2.1 ``access_denied`` answering a poll)."""


class ApprovalExpired(ExchangeError):
    """Nobody decided before the approval expired (RFC 8628 §3.5 ``expired_token``): start a new request."""


class Pause(httpx.Request):
    """Not a request: a flow's wait of ``seconds`` between polls of a held request. A driver sleeps
    it and answers ``RESUMED``; it never reaches the network (``.invalid``, RFC 6761 §6.4)."""

    def __init__(self, seconds: float) -> None:
        super().__init__("GET", "http://pause.invalid/")
        self.seconds = seconds


#: the answer a driver hands back to a flow after sleeping a ``Pause``
RESUMED = httpx.Response(204)

#: RFC 8628 §3.2: the polling interval when the server names none; §3.5: 5 s more after ``slow_down``
DEFAULT_INTERVAL, SLOW_DOWN_STEP, MAX_INTERVAL = 5, 5, 300
_HELD = ("authorization_pending", "slow_down")


@dataclass(frozen=True)
class IssuedToken:
    value: str
    expires_at: float
    scope: frozenset[str]
    #: ``DPoP`` (bound to a DPoP key, RFC 9449 §5) or ``Bearer`` (a certificate-bound token
    #: without ``jkt``, presented as a bearer token over the same mTLS connection, RFC 8705 §3)
    token_type: str = "DPoP"

    def usable(self, now: float, margin: float) -> bool:
        return now < self.expires_at - margin


class Nonces:
    """The last ``DPoP-Nonce`` each origin gave us (RFC 9449 §8.2: use it for the next proof), for the
    256 origins used last (a forgotten one costs one ``use_dpop_nonce`` round trip)."""

    def __init__(self) -> None:
        self._by_origin: LruCache[str, str] = LruCache(256)

    def get(self, url: httpx.URL) -> str | None:
        return self._by_origin.get(_origin(url))

    def remember(self, url: httpx.URL, response: httpx.Response) -> None:
        nonce = response.headers.get("dpop-nonce")
        if nonce:
            self._by_origin.put(_origin(url), nonce)


def _origin(url: httpx.URL) -> str:
    return f"{url.scheme}://{url.netloc.decode('ascii')}"


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def is_nonce_challenge(response: httpx.Response) -> bool:
    """A 401 ``WWW-Authenticate: DPoP error="use_dpop_nonce"`` (RFC 9449 §9) or a 400 JSON error (§8)."""
    if response.status_code == 401:
        return "use_dpop_nonce" in response.headers.get("www-authenticate", "")
    if response.status_code == 400 and response.headers.get("content-type", "").startswith("application/json"):
        body = _json(response)
        return isinstance(body, dict) and body.get("error") == "use_dpop_nonce"
    return False


def refusal(response: httpx.Response) -> ExchangeError:
    """The STS's error answer (RFC 6749 §5.2) as an ``ExchangeError``; an error body that is not a
    JSON object is described by its first 200 characters."""
    body = _json(response)
    if isinstance(body, dict):
        return ExchangeError(response.status_code, str(body.get("error", "error")), str(body.get("error_description", "")))
    return ExchangeError(response.status_code, "error", "" if response.is_success else response.text[:200])


def send_flow(request: httpx.Request, key: DPoPKey | None, nonces: Nonces, *, access_token: str | None = None) -> Flow:
    """Send ``request`` with a fresh DPoP proof (and ``Authorization: DPoP`` when it carries
    ``access_token``, RFC 9449 §7.1); on a nonce challenge, sign again with the server's nonce and
    send once more (§8, §9). Returns the last response.

    ``key=None``: no proof; the request is authenticated by the TLS client certificate of the
    connection and carries ``access_token`` as ``Authorization: Bearer`` (RFC 8705 §3: a
    certificate-bound token without ``jkt`` uses the bearer scheme, RFC 6750 §2.1)."""
    if key is None:
        if access_token is not None:
            request.headers["Authorization"] = f"Bearer {access_token}"
        response = yield request
        return response
    if access_token is not None:
        request.headers["Authorization"] = f"DPoP {access_token}"
    for _ in range(2):
        nonce = nonces.get(request.url)
        request.headers["DPoP"] = key.proof(request.method, str(request.url), nonce=nonce, access_token=access_token)
        response = yield request
        nonces.remember(request.url, response)
        if not is_nonce_challenge(response):
            break
    return response


def exchange_flow(
    token_url: str,
    form: dict[str, str],
    key: DPoPKey | None,
    nonces: Nonces,
    *,
    clock: Clock | None = None,
    approval_timeout: float = 0,
    approval_id: str | None = None,
) -> Flow:
    """POST a token request (RFC 8693 exchange, or RFC 6749 §4.4 client credentials over mTLS);
    returns an ``IssuedToken`` (``expires_at`` on ``clock``) or raises ``ExchangeError``.
    ``key=None`` sends no DPoP proof (the client certificate is the only binding).

    A held request is polled (see the module docstring) for at most ``approval_timeout``
    seconds (0: ``ApprovalPending`` at once); ``approval_id`` resumes waiting on an approval
    an earlier ``ApprovalPending`` named. Each poll is the same form (for a session exchange,
    the same workload JWT: the STS binds the approval to it) with a fresh DPoP proof."""
    clock = clock or SystemClock()
    deadline = clock.now() + max(0.0, approval_timeout)
    interval = 0
    while True:
        data = form if approval_id is None else {**form, "approval_id": approval_id}
        request = httpx.Request("POST", token_url, data=data, headers={"Accept": "application/json"})
        response = yield from send_flow(request, key, nonces)
        body = _json(response)
        if response.status_code == 200 and isinstance(body, dict) and "access_token" in body:
            break
        error = body.get("error") if isinstance(body, dict) else None
        if error in _HELD and isinstance(body, dict) and isinstance(body.get("approval_id"), str):
            approval_id = str(body["approval_id"])[:64]
            asked = _bounded(body.get("interval"), DEFAULT_INTERVAL)
            interval = max(asked, interval + SLOW_DOWN_STEP) if error == "slow_down" else asked
            expires_in = _bounded(body.get("expires_in"), 0, top=10**7)
            if clock.now() + interval > deadline:
                raise ApprovalPending(
                    approval_id, expires_in, interval=interval, description=str(body.get("error_description", ""))
                )
            yield Pause(interval)
            continue
        failure = refusal(response)
        if approval_id is not None and error == "access_denied":
            raise ApprovalDenied(failure.status, failure.error, failure.description)
        if error == "expired_token":
            raise ApprovalExpired(failure.status, failure.error, failure.description)
        raise failure
    scope = frozenset(str(body.get("scope", "")).split())
    now = clock.now()
    token_type = "Bearer" if str(body.get("token_type", "")).lower() == "bearer" else "DPoP"
    return IssuedToken(str(body["access_token"]), now + float(body.get("expires_in", 0)), scope, token_type)


def _bounded(value: object, default: int, *, top: int = MAX_INTERVAL) -> int:
    """A whole number of seconds from a response body: ``default`` unless an int in ``1..top``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
        return default
    return value


class Steps:
    """Steps through a flow for a driver: ``request`` is the next request to send, ``None`` once the
    flow has returned, with its value in ``result``. Each driver only moves the bytes."""

    def __init__(self, flow: Flow) -> None:
        self._flow = flow
        self.result: Any = None
        self.request: httpx.Request | None = self._advance(None)

    def answer(self, response: httpx.Response) -> None:
        """Hand the response to the last request back to the flow."""
        self.request = self._advance(response)

    def _advance(self, response: httpx.Response | None) -> httpx.Request | None:
        try:
            return next(self._flow) if response is None else self._flow.send(response)
        except StopIteration as done:
            self.result = done.value
            return None


def run_sync(flow: Flow, client: httpx.Client) -> Any:
    """Drive a flow with a synchronous client (sleeping its pauses)."""
    steps = Steps(flow)
    while steps.request is not None:
        if isinstance(steps.request, Pause):
            time.sleep(steps.request.seconds)
            steps.answer(RESUMED)
            continue
        steps.answer(client.send(steps.request))
    return steps.result


async def run_async(flow: Flow, client: httpx.AsyncClient) -> Any:
    """Drive a flow with an asynchronous client (sleeping its pauses)."""
    steps = Steps(flow)
    while steps.request is not None:
        if isinstance(steps.request, Pause):
            await anyio.sleep(steps.request.seconds)
            steps.answer(RESUMED)
            continue
        steps.answer(await client.send(steps.request))
    return steps.result
