"""The linked task at B: joined by later tokens of the same A task, entered by RFC 8693 as well,
A's chain kept and namespaced (FED-02), and hops at B inside it as for a local agent."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fedinkit import AGENT, WIKI_B, Border, claims_of, mark, refused, two_domains

from helpers import Client, admin_token, create_task

FED_AGENT = f"fed:a/{AGENT}"


@pytest.fixture(scope="module")
def border(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Border]:
    with two_domains(tmp_path_factory.mktemp("linked")) as pair:
        yield pair


def _session_at_b(border: Border, task_id: str, **extra: str) -> tuple[str, Client]:
    foreign, key = border.hop_to_b(task_id)
    client = border.at_b(key)
    response = border.cross(client, foreign, **extra)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"]), client


def test_fed01_later_tokens_of_the_same_task_and_agent_join_the_linked_task(border: Border) -> None:
    task = border.a_task()
    first, _ = _session_at_b(border, task["id"])
    second, _ = _session_at_b(border, task["id"])  # a new hop at A, a new key at A's session
    assert claims_of(first)["txn"] == claims_of(second)["txn"]
    joined = [r for r in border.b.audit() if r.kind == "federation.linked" and r.task == claims_of(first)["txn"]]
    assert [r.detail["joined"] for r in joined] == [False, True]
    # another A task: another linked task
    third, _ = _session_at_b(border, border.a_task()["id"])
    assert claims_of(third)["txn"] != claims_of(first)["txn"]


def test_fed01_rfc8693_subject_token_from_a_peer_crosses_too(border: Border) -> None:
    foreign, key = border.hop_to_b(border.a_task()["id"])
    response = border.cross_by_exchange(border.at_b(key), foreign, scope="wiki:read")
    assert response.status_code == 200, response.text
    claims = claims_of(response.json()["access_token"])
    assert claims["scope"] == "wiki:read" and claims["client_id"] == FED_AGENT and claims["cnf"] == {"jkt": key.jkt}


def test_fed02_the_foreign_chain_is_kept_with_every_principal_namespaced(border: Border) -> None:
    task = border.a_task(on_behalf_of="user:alice", max_depth=3)
    foreign, _ = border.hop_to_b(task["id"])
    assert claims_of(foreign)["act"] == {"sub": AGENT} and claims_of(foreign)["sub"] == "user:alice"
    session, client = _session_at_b(border, task["id"])
    claims = claims_of(session)
    assert claims["sub"] == "fed:a/user:alice"
    assert claims["act"] == {"sub": FED_AGENT}
    assert claims["client_id"] == claims["agt"] == FED_AGENT
    # the hop at B inside the linked task: bound to the same key, chain carried, audience B's resource
    hop = client.hop(session, WIKI_B)
    assert hop.status_code == 200, hop.text
    hop_claims = claims_of(hop.json()["access_token"])
    assert hop_claims["aud"] == WIKI_B and hop_claims["txn"] == claims["txn"]
    assert hop_claims["act"] == {"sub": FED_AGENT} and hop_claims["sub"] == "fed:a/user:alice"
    assert hop_claims["cnf"] == {"jkt": client.key.jkt} and hop_claims["ckd"] == "federated"
    # a linked task reaches only the peer's audiences
    since = mark(border.b)
    refused(border.b, client.hop(session, "http://127.0.0.1:9001"), since=since, status=400, error="invalid_target")


def test_fed02_a_foreign_name_never_equals_the_local_one(border: Border) -> None:
    """A's agent is spiffe://tether.local/agent/research, and so is one of B's own (two `tether init`s):
    at B the foreign one is fed:a/…, its linked task is not B's agent's, and B's agent cannot redeem it."""
    local_task = create_task(border.b, audiences=[WIKI_B])
    session, client = _session_at_b(border, border.a_task()["id"])
    linked = claims_of(session)["txn"]
    # the linked session cannot hop inside B's local task of the same-named agent
    since = mark(border.b)
    refused(border.b, client.hop(session, WIKI_B, task=local_task["id"]), since=since, status=400, error="invalid_request")
    # B's own agent (B's dev SVID for the same string) cannot open a session of the linked task
    local = Client(border.b)
    since = mark(border.b)
    response = local.session(linked)
    refused(border.b, response, since=since, status=400, error="invalid_grant", reason=FED_AGENT)
    # and its own task works for it, with its own unprefixed name
    own = local.session(local_task["id"])
    assert own.status_code == 200 and claims_of(own.json()["access_token"])["sub"] == AGENT


def test_linked_task_is_listed_with_its_limits(border: Border) -> None:
    session, _ = _session_at_b(border, border.a_task(max_tokens=5)["id"])
    client, admin = admin_token(border.b)
    task = client.api("GET", f"/tasks/{claims_of(session)['txn']}", admin).json()
    assert task["max_tokens"] == 5 and task["agent"] == FED_AGENT and task["state"] == "active"


def test_discovery_lists_jwt_bearer_only_with_federation(border: Border) -> None:
    with httpx.Client(trust_env=False) as http:
        at_b = http.get(border.b.url + "/.well-known/oauth-authorization-server").json()
        at_a = http.get(border.a.url + "/.well-known/oauth-authorization-server").json()
    assert "urn:ietf:params:oauth:grant-type:jwt-bearer" in at_b["grant_types_supported"]
    assert "urn:ietf:params:oauth:grant-type:jwt-bearer" not in at_a["grant_types_supported"]
