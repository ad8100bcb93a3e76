"""The JWS fast path (``tether.rules.jws_fast``) against joserfc: SECURITY.md §2.1 A-03, §2.5 K-01..03, JWT-01/07/14, AUX-07.

Every case runs ``verify_compact`` (ES256 and Ed25519 on pyca/cryptography directly) and
``verify_compact_joserfc`` (the same gates, joserfc's ``deserialize_compact`` for every
signature) on the same token and key, and asserts the same outcome: both accept with equal
header and claims, or both refuse with the same exception class and message. Tokens are made
with real keys and mutated byte by byte; each family's unmutated token is first shown to take
the path under test (``covers``) and to verify, so agreement cannot come from both refusing a
broken fixture. Signing is held to joserfc byte for byte (Ed25519) or in its first two
segments (ES256, whose signatures are randomised).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc.jwk import ECKey, OKPKey, RSAKey

from tether.rules import jws_fast
from tether.rules.jws import (
    ASYMMETRIC_ALGS,
    JWSError,
    PublicKey,
    sign_compact,
    sign_compact_joserfc,
    verify_compact,
    verify_compact_joserfc,
)

MAX = 8192
HEADERS = frozenset({"typ", "alg", "kid", "jwk", "cty", "crit", "b64", "x5c", "x5t", "jku"})
CLAIMS: dict[str, Any] = {"iss": "https://sts.example", "sub": "spiffe://example.org/agent", "exp": 1_700_000_300}
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
ED25519_L = 2**252 + 27742317777372353535851937790883648493
PROPERTY = settings(max_examples=150, deadline=None)


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def js(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def raw_sign(private: Any, alg: str, signing_input: bytes) -> bytes:
    """A JWS signature made with pyca/cryptography alone (no JOSE library in the way)."""
    if alg in ("EdDSA", "Ed25519"):
        return bytes(private.sign(signing_input))
    if alg.startswith("ES"):
        digest = {"256": hashes.SHA256(), "384": hashes.SHA384()}[alg[2:]]
        r, s = decode_dss_signature(private.sign(signing_input, ec.ECDSA(digest)))
        size = (private.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    assert alg == "RS256"
    return bytes(private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256()))


@dataclass(frozen=True)
class Family:
    private: Any
    public: PublicKey
    alg: str
    fast: bool

    def token(self, claims: Mapping[str, Any] | bytes = CLAIMS, /, **header: Any) -> str:
        h = b64u(js({"typ": "at+jwt", "alg": self.alg, "kid": "k1", **header}))
        p = b64u(claims if isinstance(claims, bytes) else js(claims))
        return f"{h}.{p}.{b64u(raw_sign(self.private, self.alg, f'{h}.{p}'.encode()))}"


def _ec(curve: ec.EllipticCurve, alg: str, fast: bool) -> Family:
    private = ec.generate_private_key(curve)
    return Family(private, ECKey.import_key(private.public_key()), alg, fast)


def _ed(alg: str) -> Family:
    private = ed25519.Ed25519PrivateKey.generate()
    return Family(private, OKPKey.import_key(private.public_key()), alg, True)


def _rsa() -> Family:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Family(private, RSAKey.import_key(private.public_key()), "RS256", False)


P256 = _ec(ec.SECP256R1(), "ES256", True)
P256_OTHER = _ec(ec.SECP256R1(), "ES256", True)
P384 = _ec(ec.SECP384R1(), "ES384", False)
ED = _ed("EdDSA")
ED_NEW_NAME = Family(ED.private, ED.public, "Ed25519", True)
ED_OTHER = _ed("EdDSA")
RSA = _rsa()
FAMILIES = (P256, P384, ED, ED_NEW_NAME, RSA)
FAMILY_IDS = ("ES256", "ES384", "EdDSA", "Ed25519", "RS256")
FAST = (P256, ED, ED_NEW_NAME)
FAST_IDS = ("ES256", "EdDSA", "Ed25519")

Outcome = tuple[Any, ...]


def outcome(
    verify: Callable[..., Any],
    token: str,
    key: PublicKey,
    *,
    algorithms: frozenset[str] = ASYMMETRIC_ALGS,
    headers: frozenset[str] = HEADERS,
    max_length: int = MAX,
) -> Outcome:
    """What one path makes of ``token``: the verified header and claims, or the refusal."""
    try:
        verified = verify(
            token,
            algorithms=algorithms,
            allowed_headers=headers,
            resolve_key=lambda _header: key,
            max_length=max_length,
            self_asserted_key=True,
        )
    except JWSError as exc:
        return (type(exc).__name__, str(exc))
    return ("accepted", dict(verified.header), dict(verified.claims))


def same(token: str, key: PublicKey, **kwargs: Any) -> Outcome:
    """Both paths agree on ``token``; returns the shared outcome."""
    fast = outcome(verify_compact, token, key, **kwargs)
    reference = outcome(verify_compact_joserfc, token, key, **kwargs)
    assert fast == reference, token
    return fast


def accepted(result: Outcome) -> bool:
    return bool(result[0] == "accepted")


def with_signature(token: str, signature: bytes | str) -> str:
    h, p, _ = token.split(".")
    return f"{h}.{p}.{signature if isinstance(signature, str) else b64u(signature)}"


def rs(token: str) -> tuple[int, int]:
    sig = base64.urlsafe_b64decode(token.rsplit(".", 1)[1] + "==")
    return int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")


def rs_bytes(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


# ---------------------------------------------------------------------------------------------
# controls: which path each family takes, and that its unmutated token verifies on both
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_control_each_family_verifies_on_both_paths(family: Family) -> None:
    token = family.token()
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert jws_fast.covers(family.public, header, family.alg) is family.fast
    result = same(token, family.public)
    assert result == ("accepted", header, CLAIMS)


@pytest.mark.parametrize("family", FAST, ids=FAST_IDS)
def test_control_fast_path_returns_the_payload_itself(family: Family) -> None:
    """The fast module verifies on its own (not by falling through to joserfc)."""
    token = family.token()
    header = {"typ": "at+jwt", "alg": family.alg, "kid": "k1"}
    assert isinstance(family.public, ECKey | OKPKey)
    assert json.loads(jws_fast.verify(token, header, family.public, family.alg)) == CLAIMS


def test_A_03_p384_and_rsa_stay_on_joserfc() -> None:
    header = {"alg": "ES384"}
    assert not jws_fast.covers(P384.public, header, "ES384")
    assert not jws_fast.covers(RSA.public, {"alg": "RS256"}, "RS256")
    assert not jws_fast.covers(P384.public, {"alg": "ES256"}, "ES256")
    assert not jws_fast.covers(RSA.public, {"alg": "ES256"}, "ES256")
    assert not jws_fast.covers(P256.public, {"alg": "EdDSA"}, "EdDSA")


# ---------------------------------------------------------------------------------------------
# mutations of any character, truncation, extension, segment swaps
# ---------------------------------------------------------------------------------------------

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
families = st.sampled_from(FAMILIES)


@PROPERTY
@given(family=families, data=st.data())
def test_any_character_replaced(family: Family, data: st.DataObject) -> None:
    token = family.token()
    index = data.draw(st.integers(0, len(token) - 1))
    char = data.draw(st.sampled_from(_ALPHABET + ".=+/ "))
    mutated = token[:index] + char + token[index + 1 :]
    result = same(mutated, family.public)
    assert accepted(result) == (mutated == token)


@PROPERTY
@given(family=families, data=st.data())
def test_any_bit_flipped_in_a_decoded_segment(family: Family, data: st.DataObject) -> None:
    token = family.token()
    segments = token.split(".")
    which = data.draw(st.integers(0, 2))
    raw = bytearray(base64.urlsafe_b64decode(segments[which] + "=="))
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    segments[which] = b64u(bytes(raw))
    assert not accepted(same(".".join(segments), family.public))


@PROPERTY
@given(family=families, data=st.data())
def test_truncated_or_extended(family: Family, data: st.DataObject) -> None:
    token = family.token()
    cut = data.draw(st.integers(0, len(token) - 1))
    tail = data.draw(st.text(alphabet=_ALPHABET + ".", max_size=8))
    assert not accepted(same(token[:cut] + tail, family.public))
    if tail:
        assert not accepted(same(token + tail, family.public))


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
@pytest.mark.parametrize("order", [(0, 2, 1), (1, 0, 2), (2, 1, 0), (1, 2, 0), (2, 0, 1), (0, 0, 2), (0, 1, 1)])
def test_segments_swapped(family: Family, order: tuple[int, int, int]) -> None:
    segments = family.token().split(".")
    assert not accepted(same(".".join(segments[i] for i in order), family.public))


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_JWT_14_padding_and_non_zero_trailing_bits(family: Family) -> None:
    token = family.token()
    for which in range(3):
        segments = token.split(".")
        segment = segments[which]
        padded = segment + "=" * (-len(segment) % 4)
        if padded != segment:
            assert not accepted(same(".".join([*segments[:which], padded, *segments[which + 1 :]]), family.public))
        if len(segment) % 4:
            last = _ALPHABET.index(segment[-1])
            for twin in range(last + 1, last + (4 if len(segment) % 4 == 3 else 16)):
                mutated = [*segments[:which], segment[:-1] + _ALPHABET[twin], *segments[which + 1 :]]
                assert not accepted(same(".".join(mutated), family.public))


# ---------------------------------------------------------------------------------------------
# K-01 / K-02 / K-03: ECDSA signature values, lengths, encodings; another key's signature
# ---------------------------------------------------------------------------------------------

_SPECIAL = (0, 1, 2, P256_N - 1, P256_N, P256_N + 1, 2**256 - 1)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda r, s: bytes(64), id="K-01-zero"),
        pytest.param(lambda r, s: rs_bytes(0, s), id="K-01-r=0"),
        pytest.param(lambda r, s: rs_bytes(r, 0), id="K-01-s=0"),
        pytest.param(lambda r, s: rs_bytes(P256_N, s), id="K-02-r=n"),
        pytest.param(lambda r, s: rs_bytes(r, P256_N), id="K-02-s=n"),
        pytest.param(lambda r, s: rs_bytes(r + P256_N, s) if r + P256_N < 2**256 else rs_bytes(P256_N + 1, s), id="K-02-r+n"),
        pytest.param(lambda r, s: rs_bytes(r, s + P256_N) if s + P256_N < 2**256 else rs_bytes(r, P256_N + 1), id="K-02-s+n"),
        pytest.param(lambda r, s: rs_bytes(P256_N, P256_N + 1), id="K-02-r=n,s=n+1"),
        pytest.param(lambda r, s: rs_bytes(r, s)[:63], id="K-02-63-bytes"),
        pytest.param(lambda r, s: rs_bytes(r, s) + b"\x00", id="K-02-65-bytes"),
        pytest.param(lambda r, s: b"\x00" + rs_bytes(r, s), id="K-02-leading-zero"),
        pytest.param(lambda r, s: r.to_bytes(33, "big") + s.to_bytes(33, "big"), id="K-02-66-bytes"),
        pytest.param(lambda r, s: b"", id="K-02-empty"),
        pytest.param(lambda r, s: rs_bytes(r, s) * 20, id="K-02-1280-bytes"),
    ],
)
def test_K_01_K_02_ecdsa_signature_values(mutate: Callable[[int, int], bytes]) -> None:
    token = P256.token()
    r, s = rs(token)
    signature = mutate(r, s)
    result = same(with_signature(token, signature), P256.public)
    assert result[0] == ("SignatureRejected" if signature else "JWSError")  # an empty segment is not compact


@PROPERTY
@given(r=st.sampled_from(_SPECIAL) | st.integers(0, 2**256 - 1), s=st.sampled_from(_SPECIAL) | st.integers(0, 2**256 - 1))
def test_K_02_any_r_and_s(r: int, s: int) -> None:
    assert not accepted(same(with_signature(P256.token(), rs_bytes(r, s)), P256.public))


def test_K_02_der_signature_instead_of_raw() -> None:
    token = P256.token()
    h, p, _ = token.split(".")
    der = P256.private.sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256()))
    assert same(f"{h}.{p}.{b64u(der)}", P256.public)[0] == "SignatureRejected"


def test_K_03_high_s_twin_verifies_on_both_paths() -> None:
    """ECDSA malleability: (r, n - s) is a second valid signature; neither path normalises it."""
    token = P256.token()
    r, s = rs(token)
    twin = with_signature(token, rs_bytes(r, P256_N - s))
    assert twin != token
    assert same(twin, P256.public) == same(token, P256.public)
    assert accepted(same(twin, P256.public))


def test_ed25519_non_canonical_s_refused_on_both_paths() -> None:
    """RFC 8032 §5.1.7: S ≥ L is refused (the Ed25519 malleability a library may miss)."""
    token = ED.token()
    sig = base64.urlsafe_b64decode(token.rsplit(".", 1)[1] + "==")
    s = int.from_bytes(sig[32:], "little") + ED25519_L
    assert s < 2**256
    result = same(with_signature(token, sig[:32] + s.to_bytes(32, "little")), ED.public)
    assert result[0] == "SignatureRejected"


@pytest.mark.parametrize("length", [1, 32, 63, 65, 96, 128, 768])
def test_K_02_ed25519_signature_of_wrong_length(length: int) -> None:
    token = ED.token()
    sig = base64.urlsafe_b64decode(token.rsplit(".", 1)[1] + "==")
    assert same(with_signature(token, (sig * 13)[:length]), ED.public)[0] == "SignatureRejected"


def test_signature_segment_over_joserfc_cap_refused_alike() -> None:
    """joserfc caps the signature segment at 1024 characters before decoding it."""
    token = P256.token()
    result = same(with_signature(token, "A" * 1028), P256.public)
    assert result == ("SignatureRejected", "signature rejected: ExceededSizeError")
    assert same(with_signature(token, "A" * 1024), P256.public) == (
        "SignatureRejected",
        "signature rejected: BadSignatureError",
    )


@pytest.mark.parametrize(("family", "other"), [(P256, P256_OTHER), (ED, ED_OTHER)], ids=["ES256", "EdDSA"])
def test_signature_from_another_key(family: Family, other: Family) -> None:
    assert same(other.token(), family.public)[0] == "SignatureRejected"
    assert accepted(same(other.token(), other.public))


# ---------------------------------------------------------------------------------------------
# A-03 / JWT-01: algorithm swaps and keys that do not fit (curve, kty, JWK alg, use, key_ops)
# ---------------------------------------------------------------------------------------------

_ALGS = ("ES256", "ES384", "ES512", "EdDSA", "Ed25519", "RS256", "PS256", "HS256", "none", "es256", "EDDSA")


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
@pytest.mark.parametrize("alg", _ALGS)
def test_A_03_alg_swapped_in_header(family: Family, alg: str) -> None:
    """The header names another algorithm over the family's real signature (re-signed, so
    only the name is wrong): refused alike unless the name is the family's own."""
    h = b64u(js({"typ": "at+jwt", "alg": alg, "kid": "k1"}))
    p = b64u(js(CLAIMS))
    token = f"{h}.{p}.{b64u(raw_sign(family.private, family.alg, f'{h}.{p}'.encode()))}"
    result = same(token, family.public)
    own = {family.alg} | ({"EdDSA", "Ed25519"} if family.alg in ("EdDSA", "Ed25519") else set())
    assert accepted(result) == (alg in own)


