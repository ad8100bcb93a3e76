"""Review of the JWS fast path (issue 20) from outside: SECURITY.md JWT-04, JWT-07, JWT-14, AUX-07, K-01..03, DPOP-06/07.

An attacker holds a valid token or proof and the public keys, any key of their own (any curve,
any bytes) and can send any bytes. Every verification here runs both ``verify_compact`` (ES256
and Ed25519 on pyca/cryptography) and ``verify_compact_joserfc`` (joserfc for every signature)
and asserts the same outcome, with a positive control on the same fixture first, so a refusal
cannot come from a broken fixture. Findings (each was a failing test before its fix):

- in a header or claim set, a lone UTF-16 surrogate escape (``"\\ud800"``) parsed into a
  ``str`` that cannot be encoded as UTF-8 (RFC 8725 §3.7); a DPoP proof whose ``jti`` held one
  was a 500 at ``POST /token``, before any credential was checked (``jose_json_loads``; the
  general ``strict_json_loads`` leaves both to its callers' own answers);
- a JSON number beyond a double's range (``1e400``) parsed as ``inf`` though the constants
  ``Infinity``/``NaN`` were refused (RFC 8259 §6);
- ``peek_header`` copied the memoised header one level deep: a list or a deeper object in it
  was shared with the memo, so a caller changing it changed every later parse of that segment
  (and a deep copy of one nested ~550 levels, short enough to be memoised, recursed too far);
- an Ed25519 public key of small order (RFC 8032 §5.1.5 decodes it; OpenSSL verifies
  cofactorless) accepts the forged signature ``R = neutral, S = 0`` for 1/8 to all messages:
  a DPoP ``jwk`` of that kind made a bound token usable by anyone (JWT-04).
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc.jwk import ECKey, OKPKey

from tether.errors import InvalidDPoPProof
from tether.rules import jws_fast
from tether.rules.dpop import check_proof
from tether.rules.jws import (
    JWSError,
    PublicKey,
    SignatureRejected,
    ed25519_small_order,
    jose_json_loads,
    peek_header,
    sign_compact,
    sign_compact_joserfc,
    strict_json_loads,
    verify_compact,
    verify_compact_joserfc,
)

MAX = 8192
HEADERS = frozenset({"typ", "alg", "kid", "jwk"})
CLAIMS: dict[str, Any] = {"iss": "https://sts.example", "sub": "spiffe://example.org/agent", "exp": 1_700_000_300}
PROPERTY = settings(max_examples=200, deadline=None)
#: 2^255 - 19, the field of Ed25519 (RFC 8032 §5.1)
ED25519_P = 2**255 - 19


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def js(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Signer:
    """A real key pair and the algorithm it signs with; ``token`` signs exactly the bytes given."""

    private: Any
    public: PublicKey
    alg: str

    def sign(self, signing_input: bytes) -> bytes:
        if self.alg == "ES256":
            r, s = decode_dss_signature(self.private.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return bytes(self.private.sign(signing_input))

    def token(self, claims: Mapping[str, Any] | bytes = CLAIMS, header: Mapping[str, Any] | bytes | None = None) -> str:
        raw_header = header if isinstance(header, bytes) else js(header or {"typ": "at+jwt", "alg": self.alg, "kid": "k1"})
        h, p = b64u(raw_header), b64u(claims if isinstance(claims, bytes) else js(claims))
        return f"{h}.{p}.{b64u(self.sign(f'{h}.{p}'.encode()))}"


def _p256() -> Signer:
    private = ec.generate_private_key(ec.SECP256R1())
    return Signer(private, ECKey.import_key(private.public_key()), "ES256")


def _ed25519() -> Signer:
    private = ed25519.Ed25519PrivateKey.generate()
    return Signer(private, OKPKey.import_key(private.public_key()), "EdDSA")


P256 = _p256()
ED = _ed25519()
FAST = (P256, ED)
FAST_IDS = ("ES256", "EdDSA")


def outcome(verify: Callable[..., Any], token: str, key: PublicKey, *, max_length: int = MAX) -> tuple[Any, ...]:
    try:
        verified = verify(token, algorithms={"ES256", "EdDSA", "Ed25519"}, allowed_headers=HEADERS,
                          resolve_key=lambda _header: key, max_length=max_length, self_asserted_key=True)  # fmt: skip
    except JWSError as exc:
        return (type(exc), str(exc))
    return ("accepted", dict(verified.header), dict(verified.claims))


def both(token: str, key: PublicKey, *, max_length: int = MAX) -> tuple[Any, ...]:
    """The outcome ``token`` has on the fast path, asserted equal to joserfc's."""
    fast = outcome(verify_compact, token, key, max_length=max_length)
    assert fast == outcome(verify_compact_joserfc, token, key, max_length=max_length), token
    return fast


