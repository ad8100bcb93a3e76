"""Cedar at B sees the foreign principal (issue 19): kind "federated", its trust domain (the peer's
name), the chain with namespaced names, and the peer's issuer — and a forbid on any of them
refuses the exchange with ``access_denied``, audited with the policy that decided."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fedinkit import WIKI_B, Border, mark, refused, two_domains

from helpers import Client

LEDGER_B = "http://127.0.0.1:9102"
MALLORY = "spiffe://tether.local/agent/mallory"
POLICIES = f"""
@id("peer-a-never-to-the-ledger")
forbid (principal, action == Tether::Action::"exchange", resource == Tether::Service::"{LEDGER_B}")
when {{ principal.kind == "federated" && principal.trust_domain == "a" && context.foreign_issuer != "" }};

@id("no-chain-through-mallory")
forbid (principal, action == Tether::Action::"exchange", resource)
when {{ context.actors.contains("fed:a/{MALLORY}") }};
"""


@pytest.fixture(scope="module")
def border(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Border]:
    with two_domains(tmp_path_factory.mktemp("policy"), b_federation={"audiences": [WIKI_B, LEDGER_B]},
                     b_policies={"50-federation.cedar": POLICIES}) as pair:  # fmt: skip
        yield pair


def test_fed02_a_policy_on_the_peers_trust_domain_refuses_one_audience(border: Border) -> None:
    foreign, key = border.hop_to_b(border.a_task()["id"])
    client = border.at_b(key)
    session = border.cross(client, foreign).json()["access_token"]
    assert client.hop(session, WIKI_B).status_code == 200
    since = mark(border.b)
    record = refused(border.b, client.hop(session, LEDGER_B), since=since, status=403, error="access_denied",
                     reason="peer-a-never-to-the-ledger")  # fmt: skip
    assert record.principal == "fed:a/spiffe://tether.local/agent/research"


def test_fed02_a_policy_on_the_foreign_chain_refuses_the_crossing(border: Border) -> None:
    task = border.a_task(agent=MALLORY, on_behalf_of="user:bob", max_depth=3)
    client = Client(border.a)
    session = client.session(task["id"], svid=border.a.svid(MALLORY)).json()["access_token"]
    foreign = client.hop(session, border.b.url).json()["access_token"]
    since = mark(border.b)
    response = border.cross(border.at_b(client.key), foreign)
    refused(border.b, response, since=since, status=403, error="access_denied", reason="no-chain-through-mallory",
            secrets=(foreign,))  # fmt: skip
    # refused before anything was written: no linked task, and the token is not spent
    assert not [r for r in border.b.audit() if r.seq > since and r.kind == "federation.linked"]
