"""The OAuth server fixture (tests/interop/oauth_as.mjs) does what the gateway and oauth-connect tests rely on.

Plain httpx against the real node ``oidc-provider``: client_credentials with each client authentication
(RFC 6749 §2.3.1, RFC 7523 §2.2), per-client scope ceilings, RFC 7662 introspection, RFC 7009 revocation,
authorization code + PKCE S256 (RFC 7636) with rotating refresh tokens, and the RFC 8693 exchange grant.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from oauthaskit import JWT_TOKEN_TYPE, TOKEN_EXCHANGE, OAuthServer, authorize, client_assertion, client_key, pkce, signed_jwt

REDIRECT = "http://127.0.0.1:8765/callback"
KEY, JWKS = client_key()
OTHER_KEY, _ = client_key("other")
CLIENTS: list[dict[str, Any]] = [
    {"client_id": "basic", "client_secret": "basic-secret", "auth": "client_secret_basic"},
    {"client_id": "post", "client_secret": "post-secret", "auth": "client_secret_post"},
    {"client_id": "narrow", "client_secret": "narrow-secret", "scope": "contacts.read"},
    {"client_id": "signed", "auth": "private_key_jwt", "jwks": JWKS},
    {"client_id": "web", "client_secret": "web-secret", "redirect_uris": [REDIRECT]},
    {"client_id": "norefresh", "client_secret": "nr-secret", "redirect_uris": [REDIRECT], "refresh": False},
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthServer]:
    with OAuthServer.run(tmp_path_factory.mktemp("as"), clients=CLIENTS) as running:
        yield running


def _ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text[:300]
    body: dict[str, Any] = response.json()
    return body


def _code_flow(server: OAuthServer, client_id: str, secret: str, scope: str = "contacts.read") -> dict[str, Any]:
    verifier, challenge = pkce()
    state = secrets.token_urlsafe(16)
    query = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "scope": scope, "state": state,
             "code_challenge": challenge, "code_challenge_method": "S256"}  # fmt: skip
    callback = authorize(f"{server.authorization_endpoint}?{urlencode(query)}", REDIRECT)
    assert isinstance(callback, str)
    params = parse_qs(urlsplit(callback).query)
    assert params["state"] == [state]
    form = {"grant_type": "authorization_code", "code": params["code"][0], "redirect_uri": REDIRECT,
            "code_verifier": verifier}  # fmt: skip
    return _ok(server.token(form, auth=(client_id, secret)))


def test_client_credentials_basic_narrow_scope_introspected(server: OAuthServer) -> None:
    body = _ok(server.token({"grant_type": "client_credentials", "scope": "contacts.read"}, auth=("basic", "basic-secret")))
    assert body["scope"] == "contacts.read" and body["token_type"] == "Bearer" and body["expires_in"] > 0
    seen = server.introspect(body["access_token"])
    assert seen["active"] is True and seen["client_id"] == "basic" and seen["scope"] == "contacts.read"
    assert seen["aud"] == "urn:tether:upstream"


def test_client_credentials_post_and_wrong_secret_refused(server: OAuthServer) -> None:
    form = {"grant_type": "client_credentials", "scope": "notes.write", "client_id": "post"}
    assert _ok(server.token(form | {"client_secret": "post-secret"}))["scope"] == "notes.write"
    refused = server.token(form | {"client_secret": "wrong"})
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"


def test_scope_beyond_client_ceiling_refused(server: OAuthServer) -> None:
    refused = server.token({"grant_type": "client_credentials", "scope": "notes.write"}, auth=("narrow", "narrow-secret"))
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_scope"


def test_private_key_jwt_and_foreign_key_refused(server: OAuthServer) -> None:
    form = {"grant_type": "client_credentials", "scope": "contacts.read", "client_id": "signed",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}  # fmt: skip
    good = form | {"client_assertion": client_assertion(KEY, "signed", server.token_endpoint)}
    assert server.introspect(_ok(server.token(good))["access_token"])["active"] is True
    bad = form | {"client_assertion": client_assertion(OTHER_KEY, "signed", server.token_endpoint)}
    refused = server.token(bad)
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"


def test_revocation_makes_token_inactive(server: OAuthServer) -> None:
    token = _ok(server.token({"grant_type": "client_credentials", "scope": "contacts.read"}, auth=("basic", "basic-secret")))
    assert server.introspect(token["access_token"])["active"] is True
    revoked = server.http.post(server.revocation_endpoint, data={"token": token["access_token"],
                               "token_type_hint": "access_token"}, auth=("basic", "basic-secret"))  # fmt: skip
    assert revoked.status_code == 200
    assert server.introspect(token["access_token"]) == {"active": False}


def test_code_flow_refresh_rotates_and_old_refresh_token_dies(server: OAuthServer) -> None:
    first = _code_flow(server, "web", "web-secret")
    assert first["scope"] == "contacts.read" and server.introspect(first["access_token"])["sub"] == "alice"
    second = _ok(server.refresh(first["refresh_token"], "web", "web-secret"))
    assert second["refresh_token"] != first["refresh_token"]
    assert server.introspect(second["access_token"])["scope"] == "contacts.read"
    assert server.introspect(first["refresh_token"]) == {"active": False}
    assert server.introspect(second["refresh_token"])["active"] is True
    reused = server.refresh(first["refresh_token"], "web", "web-secret")
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    # reuse detection (Security BCP §4.14.2): the replay killed the whole grant, the newest refresh token too
    assert server.introspect(second["refresh_token"]) == {"active": False}


def test_code_flow_requires_pkce(server: OAuthServer) -> None:
    query = {"response_type": "code", "client_id": "web", "redirect_uri": REDIRECT, "scope": "contacts.read", "state": "s"}
    callback = authorize(f"{server.authorization_endpoint}?{urlencode(query)}", REDIRECT)
    assert isinstance(callback, str)
    assert parse_qs(urlsplit(callback).query)["error"] == ["invalid_request"]


def test_client_without_refresh_gets_no_refresh_token(server: OAuthServer) -> None:
    body = _code_flow(server, "norefresh", "nr-secret")
    assert "refresh_token" not in body and server.introspect(body["access_token"])["active"] is True


def _exchange(server: OAuthServer, subject: str, scope: str = "contacts.read") -> Any:
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": subject, "subject_token_type": JWT_TOKEN_TYPE, "scope": scope,
            "client_id": "signed", "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": client_assertion(KEY, "signed", server.token_endpoint)}  # fmt: skip
    return server.token(form)


def _subject(server: OAuthServer, key: dict[str, Any] = KEY, lifetime: int = 60) -> str:
    now = int(time.time())
    claims = {"iss": "signed", "aud": server.token_endpoint, "sub": "agent-7", "iat": now, "exp": now + lifetime,
              "jti": secrets.token_urlsafe(12), "task": "task-42"}  # fmt: skip
    return signed_jwt(key, claims)


def test_token_exchange_issues_token_for_subject(server: OAuthServer) -> None:
    body = _ok(_exchange(server, _subject(server)))
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token" and body["scope"] == "contacts.read"
    seen = server.introspect(body["access_token"])
    assert seen["active"] is True and seen["sub"] == "agent-7" and seen["act"] == {"sub": "signed"}
    assert seen["subject_claims"] == {"task": "task-42"}


def test_token_exchange_refuses_replay_foreign_key_and_wide_scope(server: OAuthServer) -> None:
    subject = _subject(server)
    _ok(_exchange(server, subject))
    replayed = _exchange(server, subject)
    assert replayed.status_code == 400 and replayed.json()["error"] == "invalid_grant"
    foreign = _exchange(server, _subject(server, OTHER_KEY))
    assert foreign.status_code == 400 and foreign.json()["error"] == "invalid_grant"
    long_lived = _exchange(server, _subject(server, lifetime=600))
    assert long_lived.status_code == 400 and long_lived.json()["error"] == "invalid_grant"
    wide = _exchange(server, _subject(server), scope="contacts.read admin")
    assert wide.status_code == 400 and wide.json()["error"] == "invalid_scope"
