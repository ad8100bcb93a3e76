"""Helpers for the token-endpoint tests: refusal assertions, raw JOSE, token decoding.

The raw JOSE here is deliberately independent of ``tether``: keys come from
pyca/cryptography, JWKs and RFC 7638 thumbprints are built by hand, and proofs are
assembled byte by byte so a test can send exactly the malformed header or claim it
is about. Nothing is mocked; every helper talks to a real STS over loopback.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from helpers import ACCESS, JWT, SVC_B, SVC_C, TOKEN_EXCHANGE, Client, RunningSts
from tether.audit.chain import AuditRecord

__all__ = [
    "ACCESS",
    "JWT",
    "RESOURCES_TOML",
    "SERVICE_B",
    "SERVICE_C",
    "SERVICE_D",
    "STANDARD_ERRORS",
    "TOKEN_EXCHANGE",
    "RawKey",
    "assert_no_leak",
    "audit_mark",
    "b64url",
    "claims_of",
    "header_of",
    "high_s",
    "hop_form",
    "nonce_for",
    "ok",
    "raw_post",
    "refused",
    "respelled",
    "session_form",
    "sign_jws",
    "thumbprint",
]

SERVICE_B = "http://127.0.0.1:9001"
SERVICE_C = "http://127.0.0.1:9002"
SERVICE_D = "http://127.0.0.1:9003"

#: Service B acts as SERVICE_B and SERVICE_D, service C as SERVICE_C (the ``aud`` owners).
RESOURCES_TOML = f"""
[[resources]]
uri = "{SERVICE_B}"
principals = ["{SVC_B}"]

[[resources]]
uri = "{SERVICE_C}"
principals = ["{SVC_C}"]

[[resources]]
uri = "{SERVICE_D}"
principals = ["{SVC_B}"]
"""

#: RFC 6749 §5.2, RFC 8693 §2.2.2, RFC 8707 §2, RFC 9449 §7/§12.2, plus the 503 fail-closed code.
STANDARD_ERRORS = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_target",
        "invalid_dpop_proof",
        "use_dpop_nonce",
        "access_denied",
        "temporarily_unavailable",
    }
)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_bytes(value: int, length: int | None = None) -> bytes:
    length = length or max(1, (value.bit_length() + 7) // 8)
    return value.to_bytes(length, "big")


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256), computed from the required members only."""
    required = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}[jwk["kty"]]
    canonical = json.dumps({k: jwk[k] for k in required}, sort_keys=True, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode()).digest())


_EC_CURVES: dict[str, tuple[ec.EllipticCurve, hashes.HashAlgorithm, int]] = {
    "P-256": (ec.SECP256R1(), hashes.SHA256(), 32),
    "P-384": (ec.SECP384R1(), hashes.SHA384(), 48),
    "P-521": (ec.SECP521R1(), hashes.SHA512(), 66),
}


class RawKey:
    """An asymmetric key from pyca/cryptography with its public JWK, built by hand."""

    def __init__(self, kind: str = "P-256", *, rsa_bits: int = 2048) -> None:
        self.kind = kind
        self.private: Any
        if kind in _EC_CURVES:
            self.private = ec.generate_private_key(_EC_CURVES[kind][0])
            numbers = self.private.public_key().public_numbers()
            size = _EC_CURVES[kind][2]
            self.jwk: dict[str, Any] = {
                "kty": "EC",
                "crv": kind,
                "x": b64url(_int_bytes(numbers.x, size)),
                "y": b64url(_int_bytes(numbers.y, size)),
            }
            priv = self.private.private_numbers().private_value
            self.private_jwk = {**self.jwk, "d": b64url(_int_bytes(priv, size))}
        elif kind == "Ed25519":
            self.private = ed25519.Ed25519PrivateKey.generate()
            raw = self.private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            self.jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
            seed = self.private.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
            self.private_jwk = {**self.jwk, "d": b64url(seed)}
        elif kind == "RSA":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
            numbers = self.private.public_key().public_numbers()
            self.jwk = {"kty": "RSA", "n": b64url(_int_bytes(numbers.n)), "e": b64url(_int_bytes(numbers.e))}
            self.private_jwk = {**self.jwk, "d": b64url(_int_bytes(self.private.private_numbers().d))}
        else:
            raise ValueError(kind)
        self.jkt = thumbprint(self.jwk)

    def sign(self, data: bytes, alg: str) -> bytes:
        if alg.startswith("ES"):
            _, digest, size = _EC_CURVES[self.kind]
            r, s = decode_dss_signature(self.private.sign(data, ec.ECDSA(digest)))
            return _int_bytes(r, size) + _int_bytes(s, size)
        if alg == "EdDSA":
            return bytes(self.private.sign(data))
        if alg == "RS256":
            return bytes(self.private.sign(data, padding.PKCS1v15(), hashes.SHA256()))
        if alg == "PS256":
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            return bytes(self.private.sign(data, pss, hashes.SHA256()))
        raise ValueError(alg)

    def proof(
        self,
        url: str,
        *,
        method: str = "POST",
        nonce: str | None = None,
        iat: float,
        alg: str | None = None,
        header: Mapping[str, Any] | None = None,
        claims: Mapping[str, Any] | None = None,
        drop: Iterable[str] = (),
        signer: RawKey | None = None,
    ) -> str:
        """A DPoP proof; ``header``/``claims`` override members, ``drop`` removes them."""
        alg = alg or {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "Ed25519": "EdDSA", "RSA": "PS256"}[self.kind]
        hdr: dict[str, Any] = {"typ": "dpop+jwt", "alg": alg, "jwk": self.jwk}
        body: dict[str, Any] = {"jti": secrets.token_urlsafe(16), "htm": method, "htu": url, "iat": int(iat)}
        if nonce is not None:
            body["nonce"] = nonce
        hdr.update(header or {})
        body.update(claims or {})
        for name in drop:
            hdr.pop(name, None)
            body.pop(name, None)
        return sign_jws(hdr, body, signer or self, alg)


