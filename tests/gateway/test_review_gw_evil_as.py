"""Review (rvgw): a malicious or broken upstream authorization server never turns into a 500 or a lost grant.

A token endpoint controlled by someone else may answer anything. Whatever it sends, the agent
gets the gateway's own RFC 6749 §5.2-style refusal (503 ``temporarily_unavailable``), never a 500
with a stack trace, and the gateway keeps working for the next call (FED-04):

- ``expires_in`` absurd: a number too large for a float, or a Unicode digit (``"²"``) that
  ``str.isdigit`` accepts but ``int`` does not;
- a body nested deeper than the JSON parser recurses;
- an access token so short it cannot be scrubbed (under four bytes no encoding is matched) or
  that is part of the redaction marker itself;
- on a ``refresh_token`` route, an answer that rotates the refresh token (RFC 9700 §4.14.2) but is
  malformed otherwise: the new refresh token must still be kept, or the old, now dead one is
  presented next and the route's grant is lost (a server with reuse detection revokes it all).

Everything is real: the STS, the gateway and, on loopback, the hostile token endpoint and an API.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from gwkit import Caller, GatewayEnv, Upstream, gateway_toml, put_secret_sync, serve_gateway, wait_until
from oauthkit import agent_saw, toml_route
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from helpers import QUIET_MONITOR, admin_token, running_sts
from tether.audit.chain import AuditEvent
from tether.web.server import ServerThread, free_port

FIRST_REFRESH = "rt-" + secrets.token_urlsafe(24)
CLIENT_SECRET = "evil-as-client-" + secrets.token_urlsafe(12)
KINDS = ("huge", "superscript", "nested", "tiny", "marker", "good")


@dataclass
class EvilAs:
    """A token endpoint per ``kind`` (the path's first segment) and an API that echoes the bearer it got."""

    url: str = ""
    #: the refresh token the ``rot`` endpoint currently honours; it rotates on each use
    current: str = FIRST_REFRESH
    #: refresh tokens presented after they were rotated away (a reuse-detecting server would revoke the grant)
    reused: list[str] = field(default_factory=list)
    rotations: int = 0
    issued: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    #: every refresh token the ``rot`` endpoint handed out
    refreshes: list[str] = field(default_factory=lambda: [FIRST_REFRESH])
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, kind: str, form: dict[str, str]) -> Response:
        value = f"{kind}-{secrets.token_urlsafe(16)}"
        good: dict[str, Any] = {"access_token": value, "token_type": "Bearer", "expires_in": 60,
                                "scope": form.get("scope", "")}  # fmt: skip
        if kind == "huge":
            body = json.dumps({**good, "expires_in": 10**400})
        elif kind == "superscript":
            body = json.dumps({**good, "expires_in": "\u00b2"})
        elif kind == "nested":
            body = "[" * 50_000
        elif kind == "tiny":
            body = json.dumps({**good, "access_token": "t1"})
        elif kind == "marker":
            body = json.dumps({**good, "access_token": "DACT"})  # inside the scrubber's "[REDACTED]"
        else:
            body = json.dumps(good)
        with self.lock:
            self.issued.append(json.loads(body)["access_token"] if kind in ("tiny", "marker", "good") else value)
        return Response(body, media_type="application/json")

    def rotate(self, form: dict[str, str]) -> Response:
        """Refresh-token rotation with reuse detection; the first rotation's answer is malformed (not Bearer)."""
        with self.lock:
            presented = form.get("refresh_token", "")
            if presented != self.current:
                self.reused.append(presented)
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            self.rotations += 1
            self.current = f"rt-{self.rotations}-{secrets.token_urlsafe(24)}"
            token_type = "mac" if self.rotations == 1 else "Bearer"
            access = f"rot-{secrets.token_urlsafe(16)}"
            self.issued.append(access)
            self.refreshes.append(self.current)
            return JSONResponse({"access_token": access, "token_type": token_type, "expires_in": 60,
                                 "refresh_token": self.current})  # fmt: skip

    def app(self) -> Starlette:
        async def token(request: Request) -> Response:
            form = {k: str(v) for k, v in (await request.form()).items()}
            kind = request.path_params["kind"]
            if kind == "hang":
                await asyncio.sleep(30)  # never answers within the route's timeout
            return self.rotate(form) if kind == "rot" else self.answer(kind, form)

        async def revoke(request: Request) -> Response:
            self.revoked.append(str((await request.form()).get("token", "")))
            return Response(status_code=200)

        async def api(request: Request) -> Response:
            auth = request.headers.get("authorization", "")  # a debugging API: echoes what it was sent
            return JSONResponse({"you_sent": auth, "token": auth.removeprefix("Bearer ")}, headers={"X-Echo-Auth": auth})

        return Starlette(routes=[Route("/as/{kind}/token", token, methods=["POST"]),
                                 Route("/as/{kind}/revoke", revoke, methods=["POST"]),
                                 Route("/api/{path:path}", api, methods=["GET"])])  # fmt: skip