def _ec_jwk(curve: ec.EllipticCurve, **extra: Any) -> tuple[Any, ECKey]:
    private = ec.generate_private_key(curve)
    jwk = dict(ECKey.import_key(private.public_key()).as_dict(private=False))
    return private, ECKey.import_key({**jwk, **extra})


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"alg": "ES256"}, id="alg-ES256"),
        pytest.param({"alg": "ES384"}, id="alg-ES384"),
        pytest.param({"use": "sig"}, id="use-sig"),
        pytest.param({"use": "enc"}, id="use-enc"),
        pytest.param({"key_ops": ["verify"]}, id="key_ops-verify"),
        pytest.param({"key_ops": ["sign"]}, id="key_ops-sign"),
        pytest.param({"key_ops": []}, id="key_ops-empty"),
        pytest.param({"key_ops": ["encrypt"]}, id="key_ops-encrypt"),
        pytest.param({"use": "enc", "key_ops": ["encrypt"]}, id="use-enc-key_ops-encrypt"),
        pytest.param({"key_ops": "verify"}, id="key_ops-string"),
        pytest.param({"use": ["sig"]}, id="use-list"),
        pytest.param({"alg": ""}, id="alg-empty"),
    ],
)
def test_A_03_p256_jwk_parameters(extra: dict[str, Any]) -> None:
    private, key = _ec_jwk(ec.SECP256R1(), **extra)
    family = Family(private, key, "ES256", True)
    token = family.token()
    result = same(token, key)
    assert accepted(result) == (extra in ({"alg": "ES256"}, {"use": "sig"}, {"key_ops": ["verify"]}, {"key_ops": "verify"}))
    # the key checks fire before the signature length check, and after it for key_ops
    for signature in (bytes(63), bytes(64)):
        same(with_signature(token, signature), key)


