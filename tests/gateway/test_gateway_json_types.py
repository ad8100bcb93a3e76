"""Issue 12, "no 500 on odd JSON types", at the gateway: every access-token and DPoP-proof member × every JSON type.

The gateway verifies the agent's hop token with the resource SDK's verifier before any
route check; a token re-signed with the STS's own key with one member replaced, or a
proof signed by the bound key with one member replaced, must be refused with 401
``invalid_token`` / ``invalid_dpop_proof`` and never reach the upstream or answer 5xx.
The controls — the same builders with nothing replaced — reach the upstream.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from gwkit import GatewayEnv
from hypothesis import given, settings
from hypothesis import strategies as st

from oddjson import ACCESS_TOKEN, PROOF, Member, ProofKey, case_id, cases, hop_token, resign, values

EXAMPLES = settings(max_examples=2, deadline=None)


@dataclass(frozen=True)
class Hop:
    url: str
    token: str
    key: ProofKey
    http: httpx.Client


@pytest.fixture(scope="module")
def hop(gw: GatewayEnv) -> Iterator[Hop]:
    key = ProofKey()
    with httpx.Client(timeout=10, trust_env=False) as http:
        token = hop_token(gw.sts, http, key, gw.task("apikey")["id"], gw.sts.svid(), gw.aud("apikey"))
        yield Hop(gw.aud("apikey") + "/v1/items", token, key, http)


def _call(hop: Hop, token: str, proof: str) -> httpx.Response:
    return hop.http.get(hop.url, headers={"Authorization": f"DPoP {token}", "DPoP": proof})


def _refused(gw: GatewayEnv, hop: Hop, response: httpx.Response, error: str, upstream_calls: int) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == error, response.text
    assert len(gw.upstream.requests("/v1/items")) == upstream_calls, "a refused call reached the upstream"


def test_control_resigned_token_and_hand_signed_proof_reach_the_upstream(gw: GatewayEnv, hop: Hop) -> None:
    before = len(gw.upstream.requests("/v1/items"))
    token = resign(gw.sts, hop.token)
    response = _call(hop, token, hop.key.proof("GET", hop.url, access_token=token))
    assert response.status_code == 200, response.text
    assert response.json()["path"] == "/v1/items"
    assert len(gw.upstream.requests("/v1/items")) == before + 1


@pytest.mark.parametrize(("member", "kind"), cases(ACCESS_TOKEN), ids=case_id)
@EXAMPLES
@given(data=st.data())
def test_AUX_01_odd_access_token_member_is_invalid_token(
    gw: GatewayEnv, hop: Hop, member: Member, kind: str, data: st.DataObject
) -> None:
    before = len(gw.upstream.requests("/v1/items"))
    token = resign(gw.sts, hop.token, (member, data.draw(values(kind), label="value")))
    _refused(gw, hop, _call(hop, token, hop.key.proof("GET", hop.url, access_token=token)), "invalid_token", before)


@pytest.mark.parametrize(("member", "kind"), cases(PROOF), ids=case_id)
@EXAMPLES
@given(data=st.data())
def test_DPOP_03_odd_proof_member_is_invalid_dpop_proof(
    gw: GatewayEnv, hop: Hop, member: Member, kind: str, data: st.DataObject
) -> None:
    before = len(gw.upstream.requests("/v1/items"))
    odd = (member, data.draw(values(kind), label="value"))
    token = resign(gw.sts, hop.token)
    proof = hop.key.proof("GET", hop.url, access_token=token, odd=odd)
    _refused(gw, hop, _call(hop, token, proof), "invalid_dpop_proof", before)
