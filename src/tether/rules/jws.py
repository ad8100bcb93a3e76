"""RFC 7515 compact JWS gate with the RFC 8725 (and 8725bis) checks joserfc leaves to callers.

Every JWT tether reads passes ``verify_compact``: a size cap before any decoding (Authlib
CVE-2025-61920), the JWT character set (no JSON serialization), strict UTF-8, duplicate
header or claim names refused, an allowlist of header names per token kind (no ``crit``,
``b64``, ``jku``, ``x5u``), an algorithm allowlist compared case-sensitively, and a key the
caller resolves from trusted configuration, never symmetric. Then ES256 and Ed25519 are
verified with pyca/cryptography directly (``jws_fast``), every other algorithm by joserfc.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import json
import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from tether.rules import jws_fast

__all__ = [
    "ASYMMETRIC_ALGS",
    "JWSError",
    "PublicKey",
    "SignatureRejected",
    "VerifiedJWS",
    "algs_for_key",
    "b64url_decode",
    "ed25519_small_order",
    "jose_json_loads",
    "peek_header",
    "rsa_modulus_too_small",
    "sign_compact",
    "sign_compact_joserfc",
    "strict_json_loads",
    "verify_compact",
    "verify_compact_joserfc",
]

PublicKey = ECKey | OKPKey | RSAKey

#: Every asymmetric JWS algorithm tether can verify; callers pass a subset. ``Ed25519`` is the
#: RFC 9864 name for EdDSA over Ed25519; the older polymorphic ``EdDSA`` is still accepted.
ASYMMETRIC_ALGS = frozenset(
    {"ES256", "ES384", "ES512", "EdDSA", "Ed25519", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)

_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_CURVE_ALGS = {
    "P-256": frozenset({"ES256"}),
    "P-384": frozenset({"ES384"}),
    "P-521": frozenset({"ES512"}),
    "Ed25519": frozenset({"EdDSA", "Ed25519"}),
}
_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_MIN_RSA_BITS = 2048
#: Header members that are strings whenever present (RFC 7515 §4.1.4 ``kid``, §4.1.9 ``typ``):
#: a key resolver or type check never sees a list, an object or ``null`` in their place.
_STRING_HEADERS = frozenset({"kid", "typ"})


class JWSError(Exception):
    """Why a JWS was refused; callers turn it into their own wire error."""


class SignatureRejected(JWSError):
    """Well formed, with an allowed algorithm and a known key, but the signature does not verify."""


@dataclass(frozen=True)
class VerifiedJWS:
    header: Mapping[str, Any]
    claims: Mapping[str, Any]


def b64url_decode(segment: str) -> bytes:
    """Strict base64url without padding (RFC 7515 §2): no padding, no stray characters."""
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise JWSError("invalid base64url")
    try:
        decoded = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise JWSError("invalid base64url") from exc
    # the last character's unused bits must be zero (RFC 4648 §3.5): otherwise one token has
    # several spellings that verify alike, and anything keyed by the token string (the
    # verified-token cache, ``ath``) would see them as different tokens
    tail = len(segment) % 4  # 2 or 3 characters carrying 1 or 2 bytes
    if tail and base64.urlsafe_b64encode(decoded[1 - tail :])[:tail] != segment[-tail:].encode("ascii"):
        raise JWSError("invalid base64url")
    return decoded


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)  # built in C; fewer members than pairs means a name came twice
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JWSError(f"duplicate member `{key}`")
            seen.add(key)
    return out


def _reject_constant(name: str) -> Any:
    raise JWSError(f"non-standard json constant `{name}`")


def _finite_float(literal: str) -> float:
    """A JSON number with a fraction or exponent, refused when a double cannot hold it.

    ``float("1e400")`` is ``inf``: without this a claim could hold the infinity that the
    ``Infinity`` constant is refused for (RFC 8259 §6 leaves such numbers to the parser).
    """
    value = float(literal)
    if not math.isfinite(value):
        raise JWSError("json number out of range")
    return value


#: A ``\\u`` escape of a UTF-16 surrogate (D800-DFFF); a backslash before it only costs the full check.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _encodable(value: Any) -> bool:
    """Whether every string in a parsed value is Unicode scalar values only (no lone surrogate)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def strict_json_loads(data: bytes) -> Any:
    """JSON with duplicate names refused (RFC 7515 §4), strict UTF-8 (RFC 8725 §3.7), no NaN.

    For JSON that is not a JOSE header or claim set (request bodies, tool arguments): a
    ``\\ud800`` escape still parses to a lone surrogate and ``1e400`` to ``inf``, which their
    callers refuse with their own answer (``rules.tool_call``, the gateway's MCP checks).
    """
    return _loads(data, jose=False)