def test_A_03_p384_jwk_declaring_es256() -> None:
    """A P-384 key whose JWK says ES256 is never used for ES256 (nor ES384)."""
    private, key = _ec_jwk(ec.SECP384R1(), alg="ES256")
    for alg in ("ES256", "ES384"):
        token = Family(private, key, alg, False).token()
        assert same(token, key) == ("JWSError", f"algorithm `{alg}` does not match the key")


@pytest.mark.parametrize(
    "public",
    [
        pytest.param(OKPKey.import_key(x25519.X25519PrivateKey.generate().public_key()), id="X25519"),
        pytest.param(OKPKey.import_key(ed448.Ed448PrivateKey.generate().public_key()), id="Ed448"),
        pytest.param(P384.public, id="P-384"),
        pytest.param(ECKey.import_key(ec.generate_private_key(ec.SECP521R1()).public_key()), id="P-521"),
        pytest.param(RSA.public, id="RSA"),
    ],
)
@pytest.mark.parametrize("family", FAST, ids=FAST_IDS)
def test_A_03_fast_algs_with_a_key_of_another_curve_or_kind(family: Family, public: PublicKey) -> None:
    result = same(family.token(), public)
    assert result[0] == "JWSError"
    assert not jws_fast.covers(public, {"alg": family.alg}, family.alg)


