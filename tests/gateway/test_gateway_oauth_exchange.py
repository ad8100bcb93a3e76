"""Token exchange at the upstream (RFC 8693 §2.1): the gateway asks for a token *for the agent and its task*.

The subject token is a short JWT the gateway signs with the route's private key (the one the
upstream registered for the client): ``iss`` the client, ``sub`` the agent, ``task`` and
``route``, a fresh ``jti``. The node server checks all of it (signature by the client's
registered key, audience, age, replay) and its introspection shows who the token is for.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gwkit import wait_until
from oauthkit import OAuthEnv, serve_oauth_env

from helpers import AGENT


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthEnv]:
    with serve_oauth_env(tmp_path_factory.mktemp("gwoauth-x")) as running:
        yield running


def test_fed04_the_upstream_token_names_the_agent_and_the_task(env: OAuthEnv) -> None:
    caller = env.caller("x")
    response = caller.get("x", "/contacts/4")
    assert response.status_code == 200, response.text
    assert response.json()["sub"] == AGENT
    seen = env.server.introspect(env.api.tokens("/contacts/4")[-1])
    assert seen["active"] is True and seen["sub"] == AGENT and seen["act"] == {"sub": "gw-x"}
    assert seen["subject_claims"] == {"task": caller.task["id"], "route": "x"}
    assert seen["scope"] == "contacts.read"


def test_fed04_each_task_gets_its_own_exchanged_token(env: OAuthEnv) -> None:
    first, second = env.caller("x"), env.caller("x")
    for caller in (first, first, second):
        assert caller.get("x", "/contacts/5").status_code == 200
    tokens = env.api.tokens("/contacts/5")[-3:]
    assert tokens[0] == tokens[1] != tokens[2]
    claims = [env.server.introspect(t)["subject_claims"]["task"] for t in (tokens[0], tokens[2])]
    assert claims == [first.task["id"], second.task["id"]]


def test_fed04_exchanged_tokens_are_revoked_at_task_end(env: OAuthEnv) -> None:
    caller = env.caller("x")
    assert caller.get("x", "/contacts/6").status_code == 200
    token = env.api.tokens("/contacts/6")[-1]
    caller.complete()
    wait_until(lambda: bool(env.audit("gateway.oauth.revoked", caller.task["id"])), what="the revocation record")
    assert env.server.introspect(token) == {"active": False}