def jose_json_loads(data: bytes) -> Any:
    """``strict_json_loads`` for a JOSE header or claim set, which must also be Unicode text and finite numbers.

    A ``"\\ud800"`` escape is JSON syntax but no Unicode text (RFC 8259 §8.2; RFC 8725 §3.7
    asks for UTF-8): the ``str`` it made raised on every later ``encode()`` (a replay key, a
    database row), so a DPoP proof's ``jti`` of one was a 500. A pair of escapes for one
    character is accepted. ``1e400`` would be ``inf`` where the ``Infinity`` constant is refused.
    """
    return _loads(data, jose=True)


def _loads(data: bytes, *, jose: bool) -> Any:
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise JWSError("not utf-8") from exc
    try:
        value = json.loads(
            text,
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
            parse_float=_finite_float if jose else None,
        )
        # an escape names a surrogate rarely (any character outside the BMP as a pair): only
        # then is the parsed value walked for one left alone
        if jose and "\\u" in text and _SURROGATE_ESCAPE.search(text) and not _encodable(value):
            raise JWSError("not utf-8: lone surrogate escape")
    except (ValueError, RecursionError) as exc:
        raise JWSError("invalid json") from exc
    return value


def _decode_object(segment: str, what: str) -> dict[str, Any]:
    value = jose_json_loads(b64url_decode(segment))
    if not isinstance(value, dict):
        raise JWSError(f"{what} is not a json object")
    return value


def peek_header(token: str, *, max_length: int) -> dict[str, Any]:
    """Decode the protected header of an unverified compact JWS after the shape gates.

    Callers use it only to pick the trusted key set (``kid``, ``alg``) or, for DPoP, the
    proof's own ``jwk``; nothing in it is trusted until ``verify_compact`` succeeds.
    """
    if len(token) > max_length:
        raise JWSError("token too large")
    if not _COMPACT.fullmatch(token):
        raise JWSError("not a compact jws")
    segment = token.split(".", 1)[0]
    if len(segment) > _MEMO_HEADER_LENGTH:  # real headers are short: only those are memoised
        return _decode_object(segment, "header")
    header = _decode_header(segment)
    if header is None:  # lists or deeper objects: a parse of its own shares nothing
        return _decode_object(segment, "header")
    # a copy down to the nested ``jwk`` (whose members are scalars), so a caller can never
    # alter what the memo hands out next
    return {k: dict(v) if isinstance(v, dict) else v for k, v in header.items()}


#: Header segments up to this length are memoised (an ES256 DPoP header with its ``jwk`` is
#: about 300 characters, an RSA-4096 one about 900): the memo stays small whatever is sent.
_MEMO_HEADER_LENGTH = 1536


@functools.lru_cache(maxsize=1024)
def _decode_header(segment: str) -> dict[str, Any] | None:
    """Headers repeat (one per issuer key, one per DPoP key), so their parse is memoised.

    Only a header that a copy two levels deep copies entirely (no list, objects of scalars
    only: the usual DPoP and issuer headers) is kept; for any other the memo holds ``None``
    and the caller parses it afresh. A failed parse raises and is not cached.
    """
    header = _decode_object(segment, "header")
    for value in header.values():
        if isinstance(value, list) or (isinstance(value, dict) and any(isinstance(v, dict | list) for v in value.values())):
            return None
    return header


