"""The pure pieces of gateway OAuth: reading token responses (RFC 6749 §5) and signing JWTs (RFC 7523, RFC 8693).

A token response is read strictly and only a typed refusal with a fixed description leaves:
the upstream's description and body never do, since they may echo the client's credentials.
The route's private key signs with the one algorithm its type allows; a symmetric or public
key, or a small RSA key, is refused without showing the value.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

from tether.gateway.oauth_assertion import client_assertion, load_signing_key, subject_token
from tether.gateway.oauth_wire import (
    DEFAULT_EXPIRES_IN,
    TokenRefused,
    TokenUnavailable,
    basic_authorization,
    parse_token_response,
    wider_than,
)
from tether.gateway.vault import SecretRefused
from tether.rules.jws import VerifiedJWS, verify_compact

# runs the same whatever TETHER_TEST_STORE says: the PostgreSQL pass of scripts/test leaves it out
pytestmark = pytest.mark.store_independent

GOOD = {"access_token": "at-0123456789abcdef", "token_type": "Bearer", "expires_in": 300, "scope": "contacts.read"}


def _parse(body: Any, status: int = 200, requested: tuple[str, ...] = ("contacts.read",)) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_token_response(status, raw, requested=requested, route="crm")


def test_a_good_response_is_read() -> None:
    token = _parse(GOOD)
    assert (token.access_token, token.expires_in, token.scope, token.refresh_token) == (
        "at-0123456789abcdef",
        300,
        ("contacts.read",),
        None,
    )
    assert _parse({**GOOD, "token_type": "bearer", "expires_in": "60"}).expires_in == 60  # §7.1: case-insensitive
    assert _parse({k: v for k, v in GOOD.items() if k != "expires_in"}).expires_in == DEFAULT_EXPIRES_IN
    assert _parse({k: v for k, v in GOOD.items() if k != "scope"}).scope == ("contacts.read",)  # §5.1: as requested
    assert _parse({**GOOD, "refresh_token": "rt-0123456789abcdef"}).refresh_token == "rt-0123456789abcdef"


@pytest.mark.parametrize(("body", "status", "kind"), [
    (GOOD, 500, TokenUnavailable),
    (GOOD, 302, TokenUnavailable),
    (b"<html>oops</html>", 200, TokenUnavailable),
    ([GOOD], 200, TokenUnavailable),
    ({**GOOD, "access_token": ""}, 200, TokenUnavailable),
    ({**GOOD, "access_token": "a b"}, 200, TokenUnavailable),
    ({**GOOD, "access_token": "at\r\nX-Injected: 1"}, 200, TokenUnavailable),  # header injection
    ({**GOOD, "access_token": 42}, 200, TokenUnavailable),
    ({**GOOD, "token_type": "mac"}, 200, TokenUnavailable),
    ({**GOOD, "token_type": "DPoP"}, 200, TokenUnavailable),  # the gateway injects it as a bearer token
    ({**GOOD, "expires_in": 0}, 200, TokenUnavailable),
    ({**GOOD, "expires_in": True}, 200, TokenUnavailable),
    ({**GOOD, "scope": "a  b"}, 200, TokenUnavailable),
    ({**GOOD, "refresh_token": ""}, 200, TokenUnavailable),
    ({"error": "invalid_client", "error_description": "secret s3cr3t is wrong"}, 401, TokenRefused),
    ({"error": "invalid_grant"}, 400, TokenRefused),
])  # fmt: skip
def test_a_bad_response_is_a_typed_refusal_with_a_fixed_description(body: Any, status: int, kind: type) -> None:
    with pytest.raises(kind) as caught:
        _parse(body, status)
    refusal = caught.value
    assert isinstance(refusal, TokenUnavailable | TokenRefused)
    assert refusal.description in ("upstream authorization is unavailable", "upstream refused the gateway's credentials")
    assert "s3cr3t" not in (refusal.debug or "")  # the upstream's description never goes anywhere


def test_only_a_well_formed_upstream_error_code_is_kept_for_the_audit() -> None:
    with pytest.raises(TokenRefused) as caught:
        _parse({"error": "invalid_client\n<script>"}, 401)
    assert caught.value.debug == "route crm: 401 -"
    assert caught.value.status == 502 and caught.value.error == "bad_gateway"


def test_an_exchange_answer_must_be_an_access_token() -> None:
    issued = {**GOOD, "issued_token_type": "urn:ietf:params:oauth:token-type:id_token"}
    with pytest.raises(TokenUnavailable):
        parse_token_response(200, json.dumps(issued).encode(), requested=(), route="x", exchange=True)


def test_a_grant_wider_than_requested_is_named() -> None:
    token = _parse({**GOOD, "scope": "contacts.read admin"})
    assert wider_than(token, ("contacts.read",)) == ["admin"]
    assert wider_than(token, ()) == []  # nothing asked for: the route's ceiling is the server's


def test_basic_authorization_form_encodes_both_halves() -> None:
    """RFC 6749 §2.3.1: a ``:`` in the client id must not split it."""
    assert basic_authorization("a:b", "p w+") == "Basic " + base64.b64encode(b"a%3Ab:p%20w%2B").decode()


@pytest.mark.parametrize(("key", "alg"), [
    (ECKey.generate_key("P-256", parameters={"kid": "k1"}), "ES256"),
    (ECKey.generate_key("P-384"), "ES384"),
    (OKPKey.generate_key("Ed25519"), "EdDSA"),
    (RSAKey.generate_key(2048, parameters={"alg": "PS256"}), "PS256"),
    (RSAKey.generate_key(2048), "RS256"),
])  # fmt: skip
def test_assertions_are_signed_with_the_keys_own_algorithm(key: Any, alg: str) -> None:
    signing = load_signing_key("crm-key", json.dumps(key.as_dict(private=True)))
    assertion = client_assertion(signing, client_id="gw", token_endpoint="https://as.example/token", now=1_000)
    decoded = _verify(assertion, key, alg)
    assert decoded.header["alg"] == alg and decoded.header.get("kid") == key.as_dict().get("kid")
    claims = decoded.claims
    assert (claims["iss"], claims["sub"], claims["aud"]) == ("gw", "gw", "https://as.example/token")
    assert claims["exp"] - claims["iat"] == 60 and len(claims["jti"]) >= 32
    again = client_assertion(signing, client_id="gw", token_endpoint="https://as.example/token", now=1_000)
    assert _verify(again, key, alg).claims["jti"] != claims["jti"]


def _verify(token: str, key: Any, alg: str) -> VerifiedJWS:
    """tether's own strict verification (the signature must be by ``key``, with ``alg``)."""
    return verify_compact(token, algorithms=[alg], allowed_headers={"alg", "typ", "kid"}, resolve_key=lambda _: key,
                          max_length=8192, self_asserted_key=True)  # fmt: skip


