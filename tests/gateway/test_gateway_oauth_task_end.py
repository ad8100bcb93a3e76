"""Upstream OAuth tokens never outlive the task (FED-04): dropped and revoked (RFC 7009) when it ends.

Completing a task reaches the gateway through the revocation feed it follows; every upstream
access token the task got is revoked at the route's revocation endpoint (the server's own
introspection then says inactive), audited without the token, and a new call is refused. The
route's refresh token is the route's, not the task's: it survives. A token is also never used
past the upstream's ``expires_in`` (less a margin). The server here issues 30-second tokens.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gwkit import wait_until
from oauthkit import OAuthEnv, introspect_many, serve_oauth_env

from tether.gateway.oauth_tokens import token_digest

TTL = 30


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthEnv]:
    with serve_oauth_env(tmp_path_factory.mktemp("gwoauth-end"), ttl={"access_token": TTL}) as running:
        yield running


def _revoked(env: OAuthEnv, task: str, route: str) -> list[object]:
    return [r for r in env.audit("gateway.oauth.revoked", task) if r.detail["route"] == route]


def test_fed04_task_end_revokes_every_upstream_token_and_refuses_new_calls(env: OAuthEnv) -> None:
    caller = env.caller("crm")
    assert caller.get("crm", "/contacts/1").status_code == 200
    assert caller.call("POST", "crm", "/notes", json={}).status_code == 200
    tokens = [env.api.tokens("/contacts/1")[-1], env.api.tokens("/notes")[-1]]
    assert introspect_many(env.server, tokens) == [True, True]
    hop = caller.token(env.gw.aud("crm"))
    caller.complete()
    task = caller.task["id"]
    wait_until(lambda: bool(_revoked(env, task, "crm")), what="the revocation record")
    [record] = _revoked(env, task, "crm")
    assert record.outcome == "ok" and record.detail["count"] == 2 and record.detail["revoked"] == 2  # type: ignore[attr-defined]
    assert sorted(record.detail["tokens"]) == sorted(token_digest(t) for t in tokens)  # type: ignore[attr-defined]
    assert record.detail["reason"] == "task ended"  # type: ignore[attr-defined]
    assert introspect_many(env.server, tokens) == [False, False]  # dead at the upstream's own server
    seen = len(env.api.seen)
    refused = caller.manual("GET", env.gw.aud("crm") + "/contacts/1", hop)  # the task's hop token, still unexpired
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_token"
    assert len(env.api.seen) == seen  # nothing reached the upstream


def test_fed04_the_refresh_token_survives_task_end(env: OAuthEnv) -> None:
    """oidc-provider revokes a grant's refresh token with any of its access tokens (RFC 7009 §2.1 allows
    it): a refresh_token route therefore drops its tokens at task end without revoking them (by default)."""
    caller = env.caller("rt")
    assert caller.get("rt", "/contacts/5").status_code == 200
    hop = caller.token(env.gw.aud("rt"))
    caller.complete()
    wait_until(lambda: bool(_revoked(env, caller.task["id"], "rt")), what="the drop record")
    [record] = _revoked(env, caller.task["id"], "rt")
    assert record.outcome == "not_revoked" and record.detail["count"] == 1  # type: ignore[attr-defined]
    refresh, _ = env.vault("web-refresh")
    assert env.server.introspect(refresh)["active"] is True  # the route's, not the task's
    assert caller.manual("GET", env.gw.aud("rt") + "/contacts/5", hop).status_code == 401
    assert env.caller("rt").get("rt", "/contacts/5").status_code == 200  # and the next task still works


def test_fed04_without_a_revocation_endpoint_tokens_are_dropped_and_that_is_audited(env: OAuthEnv) -> None:
    caller = env.caller("noisy")
    assert caller.get("noisy", "/contacts/6").status_code == 200
    caller.complete()
    wait_until(lambda: bool(_revoked(env, caller.task["id"], "noisy")), what="the drop record")
    [record] = _revoked(env, caller.task["id"], "noisy")
    assert record.outcome == "not_revoked" and record.detail["count"] == 1  # type: ignore[attr-defined]


def test_fed04_a_token_is_not_used_past_the_upstreams_expiry(env: OAuthEnv) -> None:
    caller = env.caller("crm")
    assert caller.get("crm", "/contacts/8").status_code == 200
    assert caller.get("crm", "/contacts/8").status_code == 200
    first = env.api.tokens("/contacts/8")[-1]
    clock = env.gw.sts.clock
    clock.advance(TTL - 2)  # past expires_in less the margin, still within the hop token and proof windows
    try:
        wait_until(lambda: env.gw.gateway.feed.fresh(clock.now()), what="the feed, heard at the new time")
        assert caller.get("crm", "/contacts/8").status_code == 200
    finally:
        clock.advance(-(TTL - 2))
    second = env.api.tokens("/contacts/8")[-1]
    assert second != first
    assert len(env.audit("gateway.oauth.token", caller.task["id"])) == 2
