"""Issue 12, "no 500 on odd JSON types", at the gateway: every access-token and DPoP-proof member × every JSON type.

The gateway verifies the agent's hop token with the resource SDK's verifier before any
route check; a token re-signed with the STS's own key with one member replaced, or a
proof signed by the bound key with one member replaced, must be refused with 401
``invalid_token`` / ``invalid_dpop_proof`` and never reach the upstream or answer 5xx.
The controls — the same builders with nothing replaced — reach the upstream.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from gwkit import GatewayEnv
from hypothesis import strategies as st

from oddjson import ACCESS_TOKEN, PROOF, Hop, Member, ProofKey, hop_token, odd, over, resign


@pytest.fixture(scope="module")
def hop(gw: GatewayEnv) -> Iterator[Hop]:
    key = ProofKey()
    with httpx.Client(timeout=10, trust_env=False) as http:
        token = hop_token(gw.sts, http, key, gw.task("apikey")["id"], gw.sts.svid(), gw.aud("apikey"))
        yield Hop(gw.aud("apikey") + "/v1/items", token, key, http)


def _upstream_calls(gw: GatewayEnv) -> int:
    return len(gw.upstream.requests("/v1/items"))


def _refused(gw: GatewayEnv, response: httpx.Response, error: str, upstream_calls: int) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == error, response.text
    assert _upstream_calls(gw) == upstream_calls, "a refused call reached the upstream"


def test_control_resigned_token_and_hand_signed_proof_reach_the_upstream(gw: GatewayEnv, hop: Hop) -> None:
    before = _upstream_calls(gw)
    response = hop.call(resign(gw.sts, hop.token))
    assert response.status_code == 200, response.text
    assert response.json()["path"] == "/v1/items"
    assert _upstream_calls(gw) == before + 1


@over(ACCESS_TOKEN)
def test_AUX_01_odd_access_token_member_is_invalid_token(
    gw: GatewayEnv, hop: Hop, member: Member, kind: str, data: st.DataObject
) -> None:
    before = _upstream_calls(gw)
    _refused(gw, hop.call(resign(gw.sts, hop.token, odd(member, kind, data))), "invalid_token", before)


@over(PROOF)
def test_DPOP_03_odd_proof_member_is_invalid_dpop_proof(
    gw: GatewayEnv, hop: Hop, member: Member, kind: str, data: st.DataObject
) -> None:
    before = _upstream_calls(gw)
    _refused(gw, hop.call(resign(gw.sts, hop.token), odd=odd(member, kind, data)), "invalid_dpop_proof", before)
