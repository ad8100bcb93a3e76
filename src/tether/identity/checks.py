"""Checks shared by every workload-JWT verifier (RFC 7519 §4.1, RFC 7523 §3, SPIFFE JWT-SVID §3).

Workload JWTs are bearer tokens, so the checks are tight: ``aud`` must name us, ``exp`` must
be present and near (a workload token valid for longer than ``max_lifetime`` is refused, so a
leaked one dies soon), and ``typ`` must not claim one of tether's own token kinds (different
kinds of JWT have mutually exclusive validation rules, RFC 8725 §3.12).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Collection, Mapping
from typing import Any

from tether.rules.dpop import numeric_date
from tether.rules.jws import JWSError, b64url_decode, peek_header, strict_json_loads

__all__ = [
    "MAX_WORKLOAD_JWT",
    "IdentityError",
    "check_audience",
    "check_lifetime",
    "check_typ",
    "optional_jti",
    "optional_string",
    "token_hash",
    "unverified",
]

MAX_WORKLOAD_JWT = 16 * 1024
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
