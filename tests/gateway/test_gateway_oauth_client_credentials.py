"""Gateway OAuth routes with client_credentials against a real OAuth server (FED-04).

The upstream API trusts a token only as the server's introspection describes it, so a call that
succeeds proves the gateway obtained a real token: with client_secret_basic, client_secret_post
or private_key_jwt (RFC 7523 §2.2), for the narrowest scope the call's allow rule names, reused
within the task and never across tasks, and never seen by the agent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from oauthkit import OAuthEnv, serve_oauth_env

from tether.gateway.oauth_tokens import token_digest


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthEnv]:
    with serve_oauth_env(tmp_path_factory.mktemp("gwoauth")) as running:
        yield running


@pytest.mark.parametrize("route", ["crm", "post", "jwt"])
def test_fed04_each_client_authentication_gets_a_token_the_upstream_accepts(env: OAuthEnv, route: str) -> None:
    caller = env.caller(route)
    response = caller.get(route, "/contacts/7")
    assert response.status_code == 200, response.text
    [token] = env.api.tokens("/contacts/7")[-1:]
    seen = env.server.introspect(token)
    assert seen["active"] is True and seen["client_id"] == {"crm": "gw-basic", "post": "gw-post", "jwt": "gw-jwt"}[route]
    assert seen["aud"] == env.api.url  # the route's RFC 8707 resource


def test_fed04_each_call_gets_the_narrowest_scope_its_rule_allows(env: OAuthEnv) -> None:
    caller = env.caller("crm")
    assert caller.get("crm", "/contacts/1").status_code == 200
    assert caller.call("POST", "crm", "/notes", json={"text": "hi"}).status_code == 200
    assert caller.get("crm", "/me").status_code == 200  # no call_scopes for it: the route's scopes
    read, write, me = (env.api.tokens(p)[-1] for p in ("/contacts/1", "/notes", "/me"))
    assert env.server.introspect(read)["scope"] == "contacts.read"
    assert env.server.introspect(write)["scope"] == "notes.write"
    assert sorted(env.server.introspect(me)["scope"].split()) == ["contacts.read", "notes.write"]
    assert len({read, write, me}) == 3


def test_fed04_a_token_is_reused_within_a_task_and_never_across_tasks(env: OAuthEnv) -> None:
    first, second = env.caller("crm"), env.caller("crm")
    for caller in (first, first, first, second):
        assert caller.get("crm", "/contacts/2").status_code == 200
    tokens = env.api.tokens("/contacts/2")[-4:]
    assert tokens[0] == tokens[1] == tokens[2] and tokens[3] != tokens[0]
    fetched = env.audit("gateway.oauth.token", first.task["id"])
    assert len(fetched) == 1 and fetched[0].detail["token"] == token_digest(tokens[0])
    assert fetched[0].detail["scope"] == "contacts.read" and fetched[0].detail["route"] == "crm"


def test_fed04_the_agent_never_sees_the_upstream_token_even_when_echoed(env: OAuthEnv) -> None:
    caller = env.caller("crm")
    response = caller.get("crm", "/echo/auth")
    assert response.status_code == 200
    [token] = env.api.tokens("/echo/auth")[-1:]
    assert response.json() == {"you_sent": "[REDACTED]", "token": "[REDACTED]"}  # the whole injected header too
    assert response.json()["token"] == "[REDACTED]" and response.headers["x-echo-auth"] == "[REDACTED]"
    assert token.encode() not in caller.transport.everything()


def test_fed04_the_client_secret_is_scrubbed_if_an_upstream_echoes_it(env: OAuthEnv) -> None:
    caller = env.caller("crm")
    env.api.leak = env.secrets["gw-basic"]
    try:
        response = caller.get("crm", "/echo/leak")
    finally:
        env.api.leak = ""
    assert response.status_code == 200 and response.json() == {"leak": "[REDACTED]"}
    assert env.secrets["gw-basic"].encode() not in caller.transport.everything()


def test_fed04_no_upstream_token_or_secret_in_the_audit(env: OAuthEnv) -> None:
    caller = env.caller("crm")
    assert caller.get("crm", "/contacts/3").status_code == 200
    token = env.api.tokens("/contacts/3")[-1]
    records = repr([(r.kind, r.detail) for r in env.gw.sts.audit()])
    assert token not in records and env.secrets["gw-basic"] not in records
    assert token_digest(token) in records


def test_fed04_a_call_outside_the_allowlist_gets_no_token(env: OAuthEnv) -> None:
    caller = env.caller("crm")
    response = caller.call("DELETE", "crm", "/contacts/1")
    assert response.status_code == 403, response.text
    assert env.audit("gateway.oauth.token", caller.task["id"]) == []


def test_fed04_concurrent_calls_of_one_task_share_one_fetch(env: OAuthEnv) -> None:
    caller = env.caller("post")
    with ThreadPoolExecutor(max_workers=5) as pool:
        statuses = list(pool.map(lambda _: caller.get("post", "/contacts/9").status_code, range(5)))
    assert statuses == [200] * 5
    assert len(env.audit("gateway.oauth.token", caller.task["id"])) == 1
    assert len(set(env.api.tokens("/contacts/9")[-5:])) == 1


def test_fed04_no_upstream_token_in_any_log_line(env: OAuthEnv, caplog: pytest.LogCaptureFixture) -> None:
    caller = env.caller("jwt")
    with caplog.at_level(logging.DEBUG):
        assert caller.get("jwt", "/echo/auth").status_code == 200
        assert caller.get("jwt", "/contacts/10").status_code == 200
    token = env.api.tokens("/echo/auth")[-1]
    assert caplog.records and token not in caplog.text
    assert env.key["d"] not in caplog.text  # nor the private key the assertion was signed with
