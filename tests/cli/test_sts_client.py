"""``tether.client.StsClient``, the CLI's admin client, against a real STS on loopback.

It is built on the agent SDK's flows: a fresh client meets the server's nonce challenge
(RFC 9449 §8 at ``/token``) and signs again with that nonce once, and an STS refusal surfaces
as ``StsError`` (the SDK's ``ExchangeError``) with the wire status, code and description.
"""

from __future__ import annotations

import json

import httpx
import pytest

from helpers import ADMIN, AGENT, RunningSts
from tether.agent import ExchangeError
from tether.client import StsClient, StsError
from tether.rules.jws import b64url_decode

AUD = "http://127.0.0.1:9001"


def _proof_nonce(proof: str) -> str | None:
    nonce = json.loads(b64url_decode(proof.split(".")[1])).get("nonce")
    return None if nonce is None else str(nonce)


def _recording_client(sts: RunningSts, spiffe_id: str, seen: list[httpx.Response], proofs: list[str]) -> StsClient:
    """A client whose HTTP records each response and each DPoP proof as it was sent."""
    hooks = {"request": [lambda request: proofs.append(request.headers["DPoP"])], "response": [seen.append]}
    return StsClient(sts.url, sts.identity(spiffe_id), http=httpx.Client(timeout=10.0, trust_env=False, event_hooks=hooks))


def test_DPOP_10_client_takes_up_the_server_nonce_and_retries_once(shared_sts: RunningSts) -> None:
    seen: list[httpx.Response] = []
    proofs: list[str] = []
    with _recording_client(shared_sts, ADMIN, seen, proofs) as client:
        task = client.create_task(agent=AGENT, audiences=[AUD], scopes=["wiki:read"], purpose="client test")
    assert task["state"] == "active" and task["created_by"] == ADMIN
    calls = [(r.request.method, r.request.url.path, r.status_code) for r in seen]
    assert calls == [("POST", "/token", 400), ("POST", "/token", 200), ("POST", "/tasks", 201)]
    challenge, _, created = seen
    assert challenge.json()["error"] == "use_dpop_nonce"
    # the /tasks proof carries the newest nonce the server handed out: the one the 200 answer names (RFC 9449
    # §8.2), which is the challenge's unless the server's nonce rotated in between (pinning that was a timing flake)
    newest = seen[1].headers.get("dpop-nonce", challenge.headers["dpop-nonce"])
    assert [_proof_nonce(proof) for proof in proofs] == [None, challenge.headers["dpop-nonce"], newest]
    assert len(set(proofs)) == 3  # a fresh proof for every request
    assert created.request.headers["Authorization"].startswith("DPoP ")  # the admin token, key-bound


def test_an_api_refusal_is_an_StsError_with_the_wire_status_code_and_description(shared_sts: RunningSts) -> None:
    with StsClient(shared_sts.url, shared_sts.identity(ADMIN)) as client:
        assert client.api("GET", "/tasks", params={"state": "active"})["tasks"] is not None  # positive control
        with pytest.raises(StsError) as caught:
            client.api("GET", "/tasks/no-such-task")
    refused = caught.value
    assert isinstance(refused, ExchangeError)  # one error type for the SDK and the CLI
    assert (refused.status, refused.error) == (404, "not_found")
    assert refused.description and str(refused) == f"not_found: {refused.description}"


def test_a_refused_admin_exchange_is_an_StsError(shared_sts: RunningSts) -> None:
    """An agent's workload JWT without a task is no admin credential: the exchange is refused."""
    with StsClient(shared_sts.url, shared_sts.identity(AGENT)) as client, pytest.raises(StsError) as caught:
        client.create_task(agent=AGENT, audiences=[AUD], scopes=["wiki:read"])
    assert caught.value.status == 400
    assert caught.value.error == "invalid_request"
