"""Review of the border (rvfed): the ``fed:`` namespace belongs to linked tasks alone (FED-02).

A local orchestrator (an admin token at B) must not create a task whose agent or subject is a
federation peer's principal: no local workload can own such a name, and a task on behalf of
``fed:a/user:alice`` would let B's own agent carry A's user as ``sub`` to B's resources — a
foreign principal B never verified. Refused with ``invalid_request``, audited, nothing created.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fedinkit import AGENT, WIKI_B, Border, mark, two_domains

from helpers import admin_token


@pytest.fixture(scope="module")
def border(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Border]:
    with two_domains(tmp_path_factory.mktemp("names")) as pair:
        yield pair


@pytest.mark.parametrize(
    "fields",
    [
        {"agent": f"fed:a/{AGENT}"},  # the peer's admitted agent, as a linked task would name it
        {"agent": "fed:zz/k8s:ns/sa"},  # a peer that is not even configured
        {"agent": AGENT, "on_behalf_of": "fed:a/user:alice"},  # B's agent speaking for A's user
        {"agent": "FED:a/spiffe://tether.local/agent/research"},  # the scheme is case-insensitive
    ],
)
def test_fed02_a_local_orchestrator_cannot_create_a_task_in_a_peer_namespace(border: Border, fields: dict[str, Any]) -> None:
    client, token = admin_token(border.b)
    since = mark(border.b)
    response = client.api("POST", "/tasks", token, json={"audiences": [WIKI_B], "scopes": ["wiki:read"], **fields})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_request" and "fed:" in body["error_description"], body
    assert not [r for r in border.b.audit() if r.seq > since and r.kind == "task.created"]


def test_fed02_a_local_task_without_peer_names_is_still_created(border: Border) -> None:
    client, token = admin_token(border.b)
    body = {"agent": AGENT, "on_behalf_of": "user:fed-team", "audiences": [WIKI_B], "scopes": ["wiki:read"]}
    assert client.api("POST", "/tasks", token, json=body).status_code == 201
