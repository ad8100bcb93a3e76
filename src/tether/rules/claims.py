"""RFC 9068 JWT access token claims: ``build_claims`` for the STS, ``check_access_token_claims`` for everyone.

The claim set is fixed: ``iss sub aud exp iat nbf jti client_id scope txn cnf`` plus ``act``
(RFC 8693 §4.1), ``purp``, ``agt``, ``ckd`` and ``akd``, and ``tsk`` (what the task has left, for
a federation peer's linked task) on task-bound tokens. The check is RFC 9068 §4 made strict:
exact ``iss`` (no substring match, PyJWT CVE-2024-53861), a single ``aud``, NumericDates that
are numbers and not booleans, bounded future ``iat``/``nbf`` and a bounded lifetime.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from tether.errors import InvalidToken, OAuthError
from tether.model import AccessToken, ApprovalClaim, TaskBudget, act_from_chain, chain_from_act
from tether.rules.dpop import is_type, numeric_date
from tether.rules.jws import JWSError, PublicKey, verify_compact
from tether.rules.principal import is_principal
from tether.rules.scope import format_scope, parse_scope

__all__ = [
    "MAX_ACCESS_TOKEN",
    "MAX_ACT_DEPTH",
    "Expected",
    "Grant",
    "build_claims",
    "check_access_token_claims",
    "cnf_claim",
    "verify_access_token",
]

#: Hard limit on ``act`` nesting accepted anywhere (SECURITY §4 "act depth ≤ 5").
MAX_ACT_DEPTH = 5
_GENERIC = "invalid access token"
_JKT = re.compile(r"[A-Za-z0-9_-]{43}")


@dataclass(frozen=True)
class Grant:
    """What a derived token will say; produced by ``rules.exchange``, signed by the STS."""

    sub: str
    aud: str
    scope: frozenset[str]
    exp: int
    client_id: str
    agent: str
    jkt: str | None
    txn: str | None
    actors: tuple[str, ...] = ()
    purp: str | None = None
    parent_jti: str | None = None
    #: the kind of identity the client and the agent proved (``IdentityKind`` values)
    client_kind: str = "unknown"
    agent_kind: str = "unknown"
    #: the identity source each proved (``WorkloadIdentity.trust_domain``)
    client_domain: str = ""
    agent_domain: str = ""
    #: RFC 8705 §3.1: the thumbprint of the client certificate the token is bound to (with or instead of ``jkt``)
    x5t: str | None = None
    #: the one tool call the token is for (``rules.approval.tool_call_context``), and the approval it was issued under
    tctx: str | None = None
    apr: ApprovalClaim | None = None
    #: what the task has left (claim ``tsk``): set on every task-bound token
    tsk: TaskBudget | None = None


def cnf_claim(jkt: str | None, x5t: str | None) -> dict[str, str]:
    """RFC 7800 ``cnf`` with the RFC 9449 §6.1 ``jkt`` and/or RFC 8705 §3.1 ``x5t#S256`` members."""
    cnf = {}
    if jkt:
        cnf["jkt"] = jkt
    if x5t:
        cnf["x5t#S256"] = x5t
    return cnf