def refused(result: tuple[Any, ...]) -> bool:
    """Refused at the gate (``JWSError`` itself), not as a bad signature, and not accepted."""
    return result[0] is JWSError


@pytest.mark.parametrize("signer", FAST, ids=FAST_IDS)
def test_control_fixtures_take_the_fast_path_and_verify(signer: Signer) -> None:
    header = {"typ": "at+jwt", "alg": signer.alg, "kid": "k1"}
    assert jws_fast.covers(signer.public, header, signer.alg)
    assert both(signer.token(), signer.public) == ("accepted", header, CLAIMS)


# ---------------------------------------------------------------------------------------------
# JWT-07: text that is not Unicode scalar values (lone surrogate escapes) never becomes a str
# ---------------------------------------------------------------------------------------------

LONE_SURROGATES = [
    pytest.param(b'{"jti":"\\ud800"}', id="high"),
    pytest.param(b'{"jti":"\\uDFFF"}', id="low-upper-case"),
    pytest.param(b'{"jti":"a\\udc00b"}', id="inside"),
    pytest.param(b'{"jti":"\\udc00\\ud800"}', id="pair-reversed"),
    pytest.param(b'{"jti":"\\ud800\\u0041"}', id="high-then-letter"),
    pytest.param(b'{"jti":"\\ud83d\\ud83d\\ude00"}', id="high-then-pair"),
    pytest.param(b'{"\\ud800":1}', id="member-name"),
    pytest.param(b'{"act":{"sub":["x","\\udbff"]}}', id="nested"),
]


@pytest.mark.parametrize("data", LONE_SURROGATES)
def test_JWT_07_lone_surrogate_escape_refused(data: bytes) -> None:
    with pytest.raises(JWSError, match="utf-8"):
        jose_json_loads(data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b'{"jti":"\\ud83d\\ude00"}', {"jti": "\U0001f600"}, id="pair"),
        pytest.param(b'{"jti":"\\uD83D\\uDE00"}', {"jti": "\U0001f600"}, id="pair-upper-case"),
        pytest.param(b'{"jti":"\\\\ud800"}', {"jti": "\\ud800"}, id="escaped-backslash"),
        pytest.param(b'{"jti":"\\u00e9\\ud7ff\\ue000"}', {"jti": "\u00e9\ud7ff\ue000"}, id="around-the-range"),
        pytest.param('{"jti":"\U0001f600"}'.encode(), {"jti": "\U0001f600"}, id="raw-utf-8"),
    ],
)
def test_JWT_07_surrogate_pairs_and_lookalikes_accepted(data: bytes, expected: dict[str, str]) -> None:
    assert jose_json_loads(data) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b'{"a":"\\ud800"}', {"a": "\ud800"}, id="lone-surrogate"),
        pytest.param(b'{"a":1e400}', {"a": float("inf")}, id="overflow"),
    ],
)
def test_strict_json_loads_outside_jose_leaves_these_to_its_callers(data: bytes, expected: dict[str, Any]) -> None:
    """Request bodies and tool arguments keep their callers' own answers (``rules.tool_call``'s
    "lone surrogate", the gateway's MCP refusals, which echo the request ``id``)."""
    assert strict_json_loads(data) == expected
    with pytest.raises(JWSError):
        jose_json_loads(data)


@PROPERTY
@given(text=st.text(st.characters(codec=None, exclude_categories=()), max_size=8))
def test_JWT_07_any_string_round_trips_or_is_refused_for_its_surrogates(text: str) -> None:
    """Whatever ``\\u`` escapes a sender writes, a parsed string is always encodable as UTF-8."""
    data = json.dumps({"v": text}, ensure_ascii=True).encode()
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        with pytest.raises(JWSError):
            jose_json_loads(data)
    else:
        assert jose_json_loads(data) == {"v": text}


@pytest.mark.parametrize("signer", FAST, ids=FAST_IDS)
@pytest.mark.parametrize("data", LONE_SURROGATES)
def test_JWT_07_DPOP_03_lone_surrogate_in_signed_claims_refused_on_both_paths(signer: Signer, data: bytes) -> None:
    assert both(signer.token(CLAIMS), signer.public)[0] == "accepted"
    assert refused(both(signer.token(data), signer.public))


