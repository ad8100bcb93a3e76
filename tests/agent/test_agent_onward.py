"""``Onward``: a service calls the next hop on the agent's behalf with its own identity and key.

DESIGN flow step 5 / RFC 8693 §2.1 ``actor_token``: the incoming token is the subject,
the service's workload JWT the actor; the new token nests the service into ``act``
and is bound to the service's own DPoP key. The incoming token itself is never
forwarded (MCP-03).
"""

from __future__ import annotations

import httpx
import pytest
from agentkit import AgentEnv, claims_of

from helpers import AGENT, SVC_B
from tether.agent import DevIdentity, ExchangeError, Onward
from tether.agent.exchange import run_sync


def test_onward_token_nests_the_service_and_is_bound_to_its_key(aenv: AgentEnv) -> None:
    task = aenv.task(on_behalf_of="user:alice")
    session = aenv.agent().session(task["id"])
    with httpx.Client(trust_env=False, timeout=10.0) as http:
        incoming = session.token_for(aenv.x.url, http)
        onward = Onward(aenv.sts.url, DevIdentity(aenv.domain, SVC_B))
        token = str(run_sync(onward.token_flow(incoming, aenv.y.url, "wiki:read"), http))
        claims = claims_of(token)
        assert claims["act"] == {"sub": SVC_B, "act": {"sub": AGENT}}
        expected = ("user:alice", aenv.y.url, "wiki:read", task["id"])
        assert (claims["sub"], claims["aud"], claims["scope"], claims["txn"]) == expected
        assert claims["cnf"]["jkt"] == onward.key.jkt != session.key.jkt
        assert claims["exp"] <= claims_of(incoming)["exp"]

        # Used by the service through its own auth: the next hop sees the chain.
        before = len(aenv.y.log)
        with httpx.Client(auth=onward.auth(incoming, audiences={aenv.y.url: aenv.y.url}), trust_env=False) as service:
            response = service.get(aenv.y.url + "/whoami")
            again = service.get(aenv.y.url + "/whoami")
        assert response.status_code == 200 and again.status_code == 200, response.text
        seen = response.json()
        assert seen["actors"] == [SVC_B, AGENT] and seen["actor"] == SVC_B and seen["subject"] == "user:alice"
        assert seen["jkt"] == onward.key.jkt
        sent = aenv.y.tokens()[-2:]
        assert incoming not in aenv.y.tokens(), "the incoming token is never forwarded"
        assert len(aenv.y.log) == before + 2
        assert len(set(sent)) == 1, "cached per (incoming token, audience)"

        # Bound to the service's key: the agent (or a thief of the token) cannot use it.
        proof = session.key.proof("GET", aenv.y.url + "/whoami", access_token=token)
        stolen = http.get(aenv.y.url + "/whoami", headers={"Authorization": f"DPoP {token}", "DPoP": proof})
        assert stolen.status_code == 401 and stolen.json()["error"] == "invalid_token"
        proof = onward.key.proof("GET", aenv.y.url + "/whoami", access_token=token)
        good = http.get(aenv.y.url + "/whoami", headers={"Authorization": f"DPoP {token}", "DPoP": proof})
        assert good.status_code == 200


def test_onward_inside_a_service_gives_the_next_hop_a_two_level_chain(aenv: AgentEnv) -> None:
    """Agent → x ``/relay`` → y: x uses ``Onward`` with an async client, as the demo's service B does."""
    task = aenv.task(on_behalf_of="user:bob")
    session = aenv.agent().session(task["id"])
    y_before = len(aenv.y.log)
    with httpx.Client(auth=session.auth(audiences={aenv.x.url: aenv.x.url}), trust_env=False, timeout=10.0) as http:
        response = http.get(aenv.x.url + "/relay")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == 200, body
    assert body["next"]["actors"] == [SVC_B, AGENT]
    assert body["next"]["subject"] == "user:bob"
    agent_tokens = set(aenv.x.tokens())
    y_tokens = [r["headers"]["authorization"][0].split(" ", 1)[1] for r in aenv.y.log[y_before:]]
    assert y_tokens and not agent_tokens & set(y_tokens), "x never passed the agent's token through (MCP-03)"
    assert all(claims_of(t)["aud"] == aenv.y.url for t in y_tokens)


def test_onward_refused_for_a_service_that_is_not_the_tokens_audience(aenv: AgentEnv) -> None:
    """Only the audience of the incoming token (or its registered principal) may act on it."""
    task = aenv.task()
    session = aenv.agent().session(task["id"])
    with httpx.Client(trust_env=False, timeout=10.0) as http:
        for_y = session.token_for(aenv.y.url, http)
        intruder = Onward(aenv.sts.url, DevIdentity(aenv.domain, SVC_B))
        with httpx.Client(auth=intruder.auth(for_y, audiences={aenv.x.url: aenv.x.url}), trust_env=False) as service:
            with pytest.raises(ExchangeError) as caught:
                service.get(aenv.x.url + "/whoami")
            assert caught.value.error == "invalid_grant"
        # Positive control: the same service may act on the token that was issued for it.
        for_x = session.token_for(aenv.x.url, http)
        with httpx.Client(auth=intruder.auth(for_x, audiences={aenv.y.url: aenv.y.url}), trust_env=False) as service:
            assert service.get(aenv.y.url + "/whoami").status_code == 200