def test_the_subject_token_names_the_agent_task_and_route() -> None:
    key = ECKey.generate_key("P-256")
    signing = load_signing_key("x-key", json.dumps(key.as_dict(private=True)))
    token = subject_token(signing, client_id="gw-x", token_endpoint="https://as.example/token", agent="spiffe://a/b",
                          task="tsk_1", route="x", now=2_000)  # fmt: skip
    claims = _verify(token, key, "ES256").claims
    assert {k: claims[k] for k in ("iss", "sub", "aud", "task", "route", "iat", "exp")} == {
        "iss": "gw-x", "sub": "spiffe://a/b", "aud": "https://as.example/token", "task": "tsk_1", "route": "x",
        "iat": 2_000, "exp": 2_060}  # fmt: skip


@pytest.mark.parametrize("text", [
    "not json",
    json.dumps(OctKey.generate_key(256).as_dict(private=True)),  # symmetric: never
    json.dumps(ECKey.generate_key("P-256").as_dict(private=False)),  # public only
    json.dumps({**RSAKey.generate_key(2048).as_dict(private=True), "n": "AQAB" * 42}),  # a modulus under 2048 bits
    json.dumps({**ECKey.generate_key("P-256").as_dict(private=True), "crv": "secp256k1"}),
    json.dumps([1, 2]),
], ids=["not-json", "symmetric", "public", "small-rsa", "curve", "not-an-object"])  # fmt: skip
def test_an_unusable_private_key_is_refused_without_showing_it(text: str) -> None:
    with pytest.raises(SecretRefused) as caught:
        load_signing_key("crm-key", text)
    assert "crm-key" in str(caught.value) and text[:40] not in str(caught.value)
