"""Checks shared by every workload-JWT verifier (RFC 7519 §4.1, RFC 7523 §3, SPIFFE JWT-SVID §3).

Workload JWTs are bearer tokens, so the checks are tight: ``aud`` must name us, ``exp`` must
be present and near (a workload token valid for longer than ``max_lifetime`` is refused, so a
leaked one dies soon), and ``typ`` must not claim one of tether's own token kinds (different
kinds of JWT have mutually exclusive validation rules, RFC 8725 §3.12).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from tether.identity.jwks_cache import KeySource
from tether.model import IdentityKind, WorkloadIdentity
from tether.rules.dpop import numeric_date
from tether.rules.jws import JWSError, PublicKey, b64url_decode, peek_header, strict_json_loads, verify_compact

__all__ = [
    "MAX_WORKLOAD_JWT",
    "Acceptance",
    "IdentityError",
    "check_audience",
    "check_lifetime",
    "check_typ",
    "optional_jti",
    "optional_string",
    "token_hash",
    "unverified",
    "verify_signed",
]

MAX_WORKLOAD_JWT = 16 * 1024
_HEADERS = frozenset({"alg", "kid", "typ"})
_FOREIGN_TYPES = frozenset({"at+jwt", "application/at+jwt", "dpop+jwt", "application/dpop+jwt"})


class IdentityError(Exception):
    """Why a workload JWT was refused (for ``debug``; the wire text stays generic)."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", errors="replace")).hexdigest()


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims before verification, used only to choose the trusted key set.

    Both the router (``IdentityVerifier``) and the chosen verifier read them, so the last
    few parses are remembered; callers get copies.
    """
    header, claims = _unverified(token)
    return dict(header), dict(claims)


@functools.lru_cache(maxsize=32)
def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        header = peek_header(token, max_length=MAX_WORKLOAD_JWT)
        claims = strict_json_loads(b64url_decode(token.split(".")[1]))
    except JWSError as exc:
        raise IdentityError(str(exc)) from exc
    if not isinstance(claims, dict):
        raise IdentityError("claims are not a json object")
    return header, claims


def check_typ(header: Mapping[str, Any], allowed: Collection[str] | None = None) -> None:
    """``typ`` may be absent; when present (``null`` included) it is a string naming no tether token kind."""
    if "typ" not in header:
        return
    typ = header["typ"]
    if not isinstance(typ, str):
        raise IdentityError("typ is not a string")
    if typ.lower() in _FOREIGN_TYPES:
        raise IdentityError(f"typ `{typ:.64}` is not a workload token type")
    if allowed is not None and typ.upper() not in allowed:
        raise IdentityError(f"typ `{typ}` not allowed")


def check_audience(claims: Mapping[str, Any], accepted: Collection[str]) -> None:
    """``aud`` present and naming one of ``accepted`` (exact string comparison)."""
    aud = claims.get("aud")
    values = [aud] if isinstance(aud, str) else aud
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise IdentityError("aud missing or malformed")
    if not set(values) & set(accepted):
        raise IdentityError("aud does not name this issuer")


def check_lifetime(claims: Mapping[str, Any], *, now: float, skew: int, max_lifetime: int) -> int:
    """``exp`` required, in the future and at most ``max_lifetime`` away; returns ``exp``."""
    exp = numeric_date(claims.get("exp"))
    if exp is None:
        raise IdentityError("exp missing or not a numeric date")
    if now >= exp + skew:
        raise IdentityError("token has expired")
    if exp - now > max_lifetime:
        raise IdentityError(f"exp is more than {max_lifetime}s away")
    for name in ("iat", "nbf"):
        if name in claims:
            value = numeric_date(claims[name])
            if value is None:
                raise IdentityError(f"{name} is not a numeric date")
            if value > now + skew:
                raise IdentityError(f"{name} is in the future")
    return int(exp)


def optional_string(claims: Mapping[str, Any], name: str, *, max_length: int = 2048) -> str | None:
    """An optional string claim (RFC 7519 §4.1: ``iss``, ``jti``): absent, or a non-empty string —
    a ``null``, number, list or object in its place is malformed, never "absent"."""
    if name not in claims:
        return None
    value = claims[name]
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise IdentityError(f"{name} malformed")
    return value


def optional_jti(claims: Mapping[str, Any]) -> str | None:
    return optional_string(claims, "jti", max_length=256)


@dataclass(frozen=True)
class Acceptance:
    """What one kind of workload JWT must meet once its key source is chosen."""

    kind: IdentityKind
    algorithms: Collection[str]
    audiences: Collection[str]
    max_lifetime: int
    skew: int
    #: why a token is refused when no key of the source has its ``kid`` (``debug`` only)
    unknown_key: str = "no trusted key for kid"


async def verify_signed(
    token: str,
    header: Mapping[str, Any],
    keys: KeySource,
    accept: Acceptance,
    *,
    issuer: str,
    principal: Callable[[dict[str, Any]], str],
    now: float,
) -> WorkloadIdentity:
    """The tail every workload-JWT verifier shares: key lookup by ``kid`` in ``keys`` (never a key
    the token carries), signature (RFC 7515 §5.2), audience and lifetime (RFC 7519 §4.1.3-§4.1.5);
    then the identity, with ``principal`` read from the verified claims."""
    keyset = await keys.keys(kid=header.get("kid"), now=now)

    def resolve(h: Mapping[str, Any]) -> PublicKey:
        key = keyset.find(h.get("kid"))
        if key is None:
            raise JWSError(accept.unknown_key)
        return key

    try:
        verified = verify_compact(
            token, algorithms=accept.algorithms, allowed_headers=_HEADERS, resolve_key=resolve, max_length=MAX_WORKLOAD_JWT
        )
    except JWSError as exc:
        raise IdentityError(str(exc)) from exc
    claims = dict(verified.claims)
    check_audience(claims, accept.audiences)
    exp = check_lifetime(claims, now=now, skew=accept.skew, max_lifetime=accept.max_lifetime)
    return WorkloadIdentity(
        principal=principal(claims),
        kind=accept.kind,
        issuer=issuer,
        exp=exp,
        jti=optional_jti(claims),
        token_hash=token_hash(token),
        claims=claims,
    )