@pytest.mark.parametrize("signer", FAST, ids=FAST_IDS)
def test_JWT_07_lone_surrogate_in_header_refused_before_key_lookup(signer: Signer) -> None:
    header = b'{"typ":"at+jwt","alg":"%s","kid":"k\\ud800"}' % signer.alg.encode()
    looked_up: list[Mapping[str, Any]] = []

    def resolve(h: Mapping[str, Any]) -> PublicKey:
        looked_up.append(h)
        return signer.public

    for verify in (verify_compact, verify_compact_joserfc):
        with pytest.raises(JWSError, match="utf-8"):
            verify(signer.token(header=header), algorithms={signer.alg}, allowed_headers=HEADERS, resolve_key=resolve,
                   max_length=MAX)  # fmt: skip
        with pytest.raises(JWSError, match="utf-8"):
            peek_header(signer.token(header=header), max_length=MAX)
    assert looked_up == []


# ---------------------------------------------------------------------------------------------
# numbers: a JSON number never parses to a non-finite float (RFC 8259 §6), ints are bounded
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b'{"exp":1e400}', id="exp-overflow"),
        pytest.param(b'{"iat":-1e400}', id="iat-negative-overflow"),
        pytest.param(b'{"nbf":1E+309}', id="upper-case-exponent"),
        pytest.param(b'{"exp":1' + b"0" * 309 + b".0}", id="long-mantissa"),
        pytest.param(b'{"act":{"n":[1,2e999]}}', id="nested"),
    ],
)
def test_number_overflowing_a_double_refused(data: bytes) -> None:
    with pytest.raises(JWSError, match="number"):
        jose_json_loads(data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b'{"exp":1.7976931348623157e308}', 1.7976931348623157e308, id="largest-double"),
        pytest.param(b'{"exp":1e-400}', 0.0, id="underflow-is-zero"),
        pytest.param(b'{"exp":-0.0}', -0.0, id="negative-zero"),
        pytest.param(b'{"exp":1700000300.5}', 1700000300.5, id="fraction"),
        pytest.param(b'{"exp":' + b"9" * 4300 + b"}", int("9" * 4300), id="int-at-the-digit-limit"),
    ],
)
def test_finite_numbers_accepted(data: bytes, expected: float) -> None:
    assert jose_json_loads(data) == {"exp": expected}


def test_int_over_the_digit_limit_refused_not_raised() -> None:
    with pytest.raises(JWSError):
        jose_json_loads(b'{"exp":' + b"9" * 4301 + b"}")


@pytest.mark.parametrize("signer", FAST, ids=FAST_IDS)
def test_number_overflow_in_signed_claims_refused_on_both_paths(signer: Signer) -> None:
    assert both(signer.token({**CLAIMS, "exp": 1.5e308}), signer.public)[0] == "accepted"
    assert refused(both(signer.token(b'{"exp":1e400}'), signer.public))


# ---------------------------------------------------------------------------------------------
# nesting and duplicates on both paths: a RecursionError is a refusal, never a 500 (AUX-07)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signer", FAST, ids=FAST_IDS)
@pytest.mark.parametrize("depth", [sys.getrecursionlimit() - 50, sys.getrecursionlimit() * 2, 60_000])
def test_deeply_nested_claims_refused_or_parsed_never_raised(signer: Signer, depth: int) -> None:
    claims = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
    result = both(signer.token(claims), signer.public, max_length=4 * depth + 1024)
    assert result[0] in ("accepted", JWSError)
    if depth > sys.getrecursionlimit():
        assert refused(result)


@pytest.mark.parametrize("signer", FAST, ids=FAST_IDS)
def test_deeply_nested_header_refused(signer: Signer) -> None:
    depth = sys.getrecursionlimit() * 2
    header = b'{"typ":"at+jwt","alg":"%s","kid":' % signer.alg.encode() + b"[" * depth + b"]" * depth + b"}"
    assert refused(both(signer.token(header=header), signer.public, max_length=8 * depth + 1024))


