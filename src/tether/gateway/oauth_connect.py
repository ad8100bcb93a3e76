"""The rules of ``tether vault oauth-connect``: one authorization-code + PKCE flow run by an operator.

A ``refresh_token`` route needs a refresh token obtained once by a person (RFC 6749 §4.1). This
module is the pure part of that flow: the authorization URL with ``state`` (RFC 6749 §10.12),
an S256 code challenge (RFC 7636 §4.2) and a ``nonce`` when ``openid`` is asked for; the checks
on the loopback callback (RFC 8252 §7.3: exact path, one ``state`` that must match, ``error=``
answered by the authorization server); the token request with the route's client
authentication (RFC 6749 §2.3.1, RFC 7523 §2.2 ``private_key_jwt``); and the token response,
which must carry a refresh token. Randomness and time are passed in; the CLI does the I/O.

Every refusal is a ``ConnectRefused`` carrying an RFC 6749 error code. Its description never
holds the code, a token or a secret: the code and tokens are bearer credentials, and an error
text is printed to a terminal and may be pasted anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, JWKRegistry, OKPKey, RSAKey

from tether.errors import OAuthError
from tether.gateway.oauth_config import OAuthCredentials
from tether.gateway.oauth_wire import MIN_TOKEN_BYTES
from tether.rules.jws import algs_for_key, sign_compact
from tether.urns import JWT_BEARER

__all__ = [
    "ASSERTION_SECONDS",
    "MAX_TOKEN_RESPONSE",
    "ConnectRefused",
    "ConnectRequest",
    "TokenRequest",
    "callback_code",
    "error_code",
    "refresh_token_of",
    "start",
    "token_request",
]

#: lifetime of a ``private_key_jwt`` assertion: long enough for one request, short against replay
ASSERTION_SECONDS = 60
#: RFC 6749 §4.1.2.1 / §5.2: ``error`` is %x20-21 / %x23-5B / %x5D-7E; any other character is shown as ``?``
_NOT_ERROR_CHAR = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
MAX_TOKEN_RESPONSE = 64 * 1024


class ConnectRefused(OAuthError):
    """The flow stopped: the callback, or the authorization server, refused; ``error`` is the RFC 6749 code."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error


@dataclass(frozen=True)
class ConnectRequest:
    """One authorization request in flight: what the callback and the token request are checked against."""

    url: str
    state: str
    verifier: str
    nonce: str  # "" unless the route asks for ``openid``


@dataclass(frozen=True)
class TokenRequest:
    """The token endpoint request: form fields, and an ``Authorization`` header for client_secret_basic."""

    form: dict[str, str]
    authorization: str = ""


