"""Correctly signed JOSE objects whose members have an unexpected JSON type (issue 12, "no 500 on odd JSON types").

A *member* is a ``/``-separated path into a token's header or claims (``claims/act/sub``,
``header/jwk/kty``; ``/`` because claim names such as ``kubernetes.io`` hold dots), with the
JSON kinds it legitimately has. ``cases`` pairs every member with every other kind, so a test
parametrised over it covers member × kind exhaustively, and ``values(kind)`` is the
hypothesis strategy for one kind. Objects are signed here with the real private key
(pyca/cryptography, any header bytes), so it is the type check, not the signature, that
must refuse them. ``ProofKey`` is a DPoP key whose proofs can carry any member.
"""

from __future__ import annotations

import base64
import copy
import json
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc.jwk import ECKey, OKPKey

from helpers import ACCESS, JWT, SVC_B, SVC_C, TOKEN_EXCHANGE, RunningSts
from tether.rules.dpop import compute_ath
from tether.rules.jws import b64url_decode, strict_json_loads

__all__ = [
    "ACCESS_TOKEN",
    "KINDS",
    "PROOF",
    "Hop",
    "Member",
    "ProofKey",
    "case_id",
    "cases",
    "members",
    "obtain",
    "odd",
    "over",
    "resign",
    "sign_raw",
    "values",
    "with_member",
]

KINDS = ("null", "bool", "int", "float", "string", "list", "object", "nested")
NUMBER = frozenset({"int", "float"})
STRING = frozenset({"string"})
OBJECT = frozenset({"object"})

_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
_tree = st.recursive(
    _leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=6
)
_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "bool": st.booleans(),
    "int": st.integers() | st.integers(min_value=2**53, max_value=10**40),
    "float": st.floats(allow_nan=False, allow_infinity=False),
    "string": st.text(max_size=40),
    "list": st.lists(_leaf, max_size=4),
    "object": st.dictionaries(st.text(max_size=6), _leaf, max_size=4),
    # containers at least two levels deep: [{"k": ...}] or {"k": [...]}
    "nested": _tree.flatmap(lambda v: st.sampled_from([[{"k": v}], {"k": [v]}, [[v]]])),
}


def values(kind: str) -> st.SearchStrategy[Any]:
    return _VALUES[kind]


@dataclass(frozen=True)
class Member:
    """``path`` into ``header``/``claims``; ``valid`` kinds; ``seed`` members set first (the parents of a nested path)."""

    path: str
    valid: frozenset[str] = STRING
    seed: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.path


def members(part: str, names: Iterable[str], valid: frozenset[str] = STRING) -> list[Member]:
    return [Member(f"{part}/{name}", valid) for name in names]


def cases(of: Iterable[Member]) -> list[tuple[Member, str]]:
    """Every member with every JSON kind it must not have."""
    return [(member, kind) for member in of for kind in KINDS if kind not in member.valid]


def case_id(value: object) -> str:
    return str(value)


T = TypeVar("T", bound=Callable[..., Any])


def over(of: Iterable[Member], *, examples: int = 2) -> Callable[[T], T]:
    """Parametrise a test over ``cases(of)`` (arguments ``member``, ``kind``) and hand it hypothesis ``data``
    to draw the value with ``odd``: member × kind is exhaustive, the values are ``examples`` draws each."""

    def wrap(test: T) -> T:
        drawn = given(data=st.data())(test)
        bounded = settings(max_examples=examples, deadline=None)(drawn)
        return pytest.mark.parametrize(("member", "kind"), cases(of), ids=case_id)(bounded)  # type: ignore[no-any-return]  # hypothesis `settings(...)` returns Any

    return wrap


def odd(member: Member, kind: str, data: st.DataObject) -> tuple[Member, Any]:
    """``member`` with a value of ``kind`` drawn from ``data``."""
    return member, data.draw(values(kind), label="value")


