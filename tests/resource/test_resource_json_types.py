"""Issue 12, "no 500 on odd JSON types", at the resource SDK: every access-token and DPoP-proof member × every JSON type.

The protected app ``a`` (``TetherMiddleware`` + ``Verifier`` under uvicorn) trusts the
test STS's JWKS. Access tokens are the agent's real hop token re-signed with the STS's
own key and one member replaced; proofs are signed by the key the token is bound to. So
the signature verifies and only the type check can refuse: 401 ``invalid_token`` or
``invalid_dpop_proof`` with a ``WWW-Authenticate: DPoP`` challenge (RFC 6750 §3.1,
RFC 9449 §7.1), never a 5xx. The controls are the same builders with nothing replaced.
"""

from __future__ import annotations

import httpx
import pytest
from hypothesis import strategies as st
from rskit import Env

from helpers import AGENT, SVC_B
from oddjson import ACCESS_TOKEN, PROOF, Hop, Member, ProofKey, hop_token, odd, over, resign


@pytest.fixture(scope="module")
def hop(env: Env) -> Hop:
    key = ProofKey()
    token = hop_token(env.sts, env.http, key, env.task()["id"], env.sts.svid(), env.a.url)
    return Hop(env.a.url + "/whoami", token, key, env.http)


def _refused(response: httpx.Response, error: str) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == error, response.text
    assert response.headers["www-authenticate"].startswith(f'DPoP error="{error}"'), response.headers


def test_control_resigned_token_and_hand_signed_proof_accepted(env: Env, hop: Hop) -> None:
    for token in (resign(env.sts, hop.token), resign(env.sts, hop.token, (Member("claims/act"), {"sub": SVC_B}))):
        response = hop.call(token)
        assert response.status_code == 200, response.text
        assert response.json()["agent"] == AGENT


@over(ACCESS_TOKEN)
def test_AUX_01_odd_access_token_member_is_invalid_token(
    env: Env, hop: Hop, member: Member, kind: str, data: st.DataObject
) -> None:
    _refused(hop.call(resign(env.sts, hop.token, odd(member, kind, data))), "invalid_token")


@over(PROOF)
def test_DPOP_03_odd_proof_member_is_invalid_dpop_proof(
    env: Env, hop: Hop, member: Member, kind: str, data: st.DataObject
) -> None:
    # the token re-signed with fresh times: valid whenever this runs
    _refused(hop.call(resign(env.sts, hop.token), odd=odd(member, kind, data)), "invalid_dpop_proof")
