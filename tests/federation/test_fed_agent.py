"""The agent SDK crosses the border (issue 19): ``LinkedSession`` gets the hop token for B at home,
presents it at B (jwt-bearer, DPoP with the same key, nonce retry), and is then an ordinary
session at B: its ``httpx.Auth`` hops to B's protected service, whose verifier sees A's agent
namespaced. Everything on loopback: two STSs and a tether-protected service of B."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from fedinkit import AGENT, Border, claims_of, two_domains
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from helpers import ServerThread, free_port
from tether.agent import Agent, DevIdentity
from tether.agent.federation import LinkedSession
from tether.resource import TetherMiddleware, Verifier, principal_of
from tether.resource.verifier import ResourceSettings


def _service(issuer: str, url: str, clock: Any) -> Starlette:
    async def whoami(request: Request) -> Response:
        who = principal_of(request)
        return JSONResponse({"subject": who.subject, "agent": who.agent, "task": who.task, "jkt": who.jkt})

    verifier = Verifier(ResourceSettings(issuer=issuer, resource=url, revocation_feed=False), clock=clock)
    return Starlette(routes=[Route("/whoami", whoami)], middleware=[Middleware(TetherMiddleware, verifier=verifier)])


def _home(border: Border, task_id: str) -> Any:
    identity = DevIdentity(border.a.dev(), AGENT, clock=border.clock)
    return Agent(border.a.url, identity, clock=border.clock).session(task_id)


def test_fed01_linked_session_hops_at_b_with_the_sdk(tmp_path: Path) -> None:
    service = f"http://127.0.0.1:{free_port()}"
    with two_domains(tmp_path, b_federation={"audiences": [service]}) as border:
        thread = ServerThread(_service(border.b.url, service, border.clock), int(service.rsplit(":", 1)[1])).start()
        try:
            home = _home(border, border.a_task()["id"])
            abroad = LinkedSession(home, border.b.url, scope="wiki:read")
            with httpx.Client(auth=abroad.auth(audiences={service: service}), trust_env=False, timeout=10) as http:
                answer = http.get(service + "/whoami")
                assert answer.status_code == 200, answer.text
                again = http.get(service + "/whoami")  # the cached hop token at B
                assert again.status_code == 200
            body = answer.json()
            assert body["agent"] == f"fed:a/{AGENT}" and body["jkt"] == home.key.jkt
            assert body["task"] == abroad.task_id and abroad.task_id.startswith("tsk_")
            assert abroad.exchanges == 2  # one crossing, one hop at B
            # crossing again (a second linked session of the same home session) takes a new home
            # token — each is single-use at B, a cached one would be refused — and joins the task
            second = LinkedSession(home, border.b.url, scope="wiki:read")
            with httpx.Client(trust_env=False, timeout=10) as http:
                token = second.token_for(service, http)
            assert claims_of(token)["txn"] == abroad.task_id == second.task_id
            links = [r for r in border.b.audit() if r.kind == "federation.linked"]
            assert [r.detail["joined"] for r in links] == [False, True]
        finally:
            thread.stop()


def test_fed01_a_certificate_only_session_cannot_cross(tmp_path: Path) -> None:
    class Home:
        dpop = False

    try:
        LinkedSession(Home(), "http://127.0.0.1:1")  # type: ignore[arg-type]
    except ValueError as exc:
        assert "bearer tokens never cross" in str(exc)
    else:
        raise AssertionError("a session without a dpop key crossed")