@pytest.mark.parametrize("family", FAST, ids=FAST_IDS)
def test_private_key_as_the_verification_key(family: Family) -> None:
    key = ECKey.import_key(family.private) if family.alg == "ES256" else OKPKey.import_key(family.private)
    assert accepted(same(family.token(), key))


# ---------------------------------------------------------------------------------------------
# headers and payloads: JSON edge cases, names outside the fast path's reach
# ---------------------------------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


@PROPERTY
@given(family=st.sampled_from(FAST), extra=st.dictionaries(st.sampled_from(sorted(HEADERS - {"alg"})), _JSON, max_size=3))
def test_any_header_values(family: Family, extra: dict[str, Any]) -> None:
    """``jwk`` not an object, ``kid``/``typ`` not strings, ``crit``/``b64``/``x5c`` present …"""
    assert not ({"crit", "b64", "x5c", "x5t", "jku", "cty"} & set(extra)) or not jws_fast.covers(
        family.public, {"alg": family.alg, **extra}, family.alg
    )
    same(family.token(**extra), family.public)


@PROPERTY
@given(family=st.sampled_from(FAST), payload=_JSON)
def test_any_json_payload(family: Family, payload: Any) -> None:
    result = same(family.token(js(payload)), family.public)
    assert accepted(result) == isinstance(payload, dict)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b'{"a":1,"a":2}', id="AUX-07-duplicate"),
        pytest.param(b'{"a":"\xff"}', id="JWT-07-invalid-utf8"),
        pytest.param(b'{"a":"\xed\xa0\x80"}', id="JWT-07-encoded-surrogate"),
        pytest.param(b'\xef\xbb\xbf{"a":1}', id="utf8-bom"),
        pytest.param(b'{"a":NaN}', id="nan"),
        pytest.param(b'{"a":1} x', id="trailing-garbage"),
        pytest.param(b"", id="empty"),
        pytest.param(b" {} ", id="whitespace"),
        pytest.param(b'{"a":"\\ud800"}', id="escaped-lone-surrogate"),
        pytest.param(b"[" * 2000 + b"]" * 2000, id="deep-nesting"),
        pytest.param('{"ü":"☃"}'.encode(), id="utf8-text"),
    ],
)
@pytest.mark.parametrize("family", FAST, ids=FAST_IDS)
def test_payload_bytes_edge_cases(family: Family, payload: bytes) -> None:
    same(family.token(payload), family.public)


