"""RFC 7515 §5.1/§5.2 compact JWS for ES256 (RFC 7518 §3.4) and Ed25519 (RFC 8037 §3.1) on pyca/cryptography.

Only ``tether.rules.jws`` calls this, and only after every RFC 8725 gate of ``verify_compact``
has passed: here the signing input is the first two segments as they came, the signature the
strict base64url of the third. Each refusal raises the joserfc error class that joserfc's
``deserialize_compact`` raises for the same input, checked in joserfc's order (its size cap,
payload decoding, header registry, the key's ``use``/``alg``, signature length, ``key_ops``),
so the caller's ``SignatureRejected`` reads the same on either path. Anything outside that
reach — another algorithm, key family or curve, a header name beyond ``alg``/``typ``/``kid``/
``jwk`` — stays on joserfc. joserfc's header and payload caps are the caller's ``max_length``,
which ``verify_compact`` has already held the whole token to; its signature cap is kept here.
``tests/rules/test_jws_fast_differential.py`` holds the two paths to the same outcome on
mutated input.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Mapping
from typing import Any, TypeGuard

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from joserfc.errors import (
    BadSignatureError,
    DecodeError,
    ExceededSizeError,
    InvalidHeaderValueError,
    UnsupportedKeyAlgorithmError,
    UnsupportedKeyOperationError,
    UnsupportedKeyUseError,
)
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.util import urlsafe_b64decode

__all__ = ["FAST_ALGS", "covers", "sign", "signable", "verify"]

#: The algorithms this module signs and verifies; ``EdDSA`` is the pre-RFC 9864 name of ``Ed25519``.
FAST_ALGS = frozenset({"ES256", "EdDSA", "Ed25519"})
#: Header names whose joserfc registry checks (RFC 7515 §4.1) are repeated here; a header with
#: any other name (``crit``, ``b64``, ``x5c`` …) is left to joserfc, whatever the caller allows.
_HEADERS = frozenset({"alg", "typ", "kid", "jwk"})
_STRING_HEADERS = ("alg", "typ", "kid")
#: joserfc's ``max_signature_length``: the signature segment is measured before it is decoded.
_MAX_SIGNATURE = 1024
_ES256 = ec.ECDSA(hashes.SHA256())
_P256_BYTES = 32


def covers(key: ECKey | OKPKey | RSAKey, header: Mapping[str, Any], alg: str) -> TypeGuard[ECKey | OKPKey]:
    """Whether this module handles ``alg`` with ``key``: ES256 on a P-256 key, Ed25519 on an
    Ed25519 key (never X25519 or Ed448), under a header of ``alg``/``typ``/``kid``/``jwk`` only.

    ``verify_compact`` has already matched ``alg`` to the key's family (RFC 8725 §3.1); this
    checks it again so the module cannot be reached with a pair it was not written for.
    """
    if alg not in FAST_ALGS:
        return False
    if alg == "ES256":
        if not isinstance(key, ECKey) or key.curve_name != "P-256":
            return False
    elif not isinstance(key, OKPKey) or key.curve_name != "Ed25519":
        return False
    return header.keys() <= _HEADERS


def _check_header(header: Mapping[str, Any]) -> None:
    """joserfc's registry checks for the header names this module covers (RFC 7515 §4.1)."""
    for name in _STRING_HEADERS:
        if name in header and not isinstance(header[name], str):
            raise InvalidHeaderValueError(f"'{name}' in header must be a str")
    if "jwk" in header and not isinstance(header["jwk"], dict):
        raise InvalidHeaderValueError("'jwk' in header must be a JWK")


def _check_key(key: ECKey | OKPKey, alg: str) -> None:
    """RFC 7517 §4.2 ``use`` and §4.4 ``alg``, tested as joserfc tests them (a falsy value is absent)."""
    designed_use = key.get("use")
    if designed_use and designed_use != "sig":
        raise UnsupportedKeyUseError(f"This key is designed to be used for '{designed_use}'")
    designed_alg = key.get("alg")
    if designed_alg and designed_alg != alg:
        raise UnsupportedKeyAlgorithmError(f"This key is designed for algorithm '{designed_alg}'")


def _check_operation(key: ECKey | OKPKey, operation: str) -> None:
    """RFC 7517 §4.3 ``key_ops``, as joserfc's ``get_op_key`` tests it (a string is searched as one)."""
    key_ops = key.get("key_ops")
    if key_ops is not None and operation not in key_ops:
        raise UnsupportedKeyOperationError(f"Unsupported key_op '{operation}'")


