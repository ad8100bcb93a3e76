"""RFC 9449 §4.3 DPoP proof checks, ``htu`` normalisation and ``ath`` (§4.2, §6.1).

``check_proof`` performs every check of §4.3 that needs no state: shape, ``typ``, asymmetric
``alg`` allowlist, public ``jwk`` only, signature, ``htm``, ``htu`` (normalised per RFC 3986
§6.2.2/§6.2.3), the ``iat`` window and ``ath``. The stateful checks (nonce, ``jti`` replay)
are done by the caller with the values this returns, so a nonce challenge never spends a proof.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import re
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey

from tether.errors import InvalidDPoPProof
from tether.model import DPoPProof
from tether.rules.jws import JWSError, PublicKey, rsa_modulus_too_small, verify_compact

__all__ = [
    "DEFAULT_DPOP_ALGS",
    "MAX_PROOF_LENGTH",
    "check_proof",
    "compute_ath",
    "is_type",
    "normalize_htu",
    "numeric_date",
    "parse_public_jwk",
    "replay_key",
]

DEFAULT_DPOP_ALGS = ("ES256", "ES384", "EdDSA", "Ed25519", "PS256", "RS256")
MAX_PROOF_LENGTH = 8192
_PROOF_HEADERS = frozenset({"typ", "alg", "jwk", "kid"})
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_KEY_CLASSES: Mapping[str, type[ECKey] | type[OKPKey] | type[RSAKey]] = {"EC": ECKey, "OKP": OKPKey, "RSA": RSAKey}
_UNRESERVED = re.compile(r"%([0-9A-Fa-f]{2})")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def is_type(value: object, expected: str) -> bool:
    """RFC 7515 §4.1.9 ``typ``: a media type, case-insensitive, ``application/`` optional."""
    if not isinstance(value, str):
        return False
    lowered = value.lower()
    return lowered == expected or lowered == "application/" + expected


def numeric_date(value: object) -> float | None:
    """RFC 7519 §2 NumericDate: a finite non-negative JSON number (never a bool or string)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int) and not 0 <= value <= 2**53:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return float(value)


def compute_ath(access_token: str) -> str:
    """RFC 9449 §4.2: base64url(SHA-256(ASCII access token)), unpadded."""
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def replay_key(jkt: str, jti: str) -> str:
    """A fixed-size, hashed replay-cache key for a proof (RFC 9449 §11.1)."""
    return hashlib.sha256(f"dpop\x00{jkt}\x00{jti}".encode()).hexdigest()


