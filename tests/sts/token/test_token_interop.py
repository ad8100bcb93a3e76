"""Standard-client compatibility: an exchange done with PyJWT + pyca/cryptography + httpx only.

No ``tether.agent`` and no ``tokenkit`` JOSE here: the DPoP key, its JWK, its RFC 7638
thumbprint and every proof are built with PyJWT and cryptography as any OAuth client
would, the endpoints come from RFC 8414 metadata, and the issued tokens are verified
with PyJWT against ``GET /jwks`` (RFC 9068 §4).
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from helpers import AGENT, RunningSts, create_task

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TYPE = "urn:ietf:params:oauth:token-type:access_token"
SERVICE_B = "http://127.0.0.1:9001"


class StandardDPoPClient:
    """RFC 9449 client side, written against PyJWT's public API only."""

    def __init__(self, http: httpx.Client, token_endpoint: str, now: Any) -> None:
        self.http = http
        self.token_endpoint = token_endpoint
        self.now = now
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.jwk = {
            k: v for k, v in json.loads(ECAlgorithm.to_jwk(self.key.public_key())).items() if k in ("kty", "crv", "x", "y")
        }
        members = json.dumps({k: self.jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
        self.jkt = base64.urlsafe_b64encode(hashlib.sha256(members.encode()).digest()).rstrip(b"=").decode()
        self.nonce: str | None = None

    def proof(self) -> str:
        claims: dict[str, Any] = {"jti": str(uuid.uuid4()), "htm": "POST", "htu": self.token_endpoint, "iat": int(self.now())}
        if self.nonce:
            claims["nonce"] = self.nonce
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": self.jwk})

    def exchange(self, **form: str) -> httpx.Response:
        form = {"grant_type": TOKEN_EXCHANGE, **form}
        for _ in range(2):
            response = self.http.post(self.token_endpoint, data=form, headers={"DPoP": self.proof()})
            self.nonce = response.headers.get("DPoP-Nonce", self.nonce)
            if response.status_code == 400 and response.json().get("error") == "use_dpop_nonce":
                continue
            break
        return response


def _verify(http: httpx.Client, jwks_uri: str, token: str, *, issuer: str, audience: str) -> dict[str, Any]:
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
    jwks = jwt.PyJWKSet.from_dict(http.get(jwks_uri).json())
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=["ES256", "EdDSA"],
        audience=audience,
        issuer=issuer,
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
        leeway=0,
    )
    return claims


def test_BCP_11_standard_client_exchange_verifies_against_jwks(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts, audiences=[SERVICE_B])
    with httpx.Client(timeout=10.0, trust_env=False) as http:
        metadata = http.get(sts.url + "/.well-known/oauth-authorization-server").json()
        assert metadata["issuer"] == sts.url
        assert TOKEN_EXCHANGE in metadata["grant_types_supported"]
        assert "ES256" in metadata["dpop_signing_alg_values_supported"]
        client = StandardDPoPClient(http, metadata["token_endpoint"], now=sts.clock.now)
        assert jwt.PyJWK(client.jwk).key_type == "EC"

        session = client.exchange(subject_token=sts.svid(), subject_token_type=JWT_TYPE, task=task["id"], client_id=AGENT)
        assert session.status_code == 200, session.text
        body = session.json()
        assert body["token_type"] == "DPoP" and body["issued_token_type"] == ACCESS_TYPE
        claims = _verify(http, metadata["jwks_uri"], body["access_token"], issuer=sts.url, audience=sts.url)
        assert claims["cnf"] == {"jkt": client.jkt}
        assert claims["txn"] == task["id"] and claims["sub"] == AGENT

        hop = client.exchange(
            subject_token=body["access_token"], subject_token_type=ACCESS_TYPE, resource=SERVICE_B, scope="wiki:read"
        )
        assert hop.status_code == 200, hop.text
        hop_claims = _verify(http, metadata["jwks_uri"], hop.json()["access_token"], issuer=sts.url, audience=SERVICE_B)
        assert hop_claims["cnf"] == {"jkt": client.jkt}
        assert hop_claims["scope"] == "wiki:read" and hop_claims["exp"] <= claims["exp"]


def test_BCP_11_pyjwkclient_fetches_and_verifies(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts)
    with httpx.Client(timeout=10.0, trust_env=False) as http:
        client = StandardDPoPClient(http, sts.token_url, now=sts.clock.now)
        response = client.exchange(subject_token=sts.svid(), subject_token_type=JWT_TYPE, task=task["id"])
        assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    signing_key = jwt.PyJWKClient(sts.url + "/jwks", cache_jwk_set=False).get_signing_key_from_jwt(token)
    claims = jwt.decode(token, signing_key.key, algorithms=["ES256", "EdDSA"], audience=sts.url, issuer=sts.url)
    assert claims["cnf"]["jkt"] == client.jkt
    # A token re-signed by anyone else does not verify against the STS's JWKS.
    forged = jwt.encode(
        claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers={"kid": signing_key.key_id, "typ": "at+jwt"}
    )
    try:
        jwt.decode(forged, signing_key.key, algorithms=["ES256"], audience=sts.url, issuer=sts.url)
    except jwt.InvalidSignatureError:
        pass
    else:
        raise AssertionError("a forged token verified against the STS key")
