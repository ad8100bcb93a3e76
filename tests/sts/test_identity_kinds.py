"""Issue 2, "Identity": the other two kinds of workload identity, end to end over HTTP.

* an OIDC-issued service token (a Kubernetes projected service-account token from an
  issuer on loopback, discovery + JWKS) exchanged for a session token, its principal
  mapped from claims;
* an RFC 7523 ``private_key_jwt`` client assertion from a registered client, used to
  authenticate at ``/introspect``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from helpers import ACCESS, AGENT, JWT, JWT_BEARER, TOKEN_EXCHANGE, Client, RunningSts, create_task, running_sts
from tether.web.server import ServerThread, free_port

AUD = "http://127.0.0.1:9001"
K8S_PRINCIPAL = "k8s:agents/research"
CLIENT_ID = "client:orchestrator"


def _jwk(key: Any, kid: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(jwt.algorithms.get_default_algorithms()[
        "RS256" if isinstance(key, rsa.RSAPublicKey) else "ES256"].to_jwk(key))  # fmt: skip
    value.update({"kid": kid, "use": "sig"})
    return value


class Provider:
    """A Kubernetes-style OIDC issuer: discovery document and JWKS on loopback."""

    def __init__(self) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "k8s-1"

        async def discovery(request: Request) -> Response:
            return JSONResponse({"issuer": self.issuer, "jwks_uri": self.issuer + "/openid/v1/jwks"})

        async def jwks(request: Request) -> Response:
            return JSONResponse({"keys": [_jwk(self.key.public_key(), self.kid)]})

        app = Starlette(routes=[Route("/.well-known/openid-configuration", discovery), Route("/openid/v1/jwks", jwks)])
        self.server = ServerThread(app, self.port)

    def token(self, audience: str, *, namespace: str = "agents", name: str = "research", ttl: int = 600) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": f"system:serviceaccount:{namespace}:{name}",
            "aud": [audience],
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": secrets.token_hex(8)}},
        }
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[RunningSts, Provider, ec.EllipticCurvePrivateKey]]:
    provider = Provider()
    provider.server.start()
    client_key = ec.generate_private_key(ec.SECP256R1())
    jwks_file = tmp_path / "orchestrator.jwks.json"
    jwks_file.write_text(json.dumps({"keys": [_jwk(client_key.public_key(), "orch-1")]}), encoding="utf-8")
    extra = (
        f'[[oidc_issuers]]\nissuer = "{provider.issuer}"\n'
        'principal = "k8s:{/kubernetes.io/namespace}/{/kubernetes.io/serviceaccount/name}"\nalgorithms = ["RS256"]\n\n'
        f'[[clients]]\nclient_id = "{CLIENT_ID}"\njwks_file = "{jwks_file}"\n\n'
        f'[[resources]]\nuri = "{AUD}"\nprincipals = ["{CLIENT_ID}"]\n'
    )
    try:
        with running_sts(tmp_path / "sts", extra_toml=extra) as sts:
            yield sts, provider, client_key
    finally:
        provider.server.stop()


def _session(sts: RunningSts, agent: Client, task_id: str, token: str) -> httpx.Response:
    return agent.post_token({"grant_type": TOKEN_EXCHANGE, "subject_token": token, "subject_token_type": JWT, "task": task_id})


def test_kubernetes_service_account_token_exchanged_for_a_session(world: tuple[RunningSts, Provider, Any]) -> None:
    sts, provider, _ = world
    task = create_task(sts, agent=K8S_PRINCIPAL, audiences=[AUD], scopes=["wiki:read"])
    agent = Client(sts)
    wrong_aud = _session(sts, agent, task["id"], provider.token("https://someone-else.example"))
    assert wrong_aud.status_code == 400 and wrong_aud.json()["error"] == "invalid_grant"
    other_sa = _session(sts, agent, task["id"], provider.token(sts.url, name="intruder"))
    assert other_sa.status_code == 400 and other_sa.json()["error"] == "invalid_grant"  # not this task's agent
    session = _session(sts, agent, task["id"], provider.token(sts.url))
    assert session.status_code == 200, session.text
    claims = jwt.decode(session.json()["access_token"], options={"verify_signature": False})
    assert claims["sub"] == K8S_PRINCIPAL and claims["agt"] == K8S_PRINCIPAL
    hop = agent.post_token({"grant_type": TOKEN_EXCHANGE, "subject_token": session.json()["access_token"],
                            "subject_token_type": ACCESS, "resource": AUD})  # fmt: skip
    assert hop.status_code == 200, hop.text


def _assertion(key: ec.EllipticCurvePrivateKey, audience: str, *, kid: str = "orch-1", jti: str | None = None) -> str:
    now = int(time.time())
    claims = {"iss": CLIENT_ID, "sub": CLIENT_ID, "aud": audience, "iat": now, "exp": now + 60,
              "jti": jti or secrets.token_urlsafe(12)}  # fmt: skip
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})


def test_private_key_jwt_client_authenticates_at_introspection(world: tuple[RunningSts, Provider, Any]) -> None:
    sts, _, client_key = world
    task = create_task(sts, audiences=[AUD], scopes=["wiki:read"])
    agent = Client(sts)
    session = agent.session(task["id"]).json()["access_token"]
    hop = agent.hop(session, AUD).json()["access_token"]
    with httpx.Client(trust_env=False, timeout=10) as http:

        def introspect(assertion: str) -> httpx.Response:
            return http.post(sts.url + "/introspect", data={"token": hop, "client_assertion": assertion,
                                                            "client_assertion_type": JWT_BEARER})  # fmt: skip

        forged = introspect(_assertion(ec.generate_private_key(ec.SECP256R1()), sts.url + "/introspect"))
        assert forged.status_code == 401 and forged.json()["error"] == "invalid_client"
        wrong_aud = introspect(_assertion(client_key, "https://other.example/token"))
        assert wrong_aud.status_code == 401 and wrong_aud.json()["error"] == "invalid_client"
        assertion = _assertion(client_key, sts.url + "/introspect")
        answer = introspect(assertion)
        assert answer.status_code == 200, answer.text
        assert answer.json()["active"] is True and answer.json()["aud"] == AUD
        replayed = introspect(assertion)
        assert replayed.status_code == 401 and replayed.json()["error"] == "invalid_client"
        assert introspect(_assertion(client_key, sts.url)).json()["active"] is True


# -- a principal's kind comes from its identity (issue 12: never guessed from a spiffe:// prefix) -----------
GATED = "http://127.0.0.1:9009"
GATED_TD = "http://127.0.0.1:9010"
DOMAIN_GATE = f"""
@id("domain-gate")
forbid (principal, action == Tether::Action::"exchange", resource == Tether::Service::"{GATED_TD}")
unless {{ principal.trust_domain == context.purpose && context.task.agent.trust_domain == context.purpose }};
"""
KIND_GATE = f"""
@id("kind-gate")
forbid (principal, action == Tether::Action::"exchange", resource == Tether::Service::"{GATED}")
unless {{ principal.kind == context.purpose && context.task.agent.kind == context.purpose }};
"""


def _identity_token(kind: str, sts: RunningSts, provider: Provider, client_key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    """(principal, a fresh workload JWT proving it) for each kind of identity."""
    if kind == "spiffe":
        return AGENT, sts.svid()
    if kind == "oidc":
        return K8S_PRINCIPAL, provider.token(sts.url)
    return CLIENT_ID, _assertion(client_key, sts.url)


@pytest.mark.parametrize("kind", ["spiffe", "oidc", "client"])
def test_each_kind_reaches_cedar_as_proven_and_is_carried_through_hops(
    world: tuple[RunningSts, Provider, Any], kind: str
) -> None:
    sts, provider, client_key = world
    (sts.config.policy_dir / "kind_gate.cedar").write_text(KIND_GATE, encoding="utf-8")
    principal, token = _identity_token(kind, sts, provider, client_key)
    task = create_task(sts, agent=principal, audiences=[AUD, GATED], scopes=["wiki:read"], purpose=kind)
    agent = Client(sts)
    session = _session(sts, agent, task["id"], token)
    assert session.status_code == 200, session.text
    claims = jwt.decode(session.json()["access_token"], options={"verify_signature": False})
    assert (claims["ckd"], claims["akd"]) == (kind, kind)
    hop = agent.hop(session.json()["access_token"], GATED)
    assert hop.status_code == 200, hop.text  # Cedar saw the requester and the task's agent as `kind`
    hop_claims = jwt.decode(hop.json()["access_token"], options={"verify_signature": False})
    assert (hop_claims["ckd"], hop_claims["akd"]) == (kind, kind)
    # negative: the same identity under a task whose gate names another kind is refused by the policy
    other = next(k for k in ("spiffe", "oidc", "client") if k != kind)
    principal, token = _identity_token(kind, sts, provider, client_key)
    task = create_task(sts, agent=principal, audiences=[GATED], scopes=["wiki:read"], purpose=other)
    session = _session(sts, agent, task["id"], token)
    refused = agent.hop(session.json()["access_token"], GATED)
    assert refused.status_code == 403 and refused.json()["error"] == "access_denied", refused.text


@pytest.mark.parametrize("kind", ["spiffe", "oidc", "client"])
def test_each_sources_trust_domain_reaches_cedar_and_is_carried_through_hops(
    world: tuple[RunningSts, Provider, Any], kind: str
) -> None:
    """Issue 21 finding 6: Cedar's ``trust_domain`` is the identity source that verified the workload
    (the SPIFFE trust domain, the OIDC issuer, the registered client), carried in ``ctd``/``atd``."""
    sts, provider, client_key = world
    (sts.config.policy_dir / "domain_gate.cedar").write_text(DOMAIN_GATE, encoding="utf-8")
    expected = {"spiffe": "tether.local", "oidc": provider.issuer, "client": CLIENT_ID}[kind]
    for purpose, allowed in ((expected, True), ("wrong.example", False)):
        principal, token = _identity_token(kind, sts, provider, client_key)
        task = create_task(sts, agent=principal, audiences=[GATED_TD], scopes=["wiki:read"], purpose=purpose)
        agent = Client(sts)
        session = _session(sts, agent, task["id"], token)
        assert session.status_code == 200, session.text
        claims = jwt.decode(session.json()["access_token"], options={"verify_signature": False})
        assert (claims["ctd"], claims["atd"]) == (expected, expected)
        hop = agent.hop(session.json()["access_token"], GATED_TD)
        if allowed:
            assert hop.status_code == 200, hop.text
            hop_claims = jwt.decode(hop.json()["access_token"], options={"verify_signature": False})
            assert (hop_claims["ctd"], hop_claims["atd"]) == (expected, expected)
        else:
            assert hop.status_code == 403 and hop.json()["error"] == "access_denied", hop.text