@dataclass
class Env:
    gw: GatewayEnv
    evil: EvilAs


def _routes(evil: EvilAs) -> str:
    api = f"{evil.url}/api"
    allow = ["GET /echo"]
    scopes = {"GET /echo": ["read"]}
    rows = [
        toml_route(kind, api, {"grant": "client_credentials", "token_endpoint": f"{evil.url}/as/{kind}/token",
                               "revocation_endpoint": f"{evil.url}/as/{kind}/revoke", "client_id": "gw",
                               "client_secret": "evil-secret", "scopes": ["read"]},
                   allow=allow, call_scopes=scopes, timeout=2.0)
        for kind in KINDS
    ]  # fmt: skip
    rows.append(toml_route("hang", api, {"grant": "refresh_token", "token_endpoint": f"{evil.url}/as/hang/token",
                                         "authorization_endpoint": f"{evil.url}/as/hang/authorize",
                                         "redirect_uri": "http://127.0.0.1:8765/callback", "client_id": "gw",
                                         "client_secret": "evil-secret", "refresh_token": "hang-refresh",
                                         "scopes": ["read"]}, allow=allow, call_scopes=scopes, timeout=1.0,
                           max_call_seconds=1.5))  # fmt: skip
    rows.append(toml_route("rot", api, {"grant": "refresh_token", "token_endpoint": f"{evil.url}/as/rot/token",
                                        "authorization_endpoint": f"{evil.url}/as/rot/authorize",
                                        "redirect_uri": "http://127.0.0.1:8765/callback", "client_id": "gw",
                                        "client_secret": "evil-secret", "refresh_token": "rot-refresh",
                                        "scopes": ["read"]}, allow=allow, call_scopes=scopes, timeout=2.0))  # fmt: skip
    return "\n".join(rows)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    directory: Path = tmp_path_factory.mktemp("review-gw-evil-as")
    evil = EvilAs()
    port = free_port()
    evil.url = f"http://127.0.0.1:{port}"
    thread = ServerThread(evil.app(), port).start()
    try:
        gw_port = free_port()
        settings = gateway_toml(gw_port, suspend_after_refusals=1000, suspend_on_cap=False, secret_cache_seconds=1)
        with running_sts(directory, extra_toml=settings + "\n" + _routes(evil) + "\n" + QUIET_MONITOR) as sts:
            put_secret_sync(sts.config, "evil-secret", CLIENT_SECRET)
            put_secret_sync(sts.config, "rot-refresh", FIRST_REFRESH)
            put_secret_sync(sts.config, "hang-refresh", "hang-" + secrets.token_urlsafe(24))
            with serve_gateway(sts.config, sts) as gateway:
                gw = GatewayEnv(sts=sts, config=sts.config, gateway=gateway, upstream=Upstream(), elsewhere=Upstream(),
                                down_port=0)  # fmt: skip
                try:
                    yield Env(gw, evil)
                finally:
                    gw.close()
    finally:
        thread.stop()


def _clear_refusal(caller: Caller, route: str) -> None:
    response = caller.get(route, "/echo")
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "temporarily_unavailable"
    assert response.headers["cache-control"] == "no-store"
    assert b"Traceback" not in agent_saw(caller)


@pytest.mark.parametrize("kind", ["superscript", "nested", "tiny", "marker"])
def test_review_fed04_a_hostile_token_answer_is_a_clear_503_never_a_500(env: Env, kind: str) -> None:
    caller = env.gw.caller(kind, "good")
    _clear_refusal(caller, kind)
    [record] = env.gw.audit("gateway.oauth.refused", caller.task["id"])
    assert record.detail["route"] == kind
    assert caller.get("good", "/echo").status_code == 200  # the gateway still serves