def sign_jws(header: Mapping[str, Any], claims: Mapping[str, Any] | str, key: RawKey | bytes | None, alg: str) -> str:
    """Compact JWS over exactly these members. ``key=None`` gives an empty signature, bytes an HMAC."""
    payload = claims if isinstance(claims, str) else json.dumps(claims, separators=(",", ":"))
    signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "." + b64url(payload.encode())).encode()
    if key is None:
        signature = b""
    elif isinstance(key, bytes):
        signature = hmac.new(key, signing_input, hashlib.sha256).digest()
    else:
        signature = key.sign(signing_input, alg)
    return signing_input.decode() + "." + b64url(signature)


def header_of(token: str) -> dict[str, Any]:
    return dict(jwt.get_unverified_header(token))


def claims_of(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (the interop test verifies signatures)."""
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def session_form(task_id: str, svid: str, **extra: str) -> dict[str, str]:
    return {"grant_type": TOKEN_EXCHANGE, "subject_token": svid, "subject_token_type": JWT, "task": task_id, **extra}


def hop_form(subject: str, resource: str | None, **extra: str) -> dict[str, str]:
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": subject, "subject_token_type": ACCESS, **extra}
    if resource is not None:
        form["resource"] = resource
    return form


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def audit_mark(sts: RunningSts) -> int:
    records = sts.audit()
    return records[-1].seq if records else 0


def assert_no_leak(sts: RunningSts, secrets_: Iterable[str], *texts: str) -> None:
    """BCP-13: no token or proof value (nor its payload/signature segment) in audit records or bodies."""
    dump = json.dumps([r.as_json() for r in sts.audit()])
    for secret in secrets_:
        needles = {secret} | {part for part in secret.split(".")[1:] if len(part) >= 16}
        for needle in needles:
            assert needle not in dump, "a token or proof value was written to the audit log"
            for text in texts:
                assert needle not in text, "a token or proof value was echoed in a response"


def refused(
    sts: RunningSts,
    response: httpx.Response,
    *,
    since: int,
    status: int,
    error: str,
    reason: str | None = None,
    description: str | None = None,
    secrets: Iterable[str] = (),
    kind: str = "token.refused",
) -> AuditRecord:
    """Assert the wire refusal and its one audit record (error code and reason), and no leaks."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error, body
    assert set(body) <= {"error", "error_description", "error_uri"}, body
    assert response.headers.get("cache-control") == "no-store"
    if description is not None:
        assert description in body.get("error_description", ""), body
    new = [r for r in sts.audit() if r.seq > since and r.kind == kind]
    assert len(new) == 1, f"expected exactly one {kind} audit record, got {[(r.error, r.detail) for r in new]}"
    record = new[0]
    assert record.outcome == "refused"
    assert record.error == error, record
    assert isinstance(record.detail.get("reason"), str) and record.detail["reason"], record
    if reason is not None:
        assert reason in record.detail["reason"], record.detail
    assert_no_leak(sts, secrets, response.text)
    return record


def nonce_for(client: Client) -> str:
    """Obtain a server nonce the way a standard client does: from a ``use_dpop_nonce`` challenge."""
    if client.nonce is None:
        probe = client.key.proof("POST", client.sts.token_url, now=client.sts.clock.now())
        form = {"grant_type": TOKEN_EXCHANGE, "subject_token": "probe", "subject_token_type": JWT}
        response = client.http.post(client.sts.token_url, data=form, headers={"DPoP": probe})
        assert response.status_code == 400 and response.json()["error"] == "use_dpop_nonce", response.text
        client.nonce = response.headers["dpop-nonce"]
    return client.nonce


def raw_post(client: Client, form: Mapping[str, str] | None = None, *, headers: Any = None, **kwargs: Any) -> httpx.Response:
    """POST /token exactly as given: no proof added, no nonce retry."""
    response = client.http.post(client.sts.token_url, data=form, headers=headers, **kwargs)
    if "dpop-nonce" in response.headers:
        client.nonce = response.headers["dpop-nonce"]
    return response


_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def high_s(token: str) -> str:
    """The other valid ES256 signature of the same JWS: (r, n - s) (K-03, ECDSA malleability)."""
    head, payload, signature = token.split(".")
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    r, s = raw[:32], int.from_bytes(raw[32:], "big")
    return f"{head}.{payload}.{b64url(r + (_P256_N - s).to_bytes(32, 'big'))}"


def respelled(token: str) -> str:
    """The same JWS with different unused trailing bits in the signature's last base64url character."""
    head, payload, signature = token.split(".")
    value = _B64_ALPHABET.index(signature[-1])
    other = _B64_ALPHABET[(value & ~0xF) | ((value + 1) & 0xF)]
    return f"{head}.{payload}.{signature[:-1]}{other}"
