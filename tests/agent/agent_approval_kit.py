"""Held exchanges for the agent-SDK approval tests: a scripted token endpoint and a pause-recording driver.

The client side of RFC 8628 §3.5 polling (``interval``, ``slow_down`` +5 s, the caller's
deadline, the error each answer becomes) is tested against ``ScriptedSts``: a token endpoint
on loopback that answers each POST with the next scripted reply and records the form and the
DPoP proof it got. The real STS holding and issuing is tested in
``test_agent_approval.py``'s end-to-end tests. ``drive`` runs a flow over real HTTP but answers
its pauses at once, advancing a ``ManualClock`` instead of sleeping, so no test waits out an
interval and none asserts a wall-clock time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether.agent.exchange import RESUMED, Flow, Pause, Steps
from tether.clock import ManualClock
from tether.rules.jws import b64url_decode, strict_json_loads
from tether.web.server import ServerThread, free_port

__all__ = [
    "APPROVAL_ID",
    "Driven",
    "ScriptedSts",
    "denied",
    "drive",
    "expired",
    "issued",
    "pending",
    "scripted_sts",
    "slow_down",
]

APPROVAL_ID = "apr_" + "Q" * 22


def pending(interval: int = 2, expires_in: int = 300, *, error: str = "authorization_pending") -> tuple[int, dict[str, Any]]:
    return 400, {"error": error, "error_description": "held for approval", "approval_id": APPROVAL_ID,
                 "interval": interval, "expires_in": expires_in}  # fmt: skip


def slow_down(interval: int) -> tuple[int, dict[str, Any]]:
    return pending(interval, error="slow_down")


def denied() -> tuple[int, dict[str, Any]]:
    return 403, {"error": "access_denied", "error_description": "the request was denied by its approver"}


def expired() -> tuple[int, dict[str, Any]]:
    return 400, {"error": "expired_token", "error_description": "the approval expired before anyone decided"}


def issued(value: str = "issued-value") -> tuple[int, dict[str, Any]]:
    return 200, {"access_token": value, "token_type": "DPoP", "expires_in": 60, "scope": "wiki:read"}


@dataclass
class ScriptedSts:
    url: str
    script: list[tuple[int, dict[str, Any]]]
    #: every POST: its form and the ``jti`` of its DPoP proof
    seen: list[tuple[dict[str, str], str]] = field(default_factory=list)

    @property
    def token_url(self) -> str:
        return self.url + "/token"


@contextlib.contextmanager
def scripted_sts(*script: tuple[int, dict[str, Any]]) -> Iterator[ScriptedSts]:
    port = free_port()
    sts = ScriptedSts(f"http://127.0.0.1:{port}", list(script))

    async def token(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        proof = request.headers.get("dpop", "")
        jti = str(strict_json_loads(b64url_decode(proof.split(".")[1])).get("jti")) if proof.count(".") == 2 else ""
        sts.seen.append((form, jti))
        status, body = sts.script.pop(0) if sts.script else (500, {"error": "server_error"})
        return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})

    thread = ServerThread(Starlette(routes=[Route("/token", token, methods=["POST"])]), port).start()
    try:
        yield sts
    finally:
        thread.stop()


@dataclass
class Driven:
    result: Any = None
    error: BaseException | None = None
    pauses: list[float] = field(default_factory=list)


def drive(flow: Flow, http: httpx.Client, clock: ManualClock) -> Driven:
    """Run ``flow`` over ``http``; each ``Pause`` is recorded and passed by moving ``clock`` (no sleep)."""
    driven = Driven()
    try:
        steps = Steps(flow)
        while steps.request is not None:
            if isinstance(steps.request, Pause):
                driven.pauses.append(steps.request.seconds)
                clock.advance(steps.request.seconds)
                steps.answer(RESUMED)
                continue
            steps.answer(http.send(steps.request))
        driven.result = steps.result
    except Exception as exc:  # noqa: BLE001 -- the test asserts which one
        driven.error = exc
    return driven
