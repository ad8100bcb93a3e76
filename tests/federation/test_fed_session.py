"""A's agent crosses into B within the ceiling (issue 19; SECURITY FED-01, FED-02).

A issues its agent a hop token for B's issuer; B accepts it as an RFC 7523 jwt-bearer grant or
an RFC 8693 subject token, opens a linked task no wider than A's task has left and the ceiling,
and issues a session bound to the same key, with A's chain namespaced.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fedinkit import AGENT, WIKI_B, Border, claims_of, mark, two_domains

from helpers import Client


@pytest.fixture(scope="module")
def border(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Border]:
    with two_domains(tmp_path_factory.mktemp("border")) as pair:
        yield pair


def _linked_task(border: Border, task_id: str) -> dict[str, object]:
    client = Client(border.b)
    from helpers import admin_token

    _, token = admin_token(border.b, client)
    response = client.api("GET", f"/tasks/{task_id}", token)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_fed01_jwt_bearer_gives_a_session_of_a_linked_task_within_the_ceiling(border: Border) -> None:
    a_task = border.a_task(max_depth=3, max_tokens=50)
    foreign, key = border.hop_to_b(a_task["id"])
    foreign_claims = claims_of(foreign)
    assert foreign_claims["tsk"] == {"exp": a_task["expires_at"], "depth": 3, "tokens": 50}
    since = mark(border.b)
    response = border.cross(border.at_b(key), foreign)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "DPoP" and body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    claims = claims_of(body["access_token"])
    assert claims["iss"] == border.b.url and claims["aud"] == border.b.url
    assert claims["cnf"] == {"jkt": key.jkt}
    assert claims["sub"] == claims["client_id"] == claims["agt"] == f"fed:a/{AGENT}"
    assert claims["ckd"] == "federated" and claims["ctd"] == "a"
    assert claims["exp"] <= foreign_claims["exp"]
    assert set(body["scope"].split()) == {"wiki:read", "wiki:write"}
    linked = _linked_task(border, claims["txn"])
    assert linked["agent"] == f"fed:a/{AGENT}" and linked["created_by"] == "federation:a"
    assert linked["audiences"] == [WIKI_B]
    assert linked["expires_at"] <= a_task["expires_at"] and linked["expires_at"] <= border.clock.now() + 600
    assert linked["max_tokens"] == 20  # min(ceiling 20, A's 50)
    assert linked["max_depth"] == 2  # min(ceiling 2, 0 + 3 - 1)
    assert claims["tsk"] == {"exp": linked["expires_at"], "depth": 2, "tokens": 20}
    records = [r for r in border.b.audit() if r.seq > since]
    link = next(r for r in records if r.kind == "federation.linked")
    assert link.detail["foreign_task"] == a_task["id"] and link.detail["joined"] is False
    issued = next(r for r in records if r.kind == "token.issued")
    assert issued.task == claims["txn"]
    assert issued.detail["foreign"] == {
        "iss": border.a.url, "jti": foreign_claims["jti"], "txn": a_task["id"], "peer": "a"
    }  # fmt: skip
