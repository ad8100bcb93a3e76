"""Issue 12, "no 500 on odd JSON types", at ``POST /token``: every member of every JWT the STS reads, every JSON type.

Each token is correctly signed with the real key its verifier trusts — the dev trust
domain's key (JWT-SVIDs as subject and actor), an OIDC issuer's key from a JWKS file, a
registered client's key (``private_key_jwt``), the STS's own signing key (a session token
re-signed as subject) and the caller's DPoP key — so the type check, not the signature,
is what must refuse it. Members × kinds are enumerated (``oddjson.cases``); hypothesis
draws the values. Every refusal is the exact RFC 6749 §5.2 / RFC 9449 §7 code, never a
5xx, and each token kind has a positive control built by the same code.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import strategies as st
from joserfc.jwk import ECKey
from tokenkit import SERVICE_B, hop_form, session_form

from helpers import (
    ACCESS,
    AGENT,
    JWT,
    JWT_BEARER,
    QUIET_MONITOR,
    SVC_B,
    TOKEN_EXCHANGE,
    RunningSts,
    create_task,
    running_sts,
)
from oddjson import (
    ACCESS_TOKEN,
    NUMBER,
    OBJECT,
    PROOF,
    Member,
    ProofKey,
    members,
    odd,
    over,
    resign,
    sign_raw,
    with_member,
)

OIDC_ISSUER = "https://oidc.test"
K8S_AGENT = "k8s:agents/research"
CLIENT_ID = "client:orchestrator"

WORKLOAD = [
    *members("header", ["alg", "kid", "typ"]),
    *members("claims", ["iss", "sub", "aud", "jti"]),
    *members("claims", ["exp", "iat", "nbf"], NUMBER),
]
OIDC = [
    *(m for m in WORKLOAD if m.path != "claims/sub"),  # the principal comes from the template, not `sub`
    Member("claims/kubernetes.io", OBJECT),
    Member("claims/kubernetes.io/namespace"),
    Member("claims/kubernetes.io/serviceaccount", OBJECT),
    Member("claims/kubernetes.io/serviceaccount/name"),
]


def _toml(oidc_jwks: str, client_jwks: str) -> str:
    return f"""
[[resources]]
uri = "{SERVICE_B}"
principals = ["{SVC_B}"]

[[oidc_issuers]]
issuer = "{OIDC_ISSUER}"
principal = "k8s:{{/kubernetes.io/namespace}}/{{/kubernetes.io/serviceaccount/name}}"
algorithms = ["ES256"]
jwks_file = "{oidc_jwks}"

