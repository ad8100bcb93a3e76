"""Refresh-token routes: the vaulted refresh token is rotated as the upstream rotates it (RFC 6749 §10.4, FED-04).

The server (node oidc-provider) rotates the refresh token on every use and, on reuse of an old
one, kills the whole grant (RFC 9700 §4.14.2). So a route that works across concurrent tasks
proves the refreshes were single-flight and each new refresh token was sealed into the vault
before the next refresh read it.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from oauthkit import OAuthEnv, serve_oauth_env


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthEnv]:
    with serve_oauth_env(tmp_path_factory.mktemp("gwoauth-rt")) as running:
        yield running


def test_fed04_a_rotated_refresh_token_is_sealed_and_the_old_one_is_dead(env: OAuthEnv) -> None:
    before, version = env.vault("web-refresh")
    caller = env.caller("rt")
    response = caller.get("rt", "/contacts/1")
    assert response.status_code == 200, response.text
    after, new_version = env.vault("web-refresh")
    assert after != before and new_version == version + 1
    assert env.server.introspect(before) == {"active": False}  # the server refuses the old one
    assert env.server.introspect(after)["active"] is True
    rotated = [r for r in env.audit("vault.rotated") if r.detail["name"] == "web-refresh"]
    assert rotated and rotated[-1].principal == "gateway:rt" and rotated[-1].detail["version"] == new_version
    assert after not in repr([(r.kind, r.detail) for r in env.gw.sts.audit()])
    assert env.server.introspect(env.api.tokens("/contacts/1")[-1])["scope"] == "contacts.read"  # narrowed (§6)


def test_fed04_concurrent_tasks_refresh_one_at_a_time(env: OAuthEnv) -> None:
    callers = [env.caller("rt") for _ in range(6)]
    _, version = env.vault("web-refresh")
    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(lambda c: c.get("rt", "/contacts/2").status_code, callers))
    assert statuses == [200] * 6
    latest, new_version = env.vault("web-refresh")
    assert new_version == version + 6  # one refresh per task, each rotated and sealed
    assert env.server.introspect(latest)["active"] is True  # no refresh token was ever presented twice


def test_fed04_the_refresh_token_never_reaches_the_agent_even_if_echoed(env: OAuthEnv) -> None:
    caller = env.caller("rt")
    assert caller.get("rt", "/contacts/3").status_code == 200
    current, _ = env.vault("web-refresh")
    env.api.leak = current
    try:
        response = caller.get("rt", "/echo/leak")
    finally:
        env.api.leak = ""
    assert response.status_code == 200 and response.json() == {"leak": "[REDACTED]"}
    assert current.encode() not in caller.transport.everything()
