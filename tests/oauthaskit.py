"""Kit for tests of third-party OAuth: a real authorization server (node ``oidc-provider``) on loopback.

``OAuthServer.run`` starts ``tests/interop/oauth_as.mjs`` (installed from npm by ``npmkit``; its header
documents every option) with the test's clients plus one confidential client of its own, ``introspector``,
that plays the upstream API checking tokens by RFC 7662 introspection (``server.introspect``). Helpers:
``pkce`` (an RFC 7636 S256 verifier and challenge), ``client_key`` (an EC P-256 key pair for
``private_key_jwt`` and the token-exchange subject_token: the private JWK for the client, the public JWKS
for the server), ``client_assertion`` (RFC 7523 §2.2), and ``authorize`` (drives the provider's own dev
login and consent forms with httpx, as a browser would, until it redirects to the client's redirect URI).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

import httpx
from joserfc import jwt
from joserfc.jwk import ECKey

from helpers import free_port
from npmkit import interop_dir, stop_node

__all__ = ["INTROSPECTOR", "OAuthServer", "authorize", "client_assertion", "client_key", "pkce"]

INTROSPECTOR = "introspector"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
_ACTION = re.compile(r'<form[^>]*action="([^"]+)"')
_PROMPT = re.compile(r'name="prompt" value="([a-z]+)"')


def pkce() -> tuple[str, str]:
    """An RFC 7636 §4.1 code verifier and its S256 challenge (§4.2)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def client_key(kid: str = "client-es256") -> tuple[dict[str, Any], dict[str, Any]]:
    """A fresh EC P-256 key: (the private JWK the client signs with, the public JWKS the server registers)."""
    key = ECKey.generate_key("P-256", parameters={"kid": kid, "alg": "ES256", "use": "sig"})
    return dict(key.as_dict(private=True)), {"keys": [dict(key.as_dict(private=False))]}


def signed_jwt(private_jwk: dict[str, Any], claims: dict[str, Any]) -> str:
    """A compact ES256 JWT over ``claims`` with ``private_jwk`` (its ``kid`` in the header)."""
    key = ECKey.import_key(private_jwk)
    return jwt.encode({"alg": "ES256", "kid": private_jwk.get("kid")}, claims, key)


def client_assertion(private_jwk: dict[str, Any], client_id: str, audience: str, *, lifetime: int = 60) -> str:
    """An RFC 7523 §2.2 client assertion: iss = sub = client_id, aud = the token endpoint, a fresh jti."""
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": audience, "iat": now, "exp": now + lifetime,
              "jti": secrets.token_urlsafe(16)}  # fmt: skip
    return signed_jwt(private_jwk, claims)


def authorize(url: str, redirect_uri: str, *, account: str = "alice", http: httpx.Client | None = None,
              deliver: bool = False) -> httpx.Response | str:  # fmt: skip
    """Log in at the provider as ``account`` (its login form, then its consent form) from ``url``.

    Returns the URL the provider redirects to under ``redirect_uri`` (``code``/``state`` or ``error``), or with
    ``deliver`` the response of GETting it, as the browser would (the client's loopback listener answers).
    """
    own = http is None
    browser = http or httpx.Client(timeout=10.0, trust_env=False, follow_redirects=False)
    try:
        for _ in range(16):
            response = browser.get(url)
            if response.is_redirect:
                url = urljoin(url, response.headers["location"])
            else:
                assert response.status_code == 200, response.text[:500]
                action, prompt = _ACTION.search(response.text), _PROMPT.search(response.text)
                assert action is not None and prompt is not None, response.text[:500]
                form = {"prompt": prompt.group(1)}
                if prompt.group(1) == "login":
                    form |= {"login": account, "password": "any"}
                posted = browser.post(urljoin(url, action.group(1)), data=form)
                assert posted.is_redirect, posted.text[:500]
                url = urljoin(url, posted.headers["location"])
            if url.startswith(redirect_uri):
                return browser.get(url) if deliver else url
        raise AssertionError("the provider never redirected to the client's redirect URI")
    finally:
        if own:
            browser.close()


@dataclass
class OAuthServer:
    """A running ``oauth_as.mjs`` process and a client to call it."""

    process: subprocess.Popen[str]
    issuer: str
    introspector_secret: str
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10.0, trust_env=False))

    @property
    def token_endpoint(self) -> str:
        return self.issuer + "/token"

    @property
    def authorization_endpoint(self) -> str:
        return self.issuer + "/auth"

    @property
    def revocation_endpoint(self) -> str:
        return self.issuer + "/token/revocation"

    @property
    def introspection_endpoint(self) -> str:
        return self.issuer + "/token/introspection"

    def introspect(self, token: str, *, hint: str | None = None) -> dict[str, Any]:
        """RFC 7662 introspection as the upstream API would do it (``active`` false for a dead token)."""
        form = {"token": token} | ({"token_type_hint": hint} if hint else {})
        response = self.http.post(self.introspection_endpoint, data=form, auth=(INTROSPECTOR, self.introspector_secret))
        assert response.status_code == 200, response.text[:300]
        result: dict[str, Any] = response.json()
        return result

    def token(self, form: dict[str, str], *, auth: tuple[str, str] | None = None) -> httpx.Response:
        """POST ``form`` to the token endpoint (``auth``: client_secret_basic, each part form-urlencoded
        first as RFC 6749 §2.3.1 says: a secret with ``+`` or ``/`` is otherwise read differently)."""
        if auth is None:
            return self.http.post(self.token_endpoint, data=form)
        return self.http.post(self.token_endpoint, data=form, auth=(quote(auth[0], safe=""), quote(auth[1], safe="")))

    def refresh(self, refresh_token: str, client_id: str, client_secret: str) -> httpx.Response:
        """An RFC 6749 §6 refresh with client_secret_basic."""
        return self.token({"grant_type": "refresh_token", "refresh_token": refresh_token}, auth=(client_id, client_secret))

    @classmethod
    @contextlib.contextmanager
    def run(cls, log_dir: Path, *, clients: list[dict[str, Any]], port: int | None = None,
            **options: Any) -> Iterator[OAuthServer]:  # fmt: skip
        """The server until the block ends; ``options`` are oauth_as.mjs's (scopes, resources, ttl, accounts...)."""
        directory = interop_dir()
        secret = secrets.token_urlsafe(24)
        introspector = {"client_id": INTROSPECTOR, "client_secret": secret, "auth": "client_secret_basic"}
        config = json.dumps({"port": port or free_port(), "clients": [*clients, introspector], **options})
        log = log_dir / "oauth_as.log"
        with log.open("w") as errors:
            process = subprocess.Popen(["node", str(directory / "oauth_as.mjs"), config], cwd=directory, text=True,
                                       stdout=subprocess.PIPE, stderr=errors)  # fmt: skip
        server: OAuthServer | None = None
        try:
            assert process.stdout is not None
            line = process.stdout.readline()  # blocks until "ready <issuer>" or the process dies
            if not line.startswith("ready "):
                raise AssertionError(f"oauth_as.mjs did not start: {log.read_text()[-2000:]}")
            server = cls(process, line.split()[1], secret)
            yield server
        finally:
            if server is not None:
                server.http.close()
            stop_node(process)