def build_claims(grant: Grant, *, issuer: str, jti: str, now: int) -> dict[str, Any]:
    """The RFC 9068 §2.2 claim set for ``grant``; ``iat`` = ``nbf`` = ``now``."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": grant.sub,
        "aud": grant.aud,
        "exp": grant.exp,
        "iat": now,
        "nbf": now,
        "jti": jti,
        "client_id": grant.client_id,
        "scope": format_scope(grant.scope),
        "agt": grant.agent,
        "ckd": grant.client_kind,
        "akd": grant.agent_kind,
    }
    cnf = cnf_claim(grant.jkt, grant.x5t)
    if cnf:
        claims["cnf"] = cnf
    if grant.client_domain:
        claims["ctd"] = grant.client_domain
    if grant.agent_domain:
        claims["atd"] = grant.agent_domain
    if grant.txn is not None:
        claims["txn"] = grant.txn
    act = act_from_chain(grant.actors)
    if act is not None:
        claims["act"] = act
    if grant.purp is not None:
        claims["purp"] = grant.purp
    if grant.tctx is not None:
        claims["tctx"] = grant.tctx
    if grant.apr is not None:
        claims["apr"] = grant.apr.as_json()
    if grant.tsk is not None:
        claims["tsk"] = grant.tsk.as_json()
    return claims


def _invalid(debug: str) -> InvalidToken:
    return InvalidToken(_GENERIC, debug=debug)


def _string(claims: Mapping[str, Any], name: str, *, required: bool = True, max_length: int = 2048) -> str | None:
    """A string claim; an optional one may be absent, but when present (even as ``null``) it is a string."""
    if name not in claims and not required:
        return None
    value = claims.get(name)
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise _invalid(f"claim `{name}` missing or malformed")
    return value


def _date(claims: Mapping[str, Any], name: str) -> float:
    value = numeric_date(claims.get(name))
    if value is None:
        raise _invalid(f"claim `{name}` missing or not a numeric date")
    return value


@dataclass(frozen=True)
class Expected:
    """What a verifier expects of a tether access token (RFC 9068 §4).

    ``audience`` is the caller's own resource identifier; ``None`` means the caller
    checks the audience itself (the STS accepts several kinds of subject token).
    ``skew`` is the clock leeway in seconds; ``max_lifetime`` the longest ``exp - iat``.
    """

    issuer: str
    audience: str | None
    skew: int
    max_lifetime: int


def check_access_token_claims(
    header: Mapping[str, Any], claims: Mapping[str, Any], expected: Expected, *, now: float
) -> AccessToken:
    """Validate a tether access token's header and claims (signature already verified)."""
    issuer, audience, skew, max_lifetime = expected.issuer, expected.audience, expected.skew, expected.max_lifetime
    if not is_type(header.get("typ"), "at+jwt"):
        raise _invalid("typ is not at+jwt")
    if claims.get("iss") != issuer:
        raise _invalid("iss mismatch")
    aud = _string(claims, "aud")
    assert aud is not None
    if audience is not None and aud != audience:
        raise InvalidToken("access token audience is not this resource", debug=f"aud `{aud:.200}`")
    exp, iat = _date(claims, "exp"), _date(claims, "iat")
    nbf = _date(claims, "nbf") if "nbf" in claims else iat
    if now >= exp + skew:
        raise InvalidToken("access token has expired", debug=f"exp {exp} now {now}")
    if nbf > now + skew or iat > now + skew:
        raise _invalid(f"iat/nbf in the future: iat {iat} nbf {nbf} now {now}")
    if exp - iat > max_lifetime:
        raise _invalid(f"lifetime {exp - iat} exceeds {max_lifetime}")
    sub, jti, client_id = _string(claims, "sub"), _string(claims, "jti", max_length=128), _string(claims, "client_id")
    assert sub is not None and jti is not None and client_id is not None
    scope_claim = claims.get("scope", "")
    if not isinstance(scope_claim, str):
        raise _invalid("scope is not a string")
    try:
        scope = parse_scope(scope_claim)
    except OAuthError as exc:
        raise _invalid("scope malformed") from exc
    jkt, x5t = _cnf(claims)
    actors = chain_from_act(claims["act"], max_depth=MAX_ACT_DEPTH) if "act" in claims else ()
    if actors is None:
        raise _invalid("act malformed or too deep")
    agent = _string(claims, "agt")
    assert agent is not None
    if not all(is_principal(p) for p in (sub, client_id, agent, *actors)):
        raise _invalid("principal malformed")
    return AccessToken(
        iss=issuer,
        sub=sub,
        aud=aud,
        exp=int(exp),
        iat=int(iat),
        nbf=int(nbf),
        jti=jti,
        client_id=client_id,
        scope=scope,
        txn=_string(claims, "txn", required=False, max_length=128),
        jkt=jkt,
        agent=agent,
        actors=actors,
        purp=_string(claims, "purp", required=False, max_length=512),
        client_kind=_kind(claims, "ckd"),
        agent_kind=_kind(claims, "akd"),
        client_domain=_string(claims, "ctd", required=False) or "",
        agent_domain=_string(claims, "atd", required=False) or "",
        x5t=x5t,
        tctx=_tctx(claims),
        apr=_apr(claims),
        tsk=_tsk(claims),
    )