@pytest.mark.parametrize("signer", FAST, ids=FAST_IDS)
@pytest.mark.parametrize(
    "claims",
    [
        pytest.param(b'{"act":{"sub":"a","act":{"sub":"b","sub":"c"}}}', id="deep"),
        pytest.param(b'{"cnf":{"jkt":"a","jk\\u0074":"b"}}', id="escaped-in-nested"),
        pytest.param(b'{"aud":[{"x":1},{"y":1,"y":1}]}', id="in-list"),
    ],
)
def test_AUX_07_duplicate_names_at_any_depth_refused_on_both_paths(signer: Signer, claims: bytes) -> None:
    result = both(signer.token(claims), signer.public)
    assert refused(result) and "duplicate" in result[1]


@pytest.mark.parametrize("signer", FAST, ids=FAST_IDS)
def test_AUX_07_duplicate_name_inside_a_dpop_jwk_refused_on_both_paths(signer: Signer) -> None:
    header = b'{"typ":"dpop+jwt","alg":"%s","jwk":{"kty":"EC","kty":"OKP"}}' % signer.alg.encode()
    result = both(signer.token(header=header), signer.public)
    assert refused(result) and "duplicate" in result[1]


# ---------------------------------------------------------------------------------------------
# the header memo: no caller can change what a later parse of the same segment returns
# ---------------------------------------------------------------------------------------------


def test_peek_header_nested_containers_are_not_shared_with_the_memo() -> None:
    jwk = {"kty": "EC", "crv": "P-256", "x": "a" * 43, "y": "b" * 43, "key_ops": ["verify"], "ext": {"n": [1]}}
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk, "crit": ["x"]}
    token = P256.token(header=js(header))
    first = peek_header(token, max_length=MAX)
    first["jwk"]["key_ops"].append("sign")
    first["jwk"]["ext"]["n"].append(2)
    first["crit"].clear()
    assert peek_header(token, max_length=MAX) == header


def test_verified_header_nested_containers_are_not_shared_with_the_memo() -> None:
    jwk = dict(P256.public.as_dict(private=False), key_ops=["verify"])
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}
    token = P256.token(header=js(header))
    for verify in (verify_compact, verify_compact_joserfc):
        verified = verify(token, algorithms={"ES256"}, allowed_headers=HEADERS, resolve_key=lambda _h: P256.public,
                          max_length=MAX)  # fmt: skip
        verified.header["jwk"]["key_ops"].append("encrypt")
    assert peek_header(token, max_length=MAX)["jwk"]["key_ops"] == ["verify"]


@pytest.mark.parametrize("depth", [100, 400, 550])
def test_nested_header_short_enough_to_be_memoised_never_raises(depth: int) -> None:
    """A header under the memo's length may nest hundreds of levels: copying it must not recurse."""
    header = b'{"typ":"at+jwt","alg":"ES256","kid":"k1","crit":' + b"[" * depth + b"]" * depth + b"}"
    token = P256.token(header=header)
    assert len(token.split(".")[0]) <= 1536
    for _ in range(2):
        first = peek_header(token, max_length=MAX)
        assert json.dumps(first["crit"]) == "[" * depth + "]" * depth
        first["crit"].append(1)
    assert refused(both(token, P256.public))  # ``crit`` is not an allowed header name


def test_one_tokens_parse_does_not_affect_another_with_the_same_header() -> None:
    """Two tokens sharing a header segment (same key, same kid): a refused one leaves the other intact."""
    good = P256.token()
    forged = good.rsplit(".", 1)[0] + "." + b64u(bytes(64))
    for _ in range(2):
        assert both(forged, P256.public)[0] is SignatureRejected
        assert both(good, P256.public) == ("accepted", {"typ": "at+jwt", "alg": "ES256", "kid": "k1"}, CLAIMS)


# ---------------------------------------------------------------------------------------------
# JWT-04 / DPOP-06: Ed25519 keys of small order (they verify forged signatures) are refused
# ---------------------------------------------------------------------------------------------

