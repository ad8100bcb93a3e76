"""The pure rules of ``tether vault oauth-connect`` (``tether.gateway.oauth_connect``), without I/O.

The authorization URL (RFC 6749 §4.1.1, RFC 7636 §4.2-4.3, RFC 8707), the callback checks
(state, repeated parameters, ``error=``), the token request's client authentication (RFC 6749
§2.3.1, RFC 7523 §2.2) and the token response (a refresh token or a refusal by its code only).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
from dataclasses import replace
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, OKPKey

from tether.gateway.oauth_config import OAuthCredentials
from tether.gateway.oauth_connect import (
    ASSERTION_SECONDS,
    ConnectRefused,
    callback_code,
    client_assertion,
    error_code,
    refresh_token_of,
    start,
    token_request,
)
from tether.urns import JWT_BEARER

# runs the same whatever TETHER_TEST_STORE says: the PostgreSQL pass of scripts/test leaves it out
pytestmark = pytest.mark.store_independent

OAUTH = OAuthCredentials(
    grant="refresh_token", token_endpoint="https://as.example/token", client_id="crm app", client_auth="client_secret_basic",
    scopes=("contacts.read", "notes.write"), authorization_endpoint="https://as.example/authorize?tenant=7",
    redirect_uri="http://127.0.0.1:8765/callback", client_secret="crm-secret", refresh_token="crm-rt",
)  # fmt: skip


def _counter() -> object:
    numbers = itertools.count()
    return lambda n: f"r{next(numbers)}-{n}-{'x' * 40}"


def test_authorization_url_carries_pkce_s256_state_and_keeps_the_endpoint_query() -> None:
    request = start(OAUTH, _counter())  # type: ignore[arg-type]
    parts = urlsplit(request.url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert parts.netloc == "as.example" and query["tenant"] == "7"
    expected = base64.urlsafe_b64encode(hashlib.sha256(request.verifier.encode()).digest()).rstrip(b"=").decode()
    assert query["code_challenge"] == expected and query["code_challenge_method"] == "S256"
    assert query["state"] == request.state != request.verifier
    assert query["response_type"] == "code" and query["client_id"] == "crm app" and query["redirect_uri"] == OAUTH.redirect_uri
    assert query["scope"] == "contacts.read notes.write"
    assert "nonce" not in query and "resource" not in query and request.nonce == ""


def test_nonce_only_with_openid_and_resource_when_configured() -> None:
    request = start(replace(OAUTH, scopes=("openid", "contacts.read"), resource="https://api.example"), _counter())  # type: ignore[arg-type]
    query = {k: v[0] for k, v in parse_qs(urlsplit(request.url).query).items()}
    assert query["nonce"] == request.nonce != "" and query["resource"] == "https://api.example"


@pytest.mark.parametrize("grant", ["client_credentials", "token_exchange"])
def test_other_grants_refused(grant: str) -> None:
    with pytest.raises(ConnectRefused) as refused:
        start(replace(OAUTH, grant=grant), _counter())  # type: ignore[arg-type]
    assert refused.value.error == "unsupported_grant_type"


def test_callback_code_once_state_matches() -> None:
    request = start(OAUTH, _counter())  # type: ignore[arg-type]
    assert callback_code(request, f"code=the-code&state={request.state}&iss=https%3A%2F%2Fas.example") == "the-code"


@pytest.mark.parametrize(
    ("query", "error", "says"),
    [
        ("code=c&state=forged", "invalid_request", "state does not match"),
        ("code=c", "invalid_request", "state does not match"),
        ("error=access_denied&state=forged", "invalid_request", "state does not match"),  # state first: a forged error
        ("code=c&code=d&state={state}", "invalid_request", "repeats a parameter"),
        ("code=c&state={state}&state={state}", "invalid_request", "repeats a parameter"),
        ("error=access_denied&state={state}", "access_denied", "error=access_denied"),
        ("error=%1B%5B2J%3Cb%3E&state={state}", "?[2J<b>", "error=?[2J<b>"),
        ("state={state}", "invalid_request", "no authorization code"),
        ("code=&state={state}", "invalid_request", "no authorization code"),
        ("code=a%0Ab&state={state}", "invalid_request", "no authorization code"),
        ("a=1&&=&state", "invalid_request", "malformed"),
    ],
)
def test_callback_refusals(query: str, error: str, says: str) -> None:
    request = start(OAUTH, _counter())  # type: ignore[arg-type]
    with pytest.raises(ConnectRefused) as refused:
        callback_code(request, query.format(state=request.state))
    assert refused.value.error == error and says in refused.value.description


def test_error_code_escaped_and_bounded() -> None:
    assert error_code("invalid_scope") == "invalid_scope"
    assert error_code('a"b\\c\x00\u00e9') == "a?b?c??"
    assert len(error_code("x" * 500)) == 64 and error_code("") == "invalid_request"


def test_token_request_client_secret_basic_is_form_urlencoded_first() -> None:
    request = start(OAUTH, _counter())  # type: ignore[arg-type]
    call = token_request(OAUTH, request, "the-code", client_secret="s+/=:&", now=1000.0, jti="j")
    assert call.form == {"grant_type": "authorization_code", "code": "the-code", "redirect_uri": OAUTH.redirect_uri,
                         "code_verifier": request.verifier}  # fmt: skip
    scheme, _, encoded = call.authorization.partition(" ")
    user, _, password = base64.b64decode(encoded).decode().partition(":")
    assert scheme == "Basic" and (unquote(user), unquote(password)) == ("crm app", "s+/=:&") and ":" not in password


def test_token_request_post_none_and_resource() -> None:
    request = start(OAUTH, _counter())  # type: ignore[arg-type]
    post = token_request(replace(OAUTH, client_auth="client_secret_post", resource="https://api.example"), request, "c",
                         client_secret="s", now=0.0, jti="j")  # fmt: skip
    assert post.authorization == "" and post.form["client_id"] == "crm app" and post.form["client_secret"] == "s"
    assert post.form["resource"] == "https://api.example"
    public = token_request(replace(OAUTH, client_auth="none", client_secret=""), request, "c", now=0.0, jti="j")
    assert public.authorization == "" and public.form["client_id"] == "crm app" and "client_secret" not in public.form


@pytest.mark.parametrize("key", [ECKey.generate_key("P-256"), OKPKey.generate_key("Ed25519")], ids=["ES256", "Ed25519"])
def test_private_key_jwt_assertion(key: ECKey | OKPKey) -> None:
    private = json.dumps(dict(key.as_dict(private=True)) | {"kid": "k1"})
    request = start(OAUTH, _counter())  # type: ignore[arg-type]
    call = token_request(replace(OAUTH, client_auth="private_key_jwt", client_secret="", private_key="k"), request, "c",
                         private_jwk=private, now=1000.5, jti="jti-1")  # fmt: skip
    assert call.form["client_assertion_type"] == JWT_BEARER and call.form["client_id"] == "crm app"
    token = jwt.decode(call.form["client_assertion"], key, algorithms=["ES256", "Ed25519"])
    assert token.header["kid"] == "k1" and token.header["alg"] in ("ES256", "Ed25519")
    assert token.claims == {"iss": "crm app", "sub": "crm app", "aud": OAUTH.token_endpoint, "iat": 1000,
                            "exp": 1000 + ASSERTION_SECONDS, "jti": "jti-1"}  # fmt: skip


@pytest.mark.parametrize(
    "vaulted",
    [
        "not json",
        "[1, 2]",
        json.dumps(dict(ECKey.generate_key("P-256").as_dict(private=False))),  # a public key signs nothing
        json.dumps(dict(OctKey.generate_key(256).as_dict(private=True))),  # a shared key is not private_key_jwt
    ],
    ids=["text", "list", "public", "oct"],
)
def test_private_key_jwt_bad_vaulted_key_refused(vaulted: str) -> None:
    with pytest.raises(ConnectRefused) as refused:
        client_assertion(vaulted, "crm app", OAUTH.token_endpoint, now=0.0, jti="j")
    assert refused.value.error == "invalid_client" and vaulted not in refused.value.description


def test_refresh_token_of_a_good_answer() -> None:
    body = json.dumps({"access_token": "at", "token_type": "Bearer", "refresh_token": "rt-0123456789abcdef"}).encode()
    assert refresh_token_of(200, body) == "rt-0123456789abcdef"


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (400, b'{"error": "invalid_grant", "error_description": "secret-ish detail"}', "invalid_grant"),
        (401, b'{"error": "invalid_client"}', "invalid_client"),
        (400, b'{"error": "bad\\u001b[31m"}', "bad?[31m"),
        (502, b"<html>proxy error with at-SECRET</html>", "invalid_request"),
        (200, b'{"access_token": "at-SECRET", "token_type": "Bearer"}', "invalid_grant"),
        (200, b'{"access_token": "at-SECRET", "refresh_token": ""}', "invalid_grant"),
        (200, b'{"refresh_token": "rt-SECRET\\n"}', "invalid_grant"),
        (200, b"[1]", "invalid_request"),
        (200, b"at-SECRET", "invalid_request"),
        (200, b'{"refresh_token": "' + b"x" * 70000 + b'"}', "invalid_request"),
    ],
)
def test_refresh_token_of_refusals_never_echo_the_body(status: int, body: bytes, error: str) -> None:
    with pytest.raises(ConnectRefused) as refused:
        refresh_token_of(status, body)
    assert refused.value.error == error
    assert "SECRET" not in refused.value.description and "detail" not in refused.value.description