@pytest.mark.parametrize("family", FAST, ids=FAST_IDS)
def test_payload_with_invalid_base64_refused_before_the_signature(family: Family) -> None:
    """joserfc decodes the payload before it checks the signature: a bad payload segment
    under a bad signature is a ``DecodeError`` on both paths, not a ``BadSignatureError``."""
    h, _, sig = family.token().split(".")
    result = same(f"{h}.AB.{sig}", family.public)
    assert result == ("SignatureRejected", "signature rejected: DecodeError")


@pytest.mark.parametrize("family", FAST, ids=FAST_IDS)
def test_DPoP_jwk_header_not_an_object(family: Family) -> None:
    result = same(family.token(jwk="not a key"), family.public)
    assert result == ("SignatureRejected", "signature rejected: InvalidHeaderValueError")


@pytest.mark.parametrize("family", FAST, ids=FAST_IDS)
def test_max_length_cap_applies_alike(family: Family) -> None:
    token = family.token({**CLAIMS, "pad": "x" * 600})
    assert same(token, family.public, max_length=len(token))[0] == "accepted"
    assert same(token, family.public, max_length=len(token) - 1) == ("JWSError", "token too large")


# ---------------------------------------------------------------------------------------------
# signing: the fast signer's tokens against joserfc's
# ---------------------------------------------------------------------------------------------