def _challenge(verifier: str) -> str:
    """RFC 7636 §4.2: ``BASE64URL(SHA256(ASCII(code_verifier)))`` without padding."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode("ascii")


def start(oauth: OAuthCredentials, random_token: Callable[[int], str]) -> ConnectRequest:
    """The authorization request for ``oauth`` (RFC 6749 §4.1.1 + RFC 7636 §4.3 + RFC 8707 §2.1).

    ``random_token(n)`` is ``secrets.token_urlsafe``: the verifier gets 48 bytes (64 characters,
    within RFC 7636 §4.1's 43-128), ``state`` and ``nonce`` 32 bytes each: unguessable, single use.
    """
    if oauth.grant != "refresh_token":
        raise ConnectRefused("unsupported_grant_type", f"the route's grant is {oauth.grant}, not refresh_token")
    verifier, state = random_token(48), random_token(32)
    nonce = random_token(32) if "openid" in oauth.scopes else ""
    query = {"response_type": "code", "client_id": oauth.client_id, "redirect_uri": oauth.redirect_uri,
             "state": state, "code_challenge": _challenge(verifier), "code_challenge_method": "S256"}  # fmt: skip
    if oauth.scopes:
        query["scope"] = " ".join(oauth.scopes)
    if nonce:
        query["nonce"] = nonce
    if oauth.resource:
        query["resource"] = oauth.resource
    endpoint = oauth.authorization_endpoint
    separator = "&" if urlsplit(endpoint).query else "?"  # RFC 6749 §3.1: keep the endpoint's own query
    return ConnectRequest(url=endpoint + separator + urlencode(query, quote_via=quote), state=state, verifier=verifier,
                          nonce=nonce)  # fmt: skip


def error_code(value: str) -> str:
    """An ``error`` value fit to show: what the server (or whoever called the listener) sent, escaped to the
    RFC 6749 error charset and cut at 64 characters, so it cannot drive a terminal or a page."""
    return _NOT_ERROR_CHAR.sub("?", value)[:64] or "invalid_request"


def callback_code(request: ConnectRequest, query: str) -> str:
    """The authorization code from the callback's query string, once everything about it checks out.

    Anyone on this host can send the loopback listener a request, so the callback proves nothing
    until its ``state`` matches (RFC 6749 §10.12); parameters appear once (§3.1); an ``error``
    answer (§4.1.2.1) is shown by its code only.
    """
    try:
        params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=32)
    except ValueError as exc:
        raise ConnectRefused("invalid_request", "the callback's query string is malformed") from exc
    if any(len(values) != 1 for values in params.values()):
        raise ConnectRefused("invalid_request", "the callback repeats a parameter (RFC 6749 §3.1)")
    got = {name: values[0] for name, values in params.items()}
    if got.get("state") != request.state:
        raise ConnectRefused("invalid_request", "the callback's state does not match this request (RFC 6749 §10.12)")
    if "error" in got:
        code = error_code(got["error"])
        raise ConnectRefused(code, f"the authorization server answered error={code}")
    code = got.get("code", "")
    if not code or not code.isprintable():
        raise ConnectRefused("invalid_request", "the callback carries no authorization code")
    return code


def _private_key(private_jwk: str) -> ECKey | OKPKey | RSAKey:
    """The vaulted private JWK (asymmetric only: a shared key is not ``private_key_jwt``)."""
    try:
        data = json.loads(private_jwk)
        key = JWKRegistry.import_key(data) if isinstance(data, dict) else None
    except (ValueError, JoseError, TypeError) as exc:
        raise ConnectRefused("invalid_client", "the vaulted private key is not a JWK") from exc
    if not isinstance(key, ECKey | OKPKey | RSAKey) or not key.is_private:
        raise ConnectRefused("invalid_client", "the vaulted private key must be a private EC, OKP or RSA JWK")
    return key


def client_assertion(private_jwk: str, client_id: str, audience: str, *, now: float, jti: str) -> str:
    """An RFC 7523 §2.2 client assertion: iss = sub = client_id, aud = the token endpoint, short exp, fresh jti."""
    key = _private_key(private_jwk)
    algs = algs_for_key(key)
    if not algs:
        raise ConnectRefused("invalid_client", "the vaulted private key names an algorithm tether does not sign with")
    # a JWK naming its ``alg`` gets exactly that; an Ed25519 key otherwise signs as ``Ed25519`` (RFC 9864)
    alg = "Ed25519" if "Ed25519" in algs else sorted(algs)[0]
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    kid = key.get("kid")
    if isinstance(kid, str) and kid:
        header["kid"] = kid
    issued = int(now)
    claims = {"iss": client_id, "sub": client_id, "aud": audience, "iat": issued, "exp": issued + ASSERTION_SECONDS,
              "jti": jti}  # fmt: skip
    return sign_compact(header, claims, key, alg)


def _basic(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: both parts form-urlencoded before the RFC 7617 base64."""
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def token_request(oauth: OAuthCredentials, request: ConnectRequest, code: str, *, client_secret: str = "",
                  private_jwk: str = "", now: float, jti: str) -> TokenRequest:  # fmt: skip
    """RFC 6749 §4.1.3 with the verifier (RFC 7636 §4.5), authenticated as the route's client."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": oauth.redirect_uri,
            "code_verifier": request.verifier}  # fmt: skip
    if oauth.resource:
        form["resource"] = oauth.resource  # RFC 8707 §2.2
    match oauth.client_auth:
        case "client_secret_basic":
            return TokenRequest(form, _basic(oauth.client_id, client_secret))
        case "client_secret_post":
            return TokenRequest(form | {"client_id": oauth.client_id, "client_secret": client_secret})
        case "private_key_jwt":
            assertion = client_assertion(private_jwk, oauth.client_id, oauth.token_endpoint, now=now, jti=jti)
            return TokenRequest(form | {"client_id": oauth.client_id, "client_assertion_type": JWT_BEARER,
                                        "client_assertion": assertion})  # fmt: skip
        case _:  # "none": a public client, PKCE is its only proof (RFC 7636 §1)
            return TokenRequest(form | {"client_id": oauth.client_id})


def refresh_token_of(status: int, body: bytes) -> str:
    """The refresh token of an RFC 6749 §5.1 answer; a §5.2 error by its code; nothing else from the body."""
    if len(body) > MAX_TOKEN_RESPONSE:
        raise ConnectRefused("invalid_request", f"the token endpoint's answer is over {MAX_TOKEN_RESPONSE} bytes")
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError too; RecursionError: ``[[[[...``
        parsed = None
    if status != 200:
        raw = parsed.get("error") if isinstance(parsed, dict) else None
        code = error_code(raw) if isinstance(raw, str) else "invalid_request"
        raise ConnectRefused(code, f"the token endpoint refused the code: {code} (HTTP {status})")
    if not isinstance(parsed, dict):
        raise ConnectRefused("invalid_request", "the token endpoint's answer is not a JSON object")
    token = parsed.get("refresh_token")
    if not isinstance(token, str) or not token:
        raise ConnectRefused(
            "invalid_grant",
            "the token endpoint issued no refresh token (the provider may need a scope such as offline_access in the "
            "route's scopes, or consent for offline use); nothing was stored",
        )
    if not token.isprintable():
        raise ConnectRefused("invalid_grant", "the refresh token has control characters; nothing was stored")
    if len(token) < MIN_TOKEN_BYTES:  # the gateway could not scrub it from answers (and refuses one rotated to it)
        raise ConnectRefused("invalid_grant", f"the refresh token is under {MIN_TOKEN_BYTES} bytes; nothing was stored")
    return token
