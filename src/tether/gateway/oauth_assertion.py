"""JWTs the gateway signs with a route's vaulted private key: RFC 7523 §2.2 client assertions and RFC 8693 subject tokens.

The key is a private JWK in the vault (``oauth.private_key``: EC P-256/P-384/P-521, Ed25519 or
RSA ≥ 2048 bits; never symmetric); its public half is what the upstream registers for the
client. Each JWT is fresh: a random ``jti``, ``iat`` now and ``exp`` one minute later, so one
seen in a log or an upstream's records is useless soon after and replayable nowhere else
(``aud`` is the upstream's token endpoint, RFC 7523 §3).

The subject token of the ``token_exchange`` grant (RFC 8693 §2.1, ``subject_token_type``
``urn:ietf:params:oauth:token-type:jwt``) says for whom the gateway asks. The upstream must
accept, from the authenticated client, a JWT signed by that client's registered key with:
``iss`` = the ``client_id``; ``aud`` = its token endpoint URL; ``sub`` = the tether agent
making the call; ``task`` = the tether task id; ``route`` = the gateway route; ``iat``, ``exp``
(≤ 60 s later) and a ``jti`` it refuses to see twice.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, JWKRegistry, OKPKey, RSAKey

from tether.gateway.vault import SecretRefused
from tether.rules.jws import PublicKey, rsa_modulus_too_small, sign_compact

__all__ = ["ASSERTION_SECONDS", "SigningKey", "client_assertion", "load_signing_key", "subject_token"]

ASSERTION_SECONDS = 60
_EC_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})


class SigningKey:
    """A route's private key with the algorithm and ``kid`` its JWTs carry."""

    def __init__(self, key: PublicKey, alg: str, kid: str | None) -> None:
        self.key = key
        self.alg = alg
        self.kid = kid

    def sign(self, claims: Mapping[str, Any]) -> str:
        header: dict[str, Any] = {"alg": self.alg, "typ": "JWT"}
        if self.kid:
            header["kid"] = self.kid
        return sign_compact(header, claims, self.key, self.alg)


def _alg(jwk: Mapping[str, Any], key: PublicKey) -> str:
    """The one algorithm this key signs with (RFC 7518 §3.1): from its curve, or the RSA ``alg`` it declares."""
    if isinstance(key, ECKey):
        return _EC_ALGS[str(jwk.get("crv"))]
    if isinstance(key, OKPKey):
        if jwk.get("crv") != "Ed25519":
            raise SecretRefused("the private key must be an Ed25519 OKP key")
        return "EdDSA"
    declared = jwk.get("alg", "RS256")
    if declared not in _RSA_ALGS:
        raise SecretRefused("the RSA private key declares an unknown `alg`")
    return str(declared)


def load_signing_key(name: str, text: str) -> SigningKey:
    """The vault entry ``name``'s private JWK, checked; ``SecretRefused`` (never the value) when unusable."""
    try:
        jwk = json.loads(text)
    except ValueError as exc:
        raise SecretRefused(f"vault entry `{name}` is not a JSON web key") from exc
    if not isinstance(jwk, dict) or jwk.get("kty") not in ("EC", "OKP", "RSA") or "d" not in jwk:
        raise SecretRefused(f"vault entry `{name}` is not a private EC, OKP or RSA JSON web key")
    if jwk.get("kty") == "EC" and jwk.get("crv") not in _EC_ALGS:
        raise SecretRefused(f"vault entry `{name}`: unsupported curve")
    if jwk.get("kty") == "RSA" and rsa_modulus_too_small(jwk):
        raise SecretRefused(f"vault entry `{name}`: an RSA key needs at least 2048 bits")
    try:
        key = JWKRegistry.import_key(jwk)
    except (JoseError, ValueError, TypeError) as exc:
        raise SecretRefused(f"vault entry `{name}` does not import as a key: {type(exc).__name__}") from exc
    if not isinstance(key, ECKey | OKPKey | RSAKey) or not key.is_private:
        raise SecretRefused(f"vault entry `{name}` is not a private key")
    kid = jwk.get("kid")
    return SigningKey(key, _alg(jwk, key), kid if isinstance(kid, str) else None)


def _fresh(now: float) -> dict[str, Any]:
    issued = int(now)
    return {"iat": issued, "exp": issued + ASSERTION_SECONDS, "jti": secrets.token_urlsafe(24)}


def client_assertion(key: SigningKey, *, client_id: str, token_endpoint: str, now: float) -> str:
    """RFC 7523 §3 client authentication JWT: ``iss`` = ``sub`` = the client, ``aud`` = the token endpoint."""
    return key.sign({"iss": client_id, "sub": client_id, "aud": token_endpoint, **_fresh(now)})


def subject_token(key: SigningKey, *, client_id: str, token_endpoint: str, agent: str, task: str, route: str,
                  now: float) -> str:  # fmt: skip
    """The RFC 8693 subject token naming the agent and its task (see the module docstring)."""
    claims = {"iss": client_id, "sub": agent, "aud": token_endpoint, "task": task, "route": route, **_fresh(now)}
    return key.sign(claims)