_CLAIMS = st.dictionaries(st.text(max_size=12), _JSON, max_size=6)
_HEADER = st.fixed_dictionaries(
    {},
    optional={
        "typ": st.text(max_size=12),
        "kid": st.text(max_size=12),
        "jwk": st.dictionaries(st.text(max_size=4), st.text(max_size=8), max_size=3),  # a DPoP proof's shape
    },
)


def _signing_keys() -> dict[str, PublicKey]:
    return {
        "ES256": ECKey.import_key(P256.private),
        "EdDSA": OKPKey.import_key(ED.private),
        "Ed25519": OKPKey.import_key(ED.private),
    }


SIGNING = _signing_keys()


@PROPERTY
@given(alg=st.sampled_from(FAST_IDS), header=_HEADER, claims=_CLAIMS, alg_first=st.booleans())
def test_signed_tokens_match_joserfc(alg: str, header: dict[str, Any], claims: dict[str, Any], alg_first: bool) -> None:
    full = {"alg": alg, **header} if alg_first else {**header, "alg": alg}
    key = SIGNING[alg]
    assert jws_fast.signable(key, full, alg)
    fast = sign_compact(full, claims, key, alg)
    reference = sign_compact_joserfc(full, claims, key, alg)
    if alg == "ES256":
        assert fast.rsplit(".", 1)[0] == reference.rsplit(".", 1)[0]
        assert len(fast.rsplit(".", 1)[1]) == 86
    else:
        assert fast == reference
    for token in (fast, reference):
        for verify in (verify_compact, verify_compact_joserfc):
            assert outcome(verify, token, P256.public if alg == "ES256" else ED.public) == ("accepted", full, claims)


@pytest.mark.parametrize(
    ("header", "key", "alg"),
    [
        pytest.param({"alg": "ES384"}, SIGNING["ES256"], "ES256", id="header-alg-differs"),
        pytest.param({"alg": "ES256", "kid": 7}, SIGNING["ES256"], "ES256", id="kid-not-a-string"),
        pytest.param({"alg": "ES256", "jwk": "x"}, SIGNING["ES256"], "ES256", id="jwk-not-an-object"),
        pytest.param({"alg": "ES256", "crit": ["exp"]}, SIGNING["ES256"], "ES256", id="crit"),
        pytest.param({"alg": "ES256", "b64": False, "crit": ["b64"]}, SIGNING["ES256"], "ES256", id="b64"),
        pytest.param({"alg": "ES256"}, P256.public, "ES256", id="public-key"),
        pytest.param({"alg": "EdDSA"}, SIGNING["ES256"], "EdDSA", id="ec-key-for-eddsa"),
        pytest.param({"alg": "ES256"}, SIGNING["EdDSA"], "ES256", id="okp-key-for-es256"),
        pytest.param({"alg": "ES256"}, _ec_jwk(ec.SECP256R1(), use="enc")[1], "ES256", id="use-enc"),
    ],
)
def test_signing_outside_the_fast_path_is_joserfc(header: dict[str, Any], key: PublicKey, alg: str) -> None:
    """What ``signable`` turns away is signed (or refused) by joserfc on both entry points."""
    assert not jws_fast.signable(key, header, alg)
    outcomes = []
    for sign in (sign_compact, sign_compact_joserfc):
        try:
            token = sign(header, CLAIMS, key, alg)
        except Exception as exc:  # noqa: BLE001 - the comparison is of whatever joserfc raises
            outcomes.append((type(exc).__name__, str(exc)))
        else:
            outcomes.append(("signed", token.split(".")[0]))
    assert outcomes[0] == outcomes[1]


def test_signing_keys_with_key_ops_and_alg() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = dict(ECKey.import_key(private).as_dict(private=True))
    for extra, fast in (({"key_ops": ["sign"]}, True), ({"key_ops": ["verify"]}, False), ({"alg": "ES384"}, False)):
        key = ECKey.import_key({**jwk, **extra})
        assert jws_fast.signable(key, {"alg": "ES256"}, "ES256") is fast