def test_review_fed04_an_absurd_expires_in_is_capped_not_a_500(env: Env) -> None:
    """``10**400`` seconds is a valid JSON number; the token is used (its time in the cache is the hop token's)."""
    caller = env.gw.caller("huge")
    first = caller.get("huge", "/echo")
    assert first.status_code == 200, first.text
    assert caller.get("huge", "/echo").status_code == 200
    records = env.gw.audit("gateway.oauth.token", caller.task["id"])
    assert len(records) == 1  # fetched once, then cached


def test_review_fed04_a_rotated_refresh_token_is_kept_even_when_the_rest_of_the_answer_is_refused(env: Env) -> None:
    caller = env.gw.caller("rot")
    _clear_refusal(caller, "rot")  # rotated, but its access token is not Bearer
    assert env.evil.rotations == 1
    second = caller.get("rot", "/echo")
    assert second.status_code == 200, second.text
    assert env.evil.reused == []  # the dead refresh token was never presented again
    assert env.evil.rotations == 2


def test_review_fed04_a_task_suspended_while_its_token_is_recorded_gets_it_revoked(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feed may end the task at any await of the fetch: here, while ``gateway.oauth.token`` is written.
    The token must not be kept for the ended task (it would sit unrevoked until its hop token expired)."""
    caller = env.gw.caller("good")
    task = caller.task["id"]
    gateway = env.gw.gateway
    audit = gateway.audit
    real = audit.append_quietly

    def suspend() -> None:
        client, token = admin_token(env.gw.sts)
        assert client.api("POST", f"/tasks/{task}/suspend", token).status_code == 200

    async def append_quietly(event: AuditEvent) -> None:
        await real(event)
        if event.kind == "gateway.oauth.token" and event.task == task:
            await asyncio.to_thread(suspend)  # an operator suspends the task right then
            while not gateway.feed.ended(task):  # ... and the real feed reports it to the gateway
                await asyncio.sleep(0.01)

    monkeypatch.setattr(audit, "append_quietly", append_quietly)
    response = caller.get("good", "/echo")
    assert response.status_code == 401 and response.json()["error"] == "invalid_token"
    [record] = env.gw.audit("gateway.oauth.token", task)
    wait_until(lambda: bool(env.gw.audit("gateway.oauth.revoked", task)), what="the revocation of the task's token")
    [revoked] = env.gw.audit("gateway.oauth.revoked", task)
    assert revoked.outcome == "ok" and revoked.detail["tokens"] == [record.detail["token"]]
    assert revoked.detail["reason"] == "task ended"


def test_review_fed04_a_call_waiting_for_a_hanging_token_endpoint_ends_at_its_deadline(env: Env) -> None:
    """Refreshes of a route are single-flight: calls of other tasks queue behind a hanging one. Each call
    still ends at its own ``max_call_seconds`` (1.5 s; each refresh may take ``timeout``, 1 s), with 504."""
    callers = [env.gw.caller("hang") for _ in range(3)]
    for caller in callers:
        caller.token(env.gw.aud("hang"))  # hop tokens first: the three calls arrive together
    with concurrent.futures.ThreadPoolExecutor(len(callers)) as pool:
        answers = list(pool.map(lambda c: c.get("hang", "/echo"), callers))
    errors = sorted(a.json()["error"] for a in answers)
    # the first refresh times out (503); the calls queued behind it reach their deadline first (504),
    # instead of each waiting for every refresh ahead of it (1 s, 2 s, 3 s: all 503)
    assert errors.count("gateway_timeout") >= 1, errors
    assert all(a.status_code in (503, 504) for a in answers)


def test_review_fed04_no_token_refresh_token_or_secret_in_any_log_line_or_audit_row(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caller = env.gw.caller("rot", "good", "nested")
    for route in ("rot", "rot", "good", "nested"):
        caller.get(route, "/echo")
    caller.complete()
    wait_until(lambda: bool(env.gw.audit("gateway.oauth.revoked", caller.task["id"])), what="the revocations")
    with env.evil.lock:
        # (the hostile "t1" and "DACT" were refused unused; "DACT" is inside the redaction marker itself)
        secrets_seen = [v for v in (*env.evil.issued, *env.evil.refreshes, CLIENT_SECRET) if len(v) >= 16]
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    audited = repr([(r.kind, r.detail, r.error) for r in env.gw.audit()])
    for value in secrets_seen:
        assert value not in logged and value not in audited
    assert len(env.evil.refreshes) >= 2  # a rotation happened and was looked for