[[clients]]
client_id = "{CLIENT_ID}"
jwks_file = "{client_jwks}"
"""


@dataclass
class World:
    sts: RunningSts
    http: httpx.Client
    oidc_key: ECKey
    client_key: ECKey
    agent: ProofKey
    session: str
    tasks: dict[str, str] = field(default_factory=dict)

    @property
    def dev(self) -> Any:
        return self.sts.dev()

    def post(
        self, form: dict[str, str], *, key: ProofKey | None = None, change: tuple[Member, Any] | None = None
    ) -> httpx.Response:
        return (key or ProofKey()).post(self.http, self.sts.token_url, form, odd=change)

    # -- workload JWTs: (header, claims, signing key) of a valid token -----------------------------
    def _times(self) -> dict[str, Any]:
        now = int(time.time())
        return {"iat": now, "exp": now + 300, "jti": secrets.token_urlsafe(12)}

    def svid(self, sub: str = AGENT) -> tuple[dict[str, Any], dict[str, Any], ECKey]:
        dev = self.dev
        header = {"alg": "ES256", "kid": dev.kid, "typ": "JWT"}
        return header, {"sub": sub, "aud": [self.sts.url], **self._times()}, dev.key

    def oidc(self) -> tuple[dict[str, Any], dict[str, Any], ECKey]:
        claims = {"iss": OIDC_ISSUER, "sub": "system:serviceaccount:agents:research", "aud": [self.sts.url], **self._times(),
                  "kubernetes.io": {"namespace": "agents", "serviceaccount": {"name": "research"}}}  # fmt: skip
        return {"alg": "ES256", "kid": "oidc-1", "typ": "JWT"}, claims, self.oidc_key

    def client(self) -> tuple[dict[str, Any], dict[str, Any], ECKey]:
        claims = {"iss": CLIENT_ID, "sub": CLIENT_ID, "aud": self.sts.token_url, **self._times()}
        return {"alg": "ES256", "kid": "client-1"}, claims, self.client_key


def _jwks_file(directory: Any, name: str, key: ECKey, kid: str) -> str:
    path = directory / f"{name}.jwks.json"
    path.write_text(json.dumps({"keys": [{**key.as_dict(private=False), "kid": kid, "use": "sig"}]}), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("json-types")
    oidc_key = ECKey.generate_key("P-256", private=True)
    client_key = ECKey.generate_key("P-256", private=True)
    toml = _toml(_jwks_file(directory, "oidc", oidc_key, "oidc-1"), _jwks_file(directory, "client", client_key, "client-1"))
    with (
        running_sts(directory / "sts", extra_toml=toml + QUIET_MONITOR) as sts,
        httpx.Client(timeout=10, trust_env=False) as http,
    ):
        task = create_task(sts, audiences=[SERVICE_B], scopes=["wiki:read"], max_tokens=1000)
        agent = ProofKey()
        response = agent.post(http, sts.token_url, session_form(task["id"], sts.svid()))
        assert response.status_code == 200, response.text
        yield World(sts, http, oidc_key, client_key, agent, response.json()["access_token"])


def _signed(parts: tuple[dict[str, Any], dict[str, Any], Any], change: tuple[Member, Any] | None = None) -> str:
    header, claims, key = parts
    if change is not None:
        header, claims = with_member(header, claims, *change)
    return sign_raw(header, claims, key)


def _refused(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"] == error, response.text


def _task(world: World, agent: str = AGENT) -> str:
    return str(create_task(world.sts, agent=agent, audiences=[SERVICE_B], scopes=["wiki:read"])["id"])


def _task_id(world: World, agent: str = AGENT) -> str:
    """One task per agent for the refusal cases (nothing is issued against it, so it is never used up)."""
    if agent not in world.tasks:
        world.tasks[agent] = _task(world, agent)
    return world.tasks[agent]


# -- DPoP proofs (RFC 9449 §4.3) -----------------------------------------------------------------------
def test_control_hand_signed_proof_accepted(world: World) -> None:
    response = world.post(session_form(_task(world), world.sts.svid()))
    assert response.status_code == 200, response.text


@over(PROOF)
def test_DPOP_03_odd_proof_member_is_invalid_dpop_proof(world: World, member: Member, kind: str, data: st.DataObject) -> None:
    form = session_form("task-not-reached", world.sts.svid())
    _refused(world.post(form, key=world.agent, change=odd(member, kind, data)), 400, "invalid_dpop_proof")


# -- workload JWTs as subject, actor and client assertion --------------------------------------------------
def test_control_hand_signed_workload_jwts_accepted(world: World) -> None:
    svid = world.post(session_form(_task(world), _signed(world.svid())))
    assert svid.status_code == 200, svid.text
    oidc = world.post(session_form(_task(world, K8S_AGENT), _signed(world.oidc())))
    assert oidc.status_code == 200, oidc.text
    client_form = session_form(_task(world, CLIENT_ID), _signed(world.client()), client_assertion=_signed(world.client()),
                               client_assertion_type=JWT_BEARER)  # fmt: skip
    client = world.post(client_form)
    assert client.status_code == 200, client.text


@over(WORKLOAD)
def test_SVID_odd_subject_member_is_invalid_grant(world: World, member: Member, kind: str, data: st.DataObject) -> None:
    changed = odd(member, kind, data)
    _refused(world.post(session_form(_task_id(world), _signed(world.svid(), changed))), 400, "invalid_grant")


@over(OIDC)
def test_OIDC_odd_subject_member_is_invalid_grant(world: World, member: Member, kind: str, data: st.DataObject) -> None:
    changed = odd(member, kind, data)
    _refused(world.post(session_form(_task_id(world, K8S_AGENT), _signed(world.oidc(), changed))), 400, "invalid_grant")


@over(WORKLOAD)
def test_RFC7523_odd_client_assertion_member_is_invalid_client(
    world: World, member: Member, kind: str, data: st.DataObject
) -> None:
    changed = odd(member, kind, data)
    form = session_form(_task_id(world, CLIENT_ID), _signed(world.client()), client_assertion=_signed(world.client(), changed),
                        client_assertion_type=JWT_BEARER)  # fmt: skip
    _refused(world.post(form), 401, "invalid_client")


@pytest.fixture(scope="module")
def hop_for_b(world: World) -> str:
    """A hop token for SERVICE_B (service B's identity may act for it, RFC 8693 actor_token)."""
    response = world.agent.post(world.http, world.sts.token_url, hop_form(world.session, SERVICE_B))
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def _actor_form(subject: str, actor: str) -> dict[str, str]:
    return {"grant_type": TOKEN_EXCHANGE, "subject_token": subject, "subject_token_type": ACCESS, "actor_token": actor,
            "actor_token_type": JWT, "resource": SERVICE_B}  # fmt: skip


def test_control_hand_signed_actor_token_accepted(world: World, hop_for_b: str) -> None:
    response = world.post(_actor_form(hop_for_b, _signed(world.svid(SVC_B))))
    assert response.status_code == 200, response.text


@over(WORKLOAD)
def test_TX_01_odd_actor_token_member_is_invalid_grant(
    world: World, hop_for_b: str, member: Member, kind: str, data: st.DataObject
) -> None:
    changed = odd(member, kind, data)
    _refused(world.post(_actor_form(hop_for_b, _signed(world.svid(SVC_B), changed))), 400, "invalid_grant")


# -- tether access tokens as subject (RFC 9068 §2.2) ----------------------------------------------------------
def test_control_resigned_session_token_accepted(world: World) -> None:
    response = world.agent.post(world.http, world.sts.token_url, hop_form(resign(world.sts, world.session), SERVICE_B))
    assert response.status_code == 200, response.text


@over(ACCESS_TOKEN)
def test_AUX_01_odd_subject_access_token_member_is_invalid_grant(
    world: World, member: Member, kind: str, data: st.DataObject
) -> None:
    changed = odd(member, kind, data)
    response = world.agent.post(world.http, world.sts.token_url, hop_form(resign(world.sts, world.session, changed), SERVICE_B))
    _refused(response, 400, "invalid_grant")