def _normalize_percent(path: str) -> str:
    def fix(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        if char.isascii() and (char.isalnum() or char in "-._~"):
            return char
        return "%" + match.group(1).upper()

    return _UNRESERVED.sub(fix, path)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4."""
    output: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if len(output) > 1:
                output.pop()
        elif segment != ".":
            output.append(segment)
    result = "/".join(output)
    if path.endswith(("/.", "/..")):
        result += "/"
    return result if result.startswith("/") else "/" + result


@functools.lru_cache(maxsize=1024)
def normalize_htu(url: str) -> str:
    """Normalise an HTTP URI for ``htu`` comparison (RFC 9449 §4.3 item 9).

    Scheme and host are lower-cased, the default port is dropped, an empty path is
    ``/``, percent-encodings are normalised and dot-segments removed; query and
    fragment are ignored. A trailing ``/`` still makes a different path.
    """
    if not url.isascii() or any(c.isspace() for c in url):
        raise ValueError("htu must be printable ascii")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.username is not None:
        raise ValueError("htu must be an http(s) uri with a host")
    host = _normalize_percent(parts.hostname).lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    return f"{scheme}://{netloc}{_remove_dot_segments(_normalize_percent(parts.path or '/'))}"


def parse_public_jwk(jwk: object) -> PublicKey:
    """The proof's ``jwk``: an asymmetric public key only (RFC 9449 §4.3 item 7).

    An agent signs every proof with the same key, so the parsed key is memoised by the
    JWK's canonical JSON: the same members always parse to the same key.
    """
    return _jwk_and_thumbprint(jwk)[0]


def _jwk_and_thumbprint(jwk: object) -> tuple[PublicKey, str]:
    if not isinstance(jwk, dict):
        raise InvalidDPoPProof("invalid dpop proof", debug="jwk is not a json web key")
    # an EC or OKP public JWK is a few string members: memoised by them, without serialising
    if len(jwk) <= _MEMO_FLAT_MEMBERS and all(_plain(k) and _plain(v) for k, v in jwk.items()):
        items = tuple(sorted(jwk.items()))
        if sum(len(k) + len(v) for k, v in items) <= _MEMO_FLAT_CHARS:
            return _parse_public_jwk(_parse_flat_jwk(items))
    try:
        canonical = json.dumps(jwk, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidDPoPProof("invalid dpop proof", debug="jwk is not a json web key") from exc
    if len(canonical) > _MEMO_JWK_LENGTH:  # an RSA-4096 JWK is about 750 characters
        return _parse_public_jwk.__wrapped__(canonical)
    return _parse_public_jwk(canonical)


#: JWKs up to this length are memoised; with the entry bound that caps the memo's size
#: whatever keys (and extra members) callers send before their proof is verified.
_MEMO_JWK_LENGTH = 1200
#: flat JWKs (printable ASCII string members only) memoised by their members: at most this
#: many, this long — their canonical JSON stays under ``_MEMO_JWK_LENGTH`` (escaping a ``"`` or
#: ``\\`` doubles it, six members add 38 characters), so ``_parse_public_jwk`` memoises them too
_MEMO_FLAT_MEMBERS = 6
_MEMO_FLAT_CHARS = 500


def _plain(value: object) -> bool:
    return type(value) is str and value.isascii() and value.isprintable()


@functools.lru_cache(maxsize=2048)
def _parse_flat_jwk(items: tuple[tuple[str, str], ...]) -> str:
    """The canonical JSON of the JWK with these members once ``_parse_public_jwk`` has accepted
    it (refusals raise and are not cached): the same members always have the same canonical
    JSON, so this only saves serialising it on every proof. It keeps the string, not the key:
    parsed keys live in ``_parse_public_jwk`` alone, so however the two memos' contents drift
    apart, no more keys are held than that memo's bound."""
    canonical = json.dumps(dict(items), sort_keys=True, separators=(",", ":"))
    _parse_public_jwk(canonical)
    return canonical


@functools.lru_cache(maxsize=2048)
def _parse_public_jwk(canonical: str) -> tuple[PublicKey, str]:
    """Memoised: the key and its RFC 7638 thumbprint (refusals raise and are not cached)."""
    jwk = json.loads(canonical)
    if not isinstance(jwk.get("kty"), str):
        raise InvalidDPoPProof("invalid dpop proof", debug="jwk is not a json web key")
    if _PRIVATE_MEMBERS & set(jwk):
        raise InvalidDPoPProof("invalid dpop proof", debug="jwk contains private key material")
    key_class = _KEY_CLASSES.get(jwk["kty"])
    if key_class is None:
        raise InvalidDPoPProof("invalid dpop proof", debug=f"jwk kty `{jwk['kty']}` not allowed")
    if key_class is RSAKey and rsa_modulus_too_small(jwk):
        raise InvalidDPoPProof("invalid dpop proof", debug="rsa key under 2048 bits")
    try:
        key = key_class.import_key(jwk)
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise InvalidDPoPProof("invalid dpop proof", debug=f"jwk unusable: {type(exc).__name__}") from exc
    return key, key.thumbprint()


class _ProofKey:
    """Key resolver for a proof: the header's own ``jwk``, remembered for the thumbprint."""

    key: PublicKey | None = None
    thumbprint: str = ""

    def __call__(self, header: Mapping[str, Any]) -> PublicKey:
        try:
            self.key, self.thumbprint = _jwk_and_thumbprint(header.get("jwk"))
        except InvalidDPoPProof as exc:
            raise JWSError(exc.debug) from exc
        return self.key


def _claim_str(claims: Mapping[str, Any], name: str, *, max_length: int = 512) -> str | None:
    """``None`` when the claim is absent; when present (``null`` included) it must be a non-empty string."""
    if name not in claims:
        return None
    value = claims[name]
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise InvalidDPoPProof("invalid dpop proof", debug=f"claim `{name}` malformed")
    return value


def check_proof(
    proof: str,
    *,
    method: str,
    url: str,
    now: float,
    algorithms: Collection[str] = DEFAULT_DPOP_ALGS,
    max_age: int = 60,
    future_skew: int = 10,
    access_token: str | None = None,
) -> DPoPProof:
    """Verify a DPoP proof for a request to ``method`` ``url`` at time ``now``.

    ``max_age`` bounds how old ``iat`` may be and ``future_skew`` how far ahead of our
    clock (RFC 9449 §4.3 item 11). With ``access_token`` the proof must carry the matching ``ath``
    (RFC 9449 §4.3 item 12). Raises ``InvalidDPoPProof``; the public text stays generic, ``debug``
    names the failed check.
    """
    resolver = _ProofKey()
    try:
        verified = verify_compact(
            proof,
            algorithms=algorithms,
            allowed_headers=_PROOF_HEADERS,
            resolve_key=resolver,
            max_length=MAX_PROOF_LENGTH,
            self_asserted_key=True,
        )
    except JWSError as exc:
        raise InvalidDPoPProof("invalid dpop proof", debug=str(exc)) from exc
    header, claims = verified.header, verified.claims
    if not is_type(header.get("typ"), "dpop+jwt"):
        raise InvalidDPoPProof("invalid dpop proof", debug="typ is not dpop+jwt")
    jti = _claim_str(claims, "jti", max_length=256)
    htm = _claim_str(claims, "htm", max_length=32)
    htu = _claim_str(claims, "htu", max_length=2048)
    iat = numeric_date(claims.get("iat"))
    if jti is None or htm is None or htu is None or iat is None:
        raise InvalidDPoPProof("invalid dpop proof", debug="missing or malformed jti, htm, htu or iat")
    if htm != method:
        raise InvalidDPoPProof("dpop proof htm does not match the request method", debug=f"htm `{htm}`")
    try:
        matches = normalize_htu(htu) == normalize_htu(url)
    except ValueError:
        matches = False
    if not matches:
        raise InvalidDPoPProof("dpop proof htu does not match the request uri", debug=f"htu `{htu:.200}`")
    if iat > now + future_skew or iat < now - max_age:
        raise InvalidDPoPProof("dpop proof iat is outside the acceptable window", debug=f"iat {iat} now {now}")
    for name in ("exp", "nbf"):
        if name in claims and numeric_date(claims[name]) is None:
            raise InvalidDPoPProof("invalid dpop proof", debug=f"claim `{name}` malformed")
    if "exp" in claims and float(claims["exp"]) < now - future_skew:
        raise InvalidDPoPProof("dpop proof has expired", debug="exp in the past")
    if "nbf" in claims and float(claims["nbf"]) > now + future_skew:
        raise InvalidDPoPProof("dpop proof is not yet valid", debug="nbf in the future")
    nonce = _claim_str(claims, "nonce", max_length=512)
    ath = _claim_str(claims, "ath", max_length=128)
    if access_token is not None and ath != compute_ath(access_token):
        raise InvalidDPoPProof("dpop proof ath does not match the access token", debug="ath mismatch or missing")
    assert resolver.key is not None
    return DPoPProof(
        jkt=resolver.thumbprint,
        jti=jti,
        htm=htm,
        htu=htu,
        iat=int(iat),
        alg=str(header["alg"]),
        nonce=nonce,
        ath=ath,
    )