#: y of the two points of order 8 (±y8): the other torsion points have y = 1, -1 or 0
_Y8 = int.from_bytes(bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"), "little")


def _encoding(y: int, negative: int = 0) -> bytes:
    return (y | negative << 255).to_bytes(32, "little")


_SMALL_ORDER_Y = [
    ("neutral", 1),
    ("order-2", ED25519_P - 1),
    ("order-4", 0),
    ("order-8", _Y8),
    ("order-8-other", ED25519_P - _Y8),
    ("neutral-non-canonical", ED25519_P + 1),
    ("order-4-non-canonical", ED25519_P),
]
SMALL_ORDER = [
    pytest.param(_encoding(y, negative), id=f"{name}{'-neg' if negative else ''}")
    for name, y in _SMALL_ORDER_Y
    for negative in (0, 1)
]
#: R = the neutral point, S = 0: valid under a small-order key whenever [k]A is the neutral point
FORGED_SIGNATURE = _encoding(1) + bytes(32)


def _forgeable_message(public: bytes) -> bytes:
    """A message OpenSSL accepts ``FORGED_SIGNATURE`` on under ``public`` (found within a few tries)."""
    key = Ed25519PublicKey.from_public_bytes(public)
    for i in range(512):
        claims = js({**CLAIMS, "jti": f"forged-{i}"})
        header = js({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": {"kty": "OKP", "crv": "Ed25519", "x": b64u(public)}})
        signing_input = f"{b64u(header)}.{b64u(claims)}".encode()
        try:
            key.verify(FORGED_SIGNATURE, signing_input)
        except InvalidSignature:
            continue
        return signing_input
    raise AssertionError("no forgeable message: not a small-order key")


@pytest.mark.parametrize("public", SMALL_ORDER)
def test_JWT_04_DPOP_06_small_order_ed25519_key_refused_on_both_paths(public: bytes) -> None:
    signing_input = _forgeable_message(public)  # the key really accepts a forgery (OpenSSL, no JOSE)
    forged = f"{signing_input.decode()}.{b64u(FORGED_SIGNATURE)}"
    key = OKPKey.import_key({"kty": "OKP", "crv": "Ed25519", "x": b64u(public)})
    result = both(forged, key)
    assert refused(result) and "small order" in result[1]


def test_DPOP_06_forged_proof_under_the_neutral_point_refused_by_check_proof() -> None:
    """The whole RFC 9449 §4.3 check: a proof nobody signed, under a ``jwk`` of the neutral point."""
    now = 1_700_000_000
    url = "https://sts.example/token"
    claims = {"jti": "forged-proof", "htm": "POST", "htu": url, "iat": now}

    def proof(jwk: Mapping[str, Any], sign: Callable[[bytes], bytes]) -> str:
        h = b64u(js({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk}))
        signing_input = f"{h}.{b64u(js(claims))}"
        return f"{signing_input}.{b64u(sign(signing_input.encode()))}"

    honest = {"kty": "OKP", "crv": "Ed25519", "x": b64u(ED.private.public_key().public_bytes_raw())}
    assert check_proof(proof(honest, ED.sign), method="POST", url=url, now=now).jti == "forged-proof"
    neutral = {"kty": "OKP", "crv": "Ed25519", "x": b64u(_encoding(1))}
    forged = proof(neutral, lambda _m: FORGED_SIGNATURE)
    Ed25519PublicKey.from_public_bytes(_encoding(1)).verify(FORGED_SIGNATURE, forged.rsplit(".", 1)[0].encode())
    with pytest.raises(InvalidDPoPProof) as info:
        check_proof(forged, method="POST", url=url, now=now)
    assert info.value.debug == "ed25519 key of small order"


@PROPERTY
@given(seed=st.binary(min_size=32, max_size=32))
def test_JWT_04_honest_ed25519_keys_are_not_small_order(seed: bytes) -> None:
    key = OKPKey.import_key(ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key())
    assert not ed25519_small_order(key)


def test_JWT_04_control_an_honest_ed25519_key_still_verifies_and_refuses_the_forgery() -> None:
    raw = ED.private.public_key().public_bytes_raw()
    header = js({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": {"kty": "OKP", "crv": "Ed25519", "x": b64u(raw)}})
    assert both(ED.token(header=header), ED.public)[0] == "accepted"
    forged = ED.token(header=header).rsplit(".", 1)[0] + "." + b64u(FORGED_SIGNATURE)
    assert both(forged, ED.public)[0] is SignatureRejected


# ---------------------------------------------------------------------------------------------
# JWT-14: the compact form is ASCII base64url only, on both paths
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signer", FAST, ids=FAST_IDS)
@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda t: t + "\n", id="trailing-newline"),
        pytest.param(lambda t: " " + t, id="leading-space"),
        pytest.param(lambda t: t.replace(".", ".\r\n", 1), id="crlf-inside"),
        pytest.param(lambda t: t.replace("A", "\uff21", 1) if "A" in t else "\uff21" + t, id="fullwidth-letter"),
        pytest.param(lambda t: t[:-1] + "\u0663", id="arabic-digit"),
        pytest.param(lambda t: t + "=", id="padding"),
        pytest.param(lambda t: t.replace("-", "+").replace("_", "/") if ("-" in t or "_" in t) else t + "+", id="std-alphabet"),
        pytest.param(lambda t: t + ".", id="fourth-empty-segment"),
        pytest.param(lambda t: t.replace(".", "..", 1), id="empty-segment"),
    ],
)
def test_JWT_14_non_compact_spellings_refused_on_both_paths(signer: Signer, mutate: Callable[[str], str]) -> None:
    token = signer.token()
    assert both(token, signer.public)[0] == "accepted"
    assert refused(both(mutate(token), signer.public))


@pytest.mark.parametrize("signer", FAST, ids=FAST_IDS)
def test_JWT_07_non_ascii_header_and_claims_agree_on_both_paths(signer: Signer) -> None:
    header = {"typ": "at+jwt", "alg": signer.alg, "kid": "clé-\u2603-\U0001f511"}
    claims = {**CLAIMS, "purp": "résumé \u2713 \U0001f600"}
    raw_header = json.dumps(header, ensure_ascii=False).encode()
    assert both(signer.token(json.dumps(claims, ensure_ascii=False).encode(), raw_header), signer.public) == (
        "accepted", header, claims)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the signer's header memo: keyed by content, never by identity, and never crossing types
# ---------------------------------------------------------------------------------------------


def _signing_key(signer: Signer) -> PublicKey:
    return (ECKey if signer.alg == "ES256" else OKPKey).import_key(signer.private)


def _first_two(token: str) -> str:
    return token.rsplit(".", 1)[0]


@pytest.mark.parametrize("signer", FAST, ids=FAST_IDS)
def test_signer_memo_sees_a_header_mutated_after_signing(signer: Signer) -> None:
    key = _signing_key(signer)
    header: dict[str, Any] = {"typ": "at+jwt", "alg": signer.alg, "kid": "k1"}
    first = sign_compact(header, CLAIMS, key, signer.alg)
    header["kid"] = "k2"
    second = sign_compact(header, CLAIMS, key, signer.alg)
    assert peek_header(first, max_length=MAX)["kid"] == "k1" and peek_header(second, max_length=MAX)["kid"] == "k2"
    assert _first_two(second) == _first_two(sign_compact_joserfc(header, CLAIMS, key, signer.alg))
    jwk_header: dict[str, Any] = {"typ": "dpop+jwt", "alg": signer.alg, "jwk": {"kty": "x", "n": ["a"]}}
    before = sign_compact(jwk_header, CLAIMS, key, signer.alg)
    jwk_header["jwk"]["n"].append("b")
    after = sign_compact(jwk_header, CLAIMS, key, signer.alg)
    assert peek_header(before, max_length=MAX)["jwk"]["n"] == ["a"]
    assert peek_header(after, max_length=MAX)["jwk"]["n"] == ["a", "b"]


class _Text(str):
    """A ``str`` subclass: serialised by its characters, never memoised under a plain ``str``'s entry."""

    def __hash__(self) -> int:
        return hash("k1")

    def __eq__(self, other: object) -> bool:
        return True


@pytest.mark.parametrize("signer", FAST, ids=FAST_IDS)
def test_signer_memo_is_not_poisoned_by_values_that_compare_equal(signer: Signer) -> None:
    key = _signing_key(signer)
    plain = {"typ": "at+jwt", "alg": signer.alg, "kid": "k1"}
    sign_compact(plain, CLAIMS, key, signer.alg)  # the plain header is now memoised
    odd = {"typ": "at+jwt", "alg": signer.alg, "kid": _Text("attacker")}
    assert peek_header(sign_compact(odd, CLAIMS, key, signer.alg), max_length=MAX)["kid"] == "attacker"
    assert peek_header(sign_compact(plain, CLAIMS, key, signer.alg), max_length=MAX)["kid"] == "k1"


@pytest.mark.parametrize("signer", FAST, ids=FAST_IDS)
@pytest.mark.parametrize("kid", [1, True, None, ["k1"], {"k": "1"}])
def test_signer_non_string_header_members_refused_as_joserfc_refuses(signer: Signer, kid: object) -> None:
    key = _signing_key(signer)
    header = {"typ": "at+jwt", "alg": signer.alg, "kid": kid}
    assert not jws_fast.signable(key, header, signer.alg)
    errors = []
    for sign in (sign_compact, sign_compact_joserfc):
        with pytest.raises(Exception) as info:
            sign(header, CLAIMS, key, signer.alg)
        errors.append((type(info.value), str(info.value)))
    assert errors[0] == errors[1]
