"""Token rules at the gateway, enforced by the resource SDK for each route's own audience.

A route's audience is ``{gateway.url}/routes/{name}`` (ASVS 9.2.3): a hop token for any
other audience — the STS's demo service, another route — is refused, as is a route's
token at another route, a DPoP-bound token sent as ``Bearer`` (DPOP-15), a replayed or
mismatched proof, a proof by another key, and no token at all. None of them reach the
upstream; each has a positive control with the right token on the same agent.
"""

from __future__ import annotations

import pytest
from gwkit import Caller, GatewayEnv

from helpers import AGENT

DEMO = "http://127.0.0.1:9001"  # the STS's demo service audience (helpers.create_task's default)


@pytest.fixture(scope="module")
def agent(gw: GatewayEnv) -> Caller:
    return gw.caller("apikey", "legacy", extra_audiences=[DEMO])


def _refused_401(gw: GatewayEnv, response_status: int, body: dict[str, str], before: int) -> None:
    assert response_status == 401, body
    assert body["error"] in ("invalid_token", "invalid_dpop_proof"), body
    assert len(gw.upstream.log) == before, "a refused token reached the upstream"


def test_the_route_metadata_names_the_route_audience(gw: GatewayEnv, agent: Caller) -> None:
    doc = agent.plain.get(gw.url + "/.well-known/oauth-protected-resource/routes/apikey").json()
    assert doc["resource"] == gw.aud("apikey")
    assert doc["authorization_servers"] == [gw.sts.url]
    assert doc["dpop_bound_access_tokens_required"] is False  # certificate-bound tokens too (RFC 8705)
    assert doc["tls_client_certificate_bound_access_tokens"] is True


def test_a_hop_token_for_another_service_is_refused(gw: GatewayEnv, agent: Caller) -> None:
    url = gw.aud("apikey") + "/v1/items"
    before = len(gw.upstream.log)
    response = agent.manual("GET", url, agent.token(DEMO))
    _refused_401(gw, response.status_code, response.json(), before)
    assert agent.manual("GET", url, agent.token(gw.aud("apikey"))).status_code == 200


def test_a_routes_token_is_refused_at_another_route(gw: GatewayEnv, agent: Caller) -> None:
    legacy = agent.token(gw.aud("legacy"))
    before = len(gw.upstream.log)
    response = agent.manual("GET", gw.aud("apikey") + "/v1/items", legacy)
    _refused_401(gw, response.status_code, response.json(), before)
    assert agent.manual("GET", gw.aud("legacy") + "/v1/items", legacy).status_code == 200  # at its own route


def test_the_bearer_scheme_is_refused(gw: GatewayEnv, agent: Caller) -> None:
    url = gw.aud("apikey") + "/v1/items"
    token = agent.token(gw.aud("apikey"))
    before = len(gw.upstream.log)
    with_proof = agent.manual("GET", url, token, scheme="Bearer")
    _refused_401(gw, with_proof.status_code, with_proof.json(), before)
    without = agent.plain.get(url, headers={"Authorization": f"Bearer {token}"})
    _refused_401(gw, without.status_code, without.json(), before)
    assert agent.manual("GET", url, token).status_code == 200


def test_a_replayed_proof_is_refused(gw: GatewayEnv, agent: Caller) -> None:
    url = gw.aud("apikey") + "/v1/items"
    token = agent.token(gw.aud("apikey"))
    proof = agent.key.proof("GET", url, access_token=token)
    assert agent.manual("GET", url, token, proof=proof).status_code == 200
    before = len(gw.upstream.log)
    again = agent.manual("GET", url, token, proof=proof)
    _refused_401(gw, again.status_code, again.json(), before)
    # a replay proves nothing about who sent it (anyone who saw the request can send it again):
    # it is audited unattributed, naming the task only as claimed (issue 12 finding 2)
    record = [r for r in gw.audit("gateway.refused") if r.detail.get("claimed_task") == agent.task["id"]][-1]
    assert record.error == "invalid_dpop_proof" and record.detail["replay"] is True
    assert record.principal is None and record.task is None and "agent" not in record.detail
    assert record.detail["claimed_principal"] == AGENT
    assert agent.manual("GET", url, token).status_code == 200  # a fresh proof


def test_a_proof_for_another_url_or_method_is_refused(gw: GatewayEnv, agent: Caller) -> None:
    url = gw.aud("apikey") + "/v1/items"
    token = agent.token(gw.aud("apikey"))
    before = len(gw.upstream.log)
    for method, target in (("GET", gw.aud("apikey") + "/v1/items/1"), ("POST", url), ("GET", gw.aud("legacy") + "/v1/items")):
        proof = agent.key.proof(method, target, access_token=token)
        response = agent.manual("GET", url, token, proof=proof)
        _refused_401(gw, response.status_code, response.json(), before)
    assert agent.manual("GET", url, token).status_code == 200


def test_a_proof_by_another_key_is_refused(gw: GatewayEnv, agent: Caller) -> None:
    thief = gw.caller("apikey")
    url = gw.aud("apikey") + "/v1/items"
    stolen = agent.token(gw.aud("apikey"))
    before = len(gw.upstream.log)
    since = gw.sts.audit()[-1].seq
    response = thief.manual("GET", url, stolen)  # the thief's own key signs the proof
    _refused_401(gw, response.status_code, response.json(), before)
    # DPOP-14: nothing proves who sent it, so it is pinned on no agent or task
    refusals = [r for r in gw.sts.audit() if r.seq > since and r.kind == "gateway.refused"]
    assert refusals and all(r.principal is None and r.task is None for r in refusals)
    # nor does the thief replaying its own proof with the stolen token count as the victim's replay
    proof = thief.key.proof("GET", url, access_token=stolen)
    for _ in range(2):
        replayed = thief.manual("GET", url, stolen, proof=proof)
        _refused_401(gw, replayed.status_code, replayed.json(), before)
    refusals = [r for r in gw.sts.audit() if r.seq > since and r.kind == "gateway.refused"]
    assert len(refusals) == 3 and not any(r.task or r.detail.get("replay") for r in refusals)
    assert agent.manual("GET", url, stolen).status_code == 200


def test_no_token_is_refused_with_a_bare_challenge(gw: GatewayEnv, agent: Caller) -> None:
    before = len(gw.upstream.log)
    response = agent.plain.get(gw.aud("apikey") + "/v1/items")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("DPoP")
    assert "error=" not in response.headers["www-authenticate"]  # RFC 6750 §3.1: no error code without credentials
    assert len(gw.upstream.log) == before
    assert agent.get("apikey", "/v1/items").status_code == 200
