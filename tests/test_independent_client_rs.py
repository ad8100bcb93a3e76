"""Issue 3, "What it must show": an independent client (PyJWT + cryptography, not tether's SDK)
calls a service protected by the resource SDK with a DPoP-bound hop token, and is refused
within one second of the task's completion (revocation pushed, not polled)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers import (
    ACCESS,
    AGENT,
    FEED_SUBSCRIBER,
    JWT,
    SVC_RS,
    TOKEN_EXCHANGE,
    Client,
    RunningSts,
    admin_token,
    create_task,
    running_sts,
)
from independent import DPoPClient
from tether.demo.services import docs_service
from tether.web.server import ServerThread, free_port

REFUSAL_BOUND_SECONDS = 1.0


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[RunningSts, str, ServerThread]]:
    port = free_port()
    service = f"http://127.0.0.1:{port}"
    with running_sts(tmp_path, extra_toml=FEED_SUBSCRIBER) as sts:
        app, verifier = docs_service(sts.url, service, sts.identity(SVC_RS))
        server = ServerThread(app, port).start()
        try:
            deadline = time.monotonic() + 10
            while not (verifier.feed and verifier.feed.fresh(time.time())):
                assert time.monotonic() < deadline, "service never subscribed to the revocation feed"
                time.sleep(0.02)
            yield sts, service, server
        finally:
            server.stop()


def _call(client: DPoPClient, url: str, token: str) -> httpx.Response:
    return client.http.get(
        url, headers={"Authorization": f"DPoP {token}", "DPoP": client.proof("GET", url, access_token=token)}
    )


def test_independent_client_refused_within_one_second_of_completion(world: tuple[RunningSts, str, ServerThread]) -> None:
    sts, service, _ = world
    task = create_task(sts, audiences=[service], scopes=["docs:read"])
    with httpx.Client(trust_env=False, timeout=10) as http:
        client = DPoPClient(http)
        session = client.token(
            sts.token_url,
            {"grant_type": TOKEN_EXCHANGE, "subject_token": sts.svid(AGENT), "subject_token_type": JWT, "task": task["id"]},
        )
        assert session.status_code == 200, session.text
        hop = client.token(
            sts.token_url,
            {
                "grant_type": TOKEN_EXCHANGE,
                "subject_token": session.json()["access_token"],
                "subject_token_type": ACCESS,
                "resource": service,
            },
        )
        assert hop.status_code == 200, hop.text
        token = hop.json()["access_token"]
        url = service + "/fetch"
        before = _call(client, url, token)
        assert before.status_code == 200, before.text
        assert before.json()["seen_by_c"]["task"] == task["id"]

        admin, admin_tok = admin_token(sts, Client(sts))
        assert admin.api("POST", f"/tasks/{task['id']}/complete", admin_tok).status_code == 200
        deadline = time.monotonic() + REFUSAL_BOUND_SECONDS
        refused = None
        while time.monotonic() < deadline:
            response = _call(client, url, token)
            if response.status_code == 401:
                refused = response
                break
        assert refused is not None, "the service still accepted the token a second after the task completed"
        assert refused.json()["error"] == "invalid_token"
        assert 'error="invalid_token"' in refused.headers["www-authenticate"]