def with_member(
    header: Mapping[str, Any], claims: Mapping[str, Any], member: Member, value: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Copies of ``header`` and ``claims`` with ``member``'s seed applied and its path set to ``value``."""
    parts = {"header": copy.deepcopy(dict(header)), "claims": copy.deepcopy(dict(claims))}
    for path, seed in member.seed.items():
        _put(parts, path, copy.deepcopy(seed))
    _put(parts, member.path, value)
    return parts["header"], parts["claims"]


def _put(parts: dict[str, dict[str, Any]], path: str, value: Any) -> None:
    names = path.split("/")
    node = parts[names[0]]
    for name in names[1:-1]:
        node = node[name]
    node[names[-1]] = value


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign_raw(header: Mapping[str, Any], claims: Mapping[str, Any], key: ECKey | OKPKey) -> str:
    """A compact JWS over exactly these members, signed by ``key`` (ES256 for P-256, else Ed25519)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    private = key.private_key
    if isinstance(private, ed25519.Ed25519PrivateKey):
        signature = private.sign(signing_input.encode())
    else:
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        r, s = decode_dss_signature(private.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{signing_input}.{_b64(signature)}"


class ProofKey:
    """An ES256 DPoP key (RFC 9449 §4.2) whose proofs may carry any header or claim member."""

    def __init__(self) -> None:
        self.private = ECKey.generate_key("P-256", private=True)
        self.jwk = dict(self.private.as_dict(private=False))
        self.jkt = self.private.thumbprint()
        self.nonce: str | None = None

    def members(self, method: str, url: str, *, access_token: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": dict(self.jwk)}
        claims: dict[str, Any] = {"jti": secrets.token_urlsafe(16), "htm": method, "htu": url, "iat": int(time.time())}
        if self.nonce is not None:
            claims["nonce"] = self.nonce
        if access_token is not None:
            claims["ath"] = compute_ath(access_token)
        return header, claims

    def proof(self, method: str, url: str, *, access_token: str | None = None, odd: tuple[Member, Any] | None = None) -> str:
        header, claims = self.members(method, url, access_token=access_token)
        if odd is not None:
            header, claims = with_member(header, claims, *odd)
        return sign_raw(header, claims, self.private)

    def post(
        self, http: httpx.Client, url: str, form: Mapping[str, str], *, odd: tuple[Member, Any] | None = None
    ) -> httpx.Response:
        """POST to an STS endpoint with a proof, retrying once on ``use_dpop_nonce`` (RFC 9449 §8)."""
        for _ in range(2):
            response = http.post(url, data=dict(form), headers={"DPoP": self.proof("POST", url, odd=odd)})
            if "dpop-nonce" in response.headers:
                self.nonce = response.headers["dpop-nonce"]
            if not (response.status_code == 400 and response.json().get("error") == "use_dpop_nonce"):
                break
        return response


#: Every member of a DPoP proof that tether reads (RFC 9449 §4.2-§4.3).
PROOF = [
    *members("header", ["typ", "alg", "kid"]),
    Member("header/jwk", OBJECT),
    *members("header", ["jwk/kty", "jwk/crv", "jwk/x", "jwk/y"]),
    *members("claims", ["jti", "htm", "htu", "nonce", "ath"]),
    *members("claims", ["iat", "exp", "nbf"], NUMBER),
]

#: Every member of a tether access token (RFC 9068 §2.2, RFC 8693 §4.1 ``act``, ``cnf.jkt``).
ACCESS_TOKEN = [
    *members("header", ["typ", "alg", "kid"]),
    *members("claims", ["iss", "sub", "aud", "jti", "client_id", "scope", "txn", "purp", "agt", "ckd", "akd", "ctd", "atd"]),
    *members("claims", ["exp", "iat", "nbf"], NUMBER),
    Member("claims/cnf", OBJECT),
    Member("claims/cnf/jkt"),
    Member("claims/act", OBJECT),
    Member("claims/act/sub", seed={"claims/act": {"sub": SVC_B}}),
    Member("claims/act/act", OBJECT, seed={"claims/act": {"sub": SVC_B}}),
    Member("claims/act/act/sub", seed={"claims/act": {"sub": SVC_B, "act": {"sub": SVC_C}}}),
]


def obtain(sts: RunningSts, http: httpx.Client, key: ProofKey, form: Mapping[str, str]) -> str:
    """An access token from ``sts`` for ``form``, bound to ``key``."""
    response = key.post(http, sts.token_url, form)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def hop_token(sts: RunningSts, http: httpx.Client, key: ProofKey, task_id: str, svid: str, audience: str) -> str:
    """The agent's session token (``svid`` for ``task_id``), then a hop token for ``audience``; both bound to ``key``."""
    session = obtain(sts, http, key, {"grant_type": TOKEN_EXCHANGE, "subject_token": svid, "subject_token_type": JWT,
                                      "task": task_id})  # fmt: skip
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": session, "subject_token_type": ACCESS, "resource": audience}
    return obtain(sts, http, key, form)


def resign(sts: RunningSts, token: str, odd: tuple[Member, Any] | None = None, *, ttl: int = 120) -> str:
    """``token``'s claims, times refreshed and ``odd`` applied, signed again with the STS's current key (a real key
    the verifier trusts: only the type check can refuse the result)."""
    ring = sts.sts.ctx.keyring.current
    now = int(time.time())
    claims = {**strict_json_loads(b64url_decode(token.split(".")[1])), "iat": now, "nbf": now, "exp": now + ttl}
    header: dict[str, Any] = {"typ": "at+jwt", "alg": ring.alg, "kid": ring.kid}
    if odd is not None:
        header, claims = with_member(header, claims, *odd)
    return sign_raw(header, claims, ring.private)  # type: ignore[arg-type]  # typed as any JWK; an EC or OKP key here


@dataclass(frozen=True)
class Hop:
    """A hop token for the audience of ``url``, bound to ``key``, and the client that calls ``url`` with it."""

    url: str
    token: str
    key: ProofKey
    http: httpx.Client

    def call(self, token: str, *, odd: tuple[Member, Any] | None = None) -> httpx.Response:
        """``GET url`` with ``token`` and a proof for it (``odd`` applied to the proof)."""
        proof = self.key.proof("GET", self.url, access_token=token, odd=odd)
        return self.http.get(self.url, headers={"Authorization": f"DPoP {token}", "DPoP": proof})