def _tctx(claims: Mapping[str, Any]) -> str | None:
    """``tctx``: absent, or a SHA-256 digest (43 base64url characters)."""
    if "tctx" not in claims:
        return None
    value = claims["tctx"]
    if not isinstance(value, str) or not _JKT.fullmatch(value):
        raise _invalid("tctx malformed")
    return value


def _apr(claims: Mapping[str, Any]) -> ApprovalClaim | None:
    """``apr``: absent, or ``{"id", "by", "at"}`` — the approval, its approver (a principal) and the time."""
    if "apr" not in claims:
        return None
    value = claims["apr"]
    if (
        not isinstance(value, dict)
        or set(value) != {"id", "by", "at"}
        or not isinstance(value["id"], str)
        or not 0 < len(value["id"]) <= 64
        or not is_principal(value["by"])
        or isinstance(value["at"], bool)
        or not isinstance(value["at"], int)
    ):
        raise _invalid("apr malformed")
    return ApprovalClaim(id=value["id"], by=value["by"], at=value["at"])


#: bounds of ``tsk`` members: a depth never exceeds the ``act`` limit's order, a count fits 32 bits
_TSK_MAX_DEPTH, _TSK_MAX_TOKENS = 64, 2**31 - 1


def _tsk(claims: Mapping[str, Any]) -> TaskBudget | None:
    """``tsk``: absent, or exactly ``{"exp", "depth", "tokens"}``, each a non-negative integer
    (``tokens`` at least one); anything else is malformed, never read as "no limit"."""
    if "tsk" not in claims:
        return None
    value = claims["tsk"]
    if not isinstance(value, dict) or set(value) != {"exp", "depth", "tokens"}:
        raise _invalid("tsk malformed")
    exp, depth, tokens = value["exp"], value["depth"], value["tokens"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (exp, depth, tokens)):
        raise _invalid("tsk malformed")
    if not (0 < exp < 2**53 and 0 <= depth <= _TSK_MAX_DEPTH and 1 <= tokens <= _TSK_MAX_TOKENS):
        raise _invalid("tsk out of range")
    return TaskBudget(exp=exp, depth=depth, tokens=tokens)


def _cnf(claims: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``cnf`` (RFC 7800 §3.1): absent, or ``jkt`` and/or ``x5t#S256``, each a SHA-256 thumbprint.

    An unknown confirmation method is refused rather than ignored: a verifier that skipped a
    member it did not understand would honour the token without the proof it demands."""
    if "cnf" not in claims:
        return None, None
    cnf = claims["cnf"]
    if (
        not isinstance(cnf, dict)
        or not cnf
        or not set(cnf) <= {"jkt", "x5t#S256"}
        or not all(isinstance(v, str) and _JKT.fullmatch(v) for v in cnf.values())
    ):
        raise _invalid("cnf malformed or uses an unsupported confirmation method")
    return cnf.get("jkt"), cnf.get("x5t#S256")


def _kind(claims: Mapping[str, Any], name: str) -> str:
    """``ckd``/``akd``: which kind of identity the principal proved when the chain began."""
    value = claims.get(name, "unknown")
    if not isinstance(value, str) or value not in KINDS:
        raise _invalid(f"claim `{name}` is not a principal kind")
    return str(value)


#: the kinds a principal can have (``tether.model.IdentityKind``), ``federated`` (a federation
#: peer's principal, renamed ``fed:<peer>/…``), or unknown (not said)
KINDS = frozenset({"spiffe", "oidc", "client", "federated", "unknown"})
_AT_HEADERS = frozenset({"typ", "alg", "kid"})
MAX_ACCESS_TOKEN = 8192


def verify_access_token(
    token: str,
    expected: Expected,
    *,
    resolve_key: Callable[[Mapping[str, Any]], PublicKey],
    algorithms: Collection[str],
    now: float,
) -> AccessToken:
    """Signature (RFC 9068 §4: asymmetric only, ``kid`` from the issuer's JWKS) then claims.

    Tokens over 8 KB are refused before decoding (SECURITY §4 "Token ≤ 8 KB at RS").
    """
    try:
        verified = verify_compact(
            token, algorithms=algorithms, allowed_headers=_AT_HEADERS, resolve_key=resolve_key, max_length=MAX_ACCESS_TOKEN
        )
    except JWSError as exc:
        raise _invalid(str(exc)) from exc
    return check_access_token_claims(verified.header, verified.claims, expected, now=now)