def verify(token: str, header: Mapping[str, Any], key: ECKey | OKPKey, alg: str) -> bytes:
    """Verify a gated compact JWS (RFC 7515 §5.2) and return its decoded payload.

    ES256 needs exactly 64 bytes, R then S big-endian (RFC 7518 §3.4); OpenSSL refuses R or S
    outside [1, n-1], and a high-S twin verifies here exactly as it does in joserfc. Ed25519 is
    RFC 8032 §5.1.7 as OpenSSL implements it (non-canonical S refused). Raises the joserfc error
    joserfc raises for the same input.
    """
    header_segment, payload_segment, signature_segment = token.split(".")
    if len(signature_segment) > _MAX_SIGNATURE:
        raise ExceededSizeError(f"Signature of exceeds {_MAX_SIGNATURE} bytes.")
    try:
        payload = urlsafe_b64decode(payload_segment.encode("ascii"))
    except (TypeError, ValueError) as exc:  # binascii.Error is a ValueError
        raise DecodeError("Invalid payload") from exc
    _check_header(header)
    _check_key(key, alg)
    try:
        signature = urlsafe_b64decode(signature_segment.encode("ascii"))
    except (TypeError, ValueError) as exc:
        raise BadSignatureError() from exc
    signing_input = f"{header_segment}.{payload_segment}".encode("ascii")
    public = key.public_key
    try:
        if alg == "ES256" and isinstance(public, ec.EllipticCurvePublicKey):
            if len(signature) != 2 * _P256_BYTES:
                raise BadSignatureError()
            _check_operation(key, "verify")
            r = int.from_bytes(signature[:_P256_BYTES], "big")
            s = int.from_bytes(signature[_P256_BYTES:], "big")
            public.verify(encode_dss_signature(r, s), signing_input, _ES256)
        elif alg != "ES256" and isinstance(public, Ed25519PublicKey):
            _check_operation(key, "verify")
            public.verify(signature, signing_input)
        else:  # unreachable after ``covers``: never verify with a key of another kind
            raise TypeError("key does not fit the algorithm")
    except InvalidSignature as exc:
        raise BadSignatureError() from exc
    return payload


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _header_segment(header: Mapping[str, Any]) -> str:
    """The header as joserfc serialises it: insertion order, ``,``/``:`` separators, ASCII."""
    items = tuple(header.items())
    if len(items) <= _MEMO_HEADER_MEMBERS and all(type(value) is str for _, value in items):
        return _memo_header_segment(items)
    return _encode_header(header)


def _encode_header(header: Mapping[str, Any]) -> str:
    return _b64(json.dumps(dict(header), ensure_ascii=True, separators=(",", ":")).encode("ascii"))


#: A signer's headers repeat (one per signing key and token type): those of a few string members
#: are memoised by their members in order, which fixes their serialisation.
_MEMO_HEADER_MEMBERS = 4


@functools.lru_cache(maxsize=256)
def _memo_header_segment(items: tuple[tuple[str, str], ...]) -> str:
    return _encode_header(dict(items))


def signable(key: ECKey | OKPKey | RSAKey, header: Mapping[str, Any], alg: str) -> TypeGuard[ECKey | OKPKey]:
    """Whether ``sign`` makes exactly the token joserfc would: otherwise joserfc signs (or
    raises its own error), so a refusal never depends on which path ran."""
    if header.get("alg") != alg or not covers(key, header, alg):
        return False
    if key.private_key is None:  # joserfc's ``get_op_key("sign")`` refuses a public key
        return False
    try:
        _check_header(header)
        _check_key(key, alg)
        _check_operation(key, "sign")
    except (InvalidHeaderValueError, UnsupportedKeyUseError, UnsupportedKeyAlgorithmError, UnsupportedKeyOperationError):
        return False
    return True


def sign(header: Mapping[str, Any], payload: bytes, key: ECKey | OKPKey, alg: str) -> str:
    """Compact JWS (RFC 7515 §7.1) over ``payload`` for a pair ``signable`` accepted.

    The header is serialised as joserfc serialises it (insertion order, ``,``/``:`` separators,
    ASCII), so both paths produce the same first two segments; ES256 is R‖S, 32 bytes each.
    """
    signing_input = f"{_header_segment(header)}.{_b64(payload)}"
    private = key.private_key
    message = signing_input.encode("ascii")
    if alg == "ES256" and isinstance(private, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(private.sign(message, _ES256))
        signature = r.to_bytes(_P256_BYTES, "big") + s.to_bytes(_P256_BYTES, "big")
    elif alg != "ES256" and isinstance(private, Ed25519PrivateKey):
        signature = private.sign(message)
    else:  # unreachable after ``signable``
        raise TypeError("key does not fit the algorithm")
    return f"{signing_input}.{_b64(signature)}"
