"""Shared pieces for the identity tests: an independent JWS signer, keys, and a loopback provider.

The signer here is written against ``cryptography`` directly rather than with
``tether.rules.jws.sign_compact``, so a test can put any header (``jku``, ``crit``,
duplicate names, ``alg: none``) into a token and the oracle does not share code with
the verifier under test. The provider is a real Starlette app under uvicorn on
loopback; every test takes its own path prefix so request counts never mix.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc.jwk import ECKey, KeyParameters, OKPKey, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from helpers import ServerThread, free_port

__all__ = [
    "DROP",
    "NOW",
    "Provider",
    "Tenant",
    "b64",
    "ec_key",
    "jwks",
    "okp_key",
    "rsa_key",
    "sign_jwt",
]

#: A fixed "now" for every rule call (Unix seconds); tests never read the clock.
NOW = 1_700_000_000


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


#: Marker for "remove this member" in header/claim overrides (stable repr for test ids).
DROP: Any = _Drop()

_HASHES: Mapping[str, type[hashes.HashAlgorithm]] = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _segment(value: Mapping[str, Any] | str | bytes) -> str:
    if isinstance(value, bytes):
        return b64(value)
    if isinstance(value, str):  # raw JSON text, e.g. with duplicate member names
        return b64(value.encode("utf-8"))
    return b64(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def _signature(data: bytes, alg: str, key: Any, secret: bytes | None) -> bytes:
    if alg.lower() == "none":
        return b""
    family, bits = alg[:2], alg[2:]
    if family == "HS":
        assert secret is not None
        return hmac.new(secret, data, getattr(hashlib, f"sha{bits}")).digest()
    if alg == "EdDSA":
        return bytes(key.private_key.sign(data))
    digest = _HASHES[bits]()
    private = key.private_key
    if family == "ES":
        der = private.sign(data, ec.ECDSA(digest))
        r, s = decode_dss_signature(der)
        size = (private.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if family == "RS":
        return bytes(private.sign(data, padding.PKCS1v15(), digest))
    if family == "PS":
        return bytes(private.sign(data, padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size), digest))
    raise AssertionError(f"unknown alg {alg}")


def sign_jwt(
    header: Mapping[str, Any] | str,
    claims: Mapping[str, Any] | str | bytes,
    key: Any = None,
    *,
    alg: str | None = None,
    secret: bytes | None = None,
    signature: bytes | None = None,
) -> str:
    """A compact JWS over exactly the given header and claims.

    ``alg`` selects the signing operation (default: the header's ``alg``), so a test
    can also sign with one algorithm and claim another. ``signature`` replaces the
    computed signature (e.g. garbage after ``alg: none``).
    """
    if alg is None:
        assert isinstance(header, Mapping)
        alg = str(header["alg"])
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    sig = signature if signature is not None else _signature(signing_input.encode("ascii"), alg, key, secret)
    return f"{signing_input}.{b64(sig)}"


def apply(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for name, value in overrides.items():
        if value is DROP:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def ec_key(kid: str | None, crv: str = "P-256") -> ECKey:
    return ECKey.generate_key(crv, parameters={"kid": kid} if kid else None, private=True)


def rsa_key(kid: str | None, alg: str | None = None) -> RSAKey:
    params: KeyParameters = {}
    if kid:
        params["kid"] = kid
    if alg:
        params["alg"] = alg
    return RSAKey.generate_key(2048, parameters=params or None, private=True)


def okp_key(kid: str) -> OKPKey:
    return OKPKey.generate_key("Ed25519", parameters={"kid": kid}, private=True)


def public_jwk(key: Any, **extra: Any) -> dict[str, Any]:
    entry = dict(key.as_dict(private=False))
    entry.update(extra)
    return entry


def jwks(*keys: Any, use: str | None = None) -> dict[str, Any]:
    """A JWKS of the public halves of ``keys`` (``use`` set on every entry when given)."""
    return {"keys": [public_jwk(k, **({"use": use} if use else {})) for k in keys]}


Entry = tuple[int, dict[str, str], bytes]


class Provider:
    """A loopback HTTP server whose responses tests set per path; it counts every request."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.responses: dict[str, Entry | Callable[[], Entry]] = {}
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.thread = ServerThread(Starlette(routes=[Route("/{path:path}", self._serve)]), self.port)

    async def _serve(self, request: Request) -> Response:
        path = request.url.path
        with self._lock:
            self.hits[path] += 1
        entry = self.responses.get(path)
        if entry is None:
            return Response(b"not found", status_code=404)
        status, headers, body = entry() if callable(entry) else entry
        return Response(body, status_code=status, headers=headers, media_type="application/json")

    def start(self) -> Provider:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.thread.stop()

    def prefix(self) -> str:
        with self._lock:
            return f"/p{next(self._ids)}"

    def url(self, path: str) -> str:
        return self.base + path

    def count(self, path: str) -> int:
        with self._lock:
            return self.hits[path]

    def set_json(self, path: str, document: Any, *, status: int = 200) -> None:
        self.responses[path] = (status, {}, json.dumps(document).encode("utf-8"))

    def set_raw(self, path: str, body: bytes, *, status: int = 200) -> None:
        self.responses[path] = (status, {}, body)

    def set_redirect(self, path: str, target: str, *, status: int = 302) -> None:
        self.responses[path] = (status, {"location": target}, b"")


class Tenant:
    """One OIDC issuer at ``<provider>/<prefix>``: discovery document plus JWKS."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        prefix = provider.prefix()
        self.issuer = provider.base + prefix
        self.discovery_path = prefix + "/.well-known/openid-configuration"
        self.jwks_path = prefix + "/jwks"
        self.prefix = prefix

    @property
    def jwks_url(self) -> str:
        return self.provider.url(self.jwks_path)

    def publish(self, *keys: Any, issuer: str | None = None) -> None:
        self.provider.set_json(self.discovery_path, {"issuer": issuer or self.issuer, "jwks_uri": self.jwks_url})
        self.set_keys(*keys)

    def set_keys(self, *keys: Any) -> None:
        self.provider.set_json(self.jwks_path, jwks(*keys))

    @property
    def discovery_hits(self) -> int:
        return self.provider.count(self.discovery_path)

    @property
    def jwks_hits(self) -> int:
        return self.provider.count(self.jwks_path)