def algs_for_key(key: PublicKey, *, self_asserted: bool = False) -> frozenset[str]:
    """The algorithms a key may be used with (RFC 8725 §3.1: one key, one algorithm).

    A JWK that names its ``alg`` allows exactly that; otherwise EC and OKP keys are
    fixed by their curve (Ed25519 under either of its two names) and RSA keys from a
    trusted key set default to RS256. A ``self_asserted`` key — a DPoP proof's own
    ``jwk``, which is bound by its thumbprint and never trusted for anything else —
    may use any RSA signature algorithm the caller allows.
    """
    raw_alg = key.get("alg")
    declared = raw_alg if isinstance(raw_alg, str) else None
    if raw_alg is not None and declared is None:
        return frozenset()
    if isinstance(key, ECKey | OKPKey):
        implied = _CURVE_ALGS.get(key.curve_name, frozenset())
        if declared is not None:
            return frozenset({declared}) & implied
        return implied
    if key.raw_value.key_size < _MIN_RSA_BITS:
        return frozenset()
    if declared is not None:
        return frozenset({declared}) & _RSA_ALGS
    return _RSA_ALGS if self_asserted else frozenset({"RS256"})


#: RFC 8032 §5.1: the field prime of edwards25519 and the y coordinates of its eight points of
#: small order: 1 (the neutral point), -1 (order 2), 0 (order 4) and ±y8 (order 8; the value
#: in libsodium's small-order list, ``ge25519_has_small_order``).
_ED25519_P = 2**255 - 19
_ED25519_Y8 = int.from_bytes(bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"), "little")
#: Every 32-byte encoding of those points (RFC 8032 §5.1.2): either sign bit of ``x``, and ``y``
#: also as ``y + p`` where that fits in 255 bits (0 and 1 only), the non-canonical spellings
#: OpenSSL decodes alike. Fourteen in all; a set lookup is cheaper than reading ``y``.
_ED25519_SMALL_ORDER = frozenset(
    (y | sign << 255).to_bytes(32, "little")
    for y0 in (1, _ED25519_P - 1, 0, _ED25519_Y8, _ED25519_P - _ED25519_Y8)
    for y in (y0, y0 + _ED25519_P)
    if y < 2**255
    for sign in (0, 1)
)


def ed25519_small_order(key: OKPKey) -> bool:
    """Whether ``key`` is an Ed25519 public key of small order, which no signature may be checked with.

    OpenSSL verifies RFC 8032 §5.1.7 without the cofactor and accepts such a key: ``R`` the
    neutral point and ``S = 0`` then verify on every message whose ``[k]A`` is neutral — all of
    them for the neutral point, one in eight for a point of order 8 — so anyone can sign for
    it (RFC 8725 §3.4, validate cryptographic inputs). A DPoP ``jwk`` of that kind would make
    the token bound to it usable by whoever holds the token.
    """
    public = key.public_key
    return isinstance(public, Ed25519PublicKey) and public.public_bytes_raw() in _ED25519_SMALL_ORDER


def rsa_modulus_too_small(jwk: Mapping[str, Any]) -> bool:
    """True for an RSA JWK under 2048 bits, checked before the key is imported at all."""
    n = jwk.get("n")
    if not isinstance(n, str):
        return True
    try:
        return len(b64url_decode(n).lstrip(b"\x00")) < _MIN_RSA_BITS // 8
    except JWSError:
        return True


class _Registry(JWSRegistry):
    """Resolves the header name ``EdDSA`` to joserfc's RFC 9864 ``Ed25519`` model.

    They are the same signature over an Ed25519 key; joserfc only warns about the old
    name, and a warning on every verification is noise (or an error under ``-W error``).
    Which key types may use it is decided by ``algs_for_key``, before this is reached.
    """

    def get_alg(self, name: str) -> Any:
        if name == "EdDSA" and self.allowed and "EdDSA" in self.allowed:
            return _eddsa(self.algorithms["Ed25519"])
        return super().get_alg(name)


@functools.lru_cache(maxsize=1)
def _eddsa(ed25519: Any) -> Any:
    """joserfc's Ed25519 model under the name ``EdDSA``: a JWK that declares ``"alg": "EdDSA"``
    (as tether's JWKS and most others do) is checked against the algorithm's name."""
    model = copy.copy(ed25519)
    model.name = "EdDSA"
    return model


@functools.lru_cache(maxsize=64)
def _registry(alg: str, max_length: int) -> JWSRegistry:
    """A joserfc registry allowing exactly ``alg``, with tether's size caps."""
    registry = _Registry(algorithms=[alg], strict_check_header=False)
    registry.max_header_length = max_length
    registry.max_payload_length = max_length
    registry.max_signature_length = 1024
    return registry


def verify_compact(
    token: str,
    *,
    algorithms: Collection[str],
    allowed_headers: Collection[str],
    resolve_key: Callable[[Mapping[str, Any]], PublicKey],
    max_length: int,
    self_asserted_key: bool = False,
) -> VerifiedJWS:
    """Verify a compact JWS and return its header and claims, or raise ``JWSError``.

    ``resolve_key`` receives the (unverified) header and returns the key that must have
    signed it, from configuration or the proof's own ``jwk`` for DPoP; it raises
    ``JWSError`` when no trusted key matches. The header ``alg`` must be in
    ``algorithms`` and in the key's own family. After every gate, ES256 and Ed25519 are
    verified with pyca/cryptography directly (``jws_fast``), everything else by joserfc.
    """
    return _verify(token, algorithms, allowed_headers, resolve_key, max_length, self_asserted_key, fast=True)


def verify_compact_joserfc(
    token: str,
    *,
    algorithms: Collection[str],
    allowed_headers: Collection[str],
    resolve_key: Callable[[Mapping[str, Any]], PublicKey],
    max_length: int,
    self_asserted_key: bool = False,
) -> VerifiedJWS:
    """``verify_compact`` with every signature checked by joserfc: the reference the fast
    path is tested against and the benchmark's baseline, not a path tether itself takes."""
    return _verify(token, algorithms, allowed_headers, resolve_key, max_length, self_asserted_key, fast=False)


def _verify(
    token: str,
    algorithms: Collection[str],
    allowed_headers: Collection[str],
    resolve_key: Callable[[Mapping[str, Any]], PublicKey],
    max_length: int,
    self_asserted_key: bool,
    *,
    fast: bool,
) -> VerifiedJWS:
    header = peek_header(token, max_length=max_length)
    unexpected = set(header) - set(allowed_headers)
    if unexpected:
        raise JWSError(f"header parameter `{sorted(unexpected)[0]}` not allowed")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms or alg not in ASYMMETRIC_ALGS:
        raise JWSError(f"algorithm `{alg:.64}` not allowed" if isinstance(alg, str) else "algorithm is not a string")
    for name in _STRING_HEADERS & set(header):
        if not isinstance(header[name], str):
            raise JWSError(f"header parameter `{name}` is not a string")
    key = resolve_key(header)
    if not isinstance(key, ECKey | OKPKey | RSAKey) or alg not in algs_for_key(key, self_asserted=self_asserted_key):
        raise JWSError(f"algorithm `{alg}` does not match the key")
    if isinstance(key, OKPKey) and ed25519_small_order(key):
        raise JWSError("ed25519 key of small order")
    try:
        if fast and jws_fast.covers(key, header, alg):
            payload = jws_fast.verify(token, header, key, alg)
        else:
            payload = jws.deserialize_compact(token, key, algorithms=[alg], registry=_registry(alg, max_length)).payload
    except (JoseError, ValueError, TypeError) as exc:
        raise SignatureRejected(f"signature rejected: {type(exc).__name__}") from exc
    claims = jose_json_loads(payload)
    if not isinstance(claims, dict):
        raise JWSError("payload is not a json object")
    return VerifiedJWS(header=header, claims=claims)


def sign_compact(header: Mapping[str, Any], claims: Mapping[str, Any], key: PublicKey, alg: str) -> str:
    """Sign claims as a compact JWS with a private key of the matching family.

    ES256 and Ed25519 are signed with pyca/cryptography directly (``jws_fast``), byte for
    byte the token joserfc would make apart from ECDSA's random ``k``; anything else, or
    anything joserfc would refuse, goes through joserfc.
    """
    return _sign(header, claims, key, alg, fast=True)


def sign_compact_joserfc(header: Mapping[str, Any], claims: Mapping[str, Any], key: PublicKey, alg: str) -> str:
    """``sign_compact`` always through joserfc: the reference for tests and the benchmark."""
    return _sign(header, claims, key, alg, fast=False)


def _sign(header: Mapping[str, Any], claims: Mapping[str, Any], key: PublicKey, alg: str, *, fast: bool) -> str:
    payload = json.dumps(claims, separators=(",", ":"), ensure_ascii=True)
    if fast and jws_fast.signable(key, header, alg):
        return jws_fast.sign(header, payload.encode("ascii"), key, alg)
    return jws.serialize_compact(dict(header), payload, key, algorithms=[alg], registry=_registry(alg, 16384))
