"""The JOSE gate (``tether.rules.jws``): SECURITY.md §2.1 A-*, §2.5 K-*, JWT-01/07/10/14, AUX-07, SVID-02.

Tokens are assembled by hand (base64url of exact bytes, signatures made with pyca/cryptography)
so the gate sees precisely the malformed input under test. Every negative test first checks
that a correctly formed token on the same key verifies (the conformance-suite "a correct
token still works" control), so a refusal cannot pass because the fixture was broken.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

from tether.rules.jws import (
    ASYMMETRIC_ALGS,
    JWSError,
    PublicKey,
    algs_for_key,
    b64url_decode,
    peek_header,
    sign_compact,
    strict_json_loads,
    verify_compact,
)

AT_HEADERS = frozenset({"typ", "alg", "kid"})
MAX = 8192
CLAIMS = {"iss": "https://sts.example", "sub": "spiffe://example.org/agent", "exp": 1_700_000_300}

# ---------------------------------------------------------------------------------------------
# token assembly
# ---------------------------------------------------------------------------------------------

_HASHES: Mapping[str, type[hashes.HashAlgorithm]] = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def js(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def raw_sign(private: Any, alg: str, signing_input: bytes) -> bytes:
    """A JWS signature for ``alg`` made directly with pyca/cryptography (no JOSE library checks)."""
    if alg == "EdDSA":
        return bytes(private.sign(signing_input))
    if alg.startswith("HS"):
        return hmac.new(private, signing_input, getattr(hashlib, "sha" + alg[2:])).digest()
    digest = _HASHES[alg[2:]]()
    if alg.startswith("ES"):
        r, s = decode_dss_signature(private.sign(signing_input, ec.ECDSA(digest)))
        size = (private.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if alg.startswith("RS"):
        return bytes(private.sign(signing_input, padding.PKCS1v15(), digest))
    if alg.startswith("PS"):
        return bytes(private.sign(signing_input, padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size), digest))
    raise AssertionError(alg)


def assemble(header: bytes | Mapping[str, Any], payload: bytes | Mapping[str, Any], private: Any, alg: str) -> str:
    """``header.payload.signature`` over the exact bytes given (dicts are compact JSON)."""
    h = b64u(header if isinstance(header, bytes) else js(header))
    p = b64u(payload if isinstance(payload, bytes) else js(payload))
    return f"{h}.{p}.{b64u(raw_sign(private, alg, f'{h}.{p}'.encode()))}"


def resolver(key: PublicKey, calls: list[Mapping[str, Any]] | None = None) -> Callable[[Mapping[str, Any]], PublicKey]:
    def resolve(header: Mapping[str, Any]) -> PublicKey:
        if calls is not None:
            calls.append(header)
        return key

    return resolve


def verify(
    token: str,
    key: PublicKey,
    *,
    algorithms: tuple[str, ...] = ("ES256",),
    allowed_headers: frozenset[str] = AT_HEADERS,
    max_length: int = MAX,
) -> dict[str, Any]:
    verified = verify_compact(
        token, algorithms=algorithms, allowed_headers=allowed_headers, resolve_key=resolver(key), max_length=max_length
    )
    return dict(verified.claims)


# ---------------------------------------------------------------------------------------------
# fixtures: one key per family, public halves as joserfc keys
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    private: Any
    public: PublicKey
    alg: str

    def good(self, claims: Mapping[str, Any] = CLAIMS, /, **header: Any) -> str:
        """``claims`` is positional only, so a header named ``claims`` stays a header."""
        return assemble({"typ": "at+jwt", "alg": self.alg, "kid": "k1", **header}, claims, self.private, self.alg)

    def check_good(self, **kwargs: Any) -> None:
        """Positive control: a correctly formed token on this key verifies."""
        kwargs.setdefault("algorithms", (self.alg,))
        assert verify(self.good(), self.public, **kwargs) == CLAIMS


def _ec_pair(curve: ec.EllipticCurve, alg: str) -> Pair:
    private = ec.generate_private_key(curve)
    return Pair(private, ECKey.import_key(private.public_key()), alg)


@pytest.fixture(scope="module")
def p256() -> Pair:
    return _ec_pair(ec.SECP256R1(), "ES256")


@pytest.fixture(scope="module")
def p384() -> Pair:
    return _ec_pair(ec.SECP384R1(), "ES384")


@pytest.fixture(scope="module")
def p521() -> Pair:
    return _ec_pair(ec.SECP521R1(), "ES512")


@pytest.fixture(scope="module")
def ed() -> Pair:
    private = ed25519.Ed25519PrivateKey.generate()
    return Pair(private, OKPKey.import_key(private.public_key()), "EdDSA")


@pytest.fixture(scope="module")
def rsa_private() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_pair(rsa_private: rsa.RSAPrivateKey) -> Pair:
    """An RSA key whose JWK declares ``alg: RS256``."""
    jwk = dict(RSAKey.import_key(rsa_private.public_key()).as_dict(private=False))
    return Pair(rsa_private, RSAKey.import_key({**jwk, "alg": "RS256"}), "RS256")


@pytest.fixture(scope="module")
def pairs(p256: Pair, p384: Pair, ed: Pair, rsa_pair: Pair) -> dict[str, Pair]:
    return {"p256": p256, "p384": p384, "ed25519": ed, "rsa": rsa_pair}


def test_positive_controls_every_family(p256: Pair, p384: Pair, p521: Pair, ed: Pair, rsa_pair: Pair) -> None:
    for pair in (p256, p384, p521, ed, rsa_pair):
        pair.check_good()


def test_eddsa_verification_emits_no_warning(ed: Pair) -> None:
    """tether allows EdDSA (DEFAULT_DPOP_ALGS, keyring SIGNING_ALGS); verifying one must not raise a library warning.

    Under ``-W error`` (this project's pytest config) a warning escaping ``verify_compact`` is an
    exception that is not ``JWSError``: a valid token would surface as a 5xx instead of verifying.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert verify(ed.good(), ed.public, algorithms=("EdDSA",)) == CLAIMS
    assert [str(w.message) for w in caught] == []


def test_sign_compact_round_trip(p256: Pair) -> None:
    private = ECKey.import_key(p256.private)
    token = sign_compact({"typ": "at+jwt", "alg": "ES256", "kid": "k1"}, CLAIMS, private, "ES256")
    assert verify(token, p256.public) == CLAIMS
    assert peek_header(token, max_length=MAX) == {"typ": "at+jwt", "alg": "ES256", "kid": "k1"}


# ---------------------------------------------------------------------------------------------
# A-01 alg none (JWT-01/02, ASVS 9.1.2)
# ---------------------------------------------------------------------------------------------

NONE_VARIANTS = ["none", "None", "NONE", "nOnE"]


@pytest.mark.parametrize("alg", NONE_VARIANTS)
@pytest.mark.parametrize("signature", ["empty", "real"])
def test_A_01_alg_none_variants_refused(p256: Pair, alg: str, signature: str) -> None:
    p256.check_good()
    h, p = b64u(js({"typ": "at+jwt", "alg": alg, "kid": "k1"})), b64u(js(CLAIMS))
    sig = "" if signature == "empty" else b64u(raw_sign(p256.private, "ES256", f"{h}.{p}".encode()))
    for algorithms in (("ES256",), ("ES256", alg)):  # not even a caller allowlisting it enables `none`
        with pytest.raises(JWSError):
            verify(f"{h}.{p}.{sig}", p256.public, algorithms=algorithms)


@pytest.mark.parametrize("alg", NONE_VARIANTS)
def test_A_01_alg_none_without_signature_segment_refused(p256: Pair, alg: str) -> None:
    p256.check_good()
    h, p = b64u(js({"alg": alg})), b64u(js(CLAIMS))
    for token in (f"{h}.{p}", f"{h}.{p}."):
        with pytest.raises(JWSError):
            verify(token, p256.public, algorithms=("ES256", alg))


def test_JWT_02_none_is_not_an_asymmetric_alg() -> None:
    assert not {"none", "None", "NONE"} & ASYMMETRIC_ALGS
    assert not {a for a in ASYMMETRIC_ALGS if a.startswith("HS")}


# ---------------------------------------------------------------------------------------------
# A-02 HMAC keyed with the public key, in every encoding (python-jose DER bypass, PyJWT CVE-2022-29217)
# ---------------------------------------------------------------------------------------------


def _self_signed_pem(private: Any) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer.example")])
    start = datetime(2024, 1, 1, tzinfo=UTC)
    algorithm = None if isinstance(private, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=365))
        .sign(private, algorithm)
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def public_encodings(pair: Pair) -> dict[str, bytes]:
    pub = pair.private.public_key()
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    jwk = dict(pair.public.as_dict(private=False))
    encodings = {
        "pem": pub.public_bytes(serialization.Encoding.PEM, spki),
        "pem-stripped": pub.public_bytes(serialization.Encoding.PEM, spki).strip(),
        "der": pub.public_bytes(serialization.Encoding.DER, spki),
        "jwk-json": json.dumps(jwk).encode(),
        "jwk-json-compact": json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode(),
        "openssh": pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
        "x509-pem": _self_signed_pem(pair.private),
    }
    if isinstance(pub, rsa.RSAPublicKey):
        encodings["pkcs1-pem"] = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    return encodings


@pytest.mark.parametrize("family", ["p256", "ed25519", "rsa"])
@pytest.mark.parametrize("hs_alg", ["HS256", "HS384", "HS512"])
def test_A_02_hmac_keyed_with_public_key_refused(pairs: dict[str, Pair], family: str, hs_alg: str) -> None:
    pair = pairs[family]
    pair.check_good()
    encodings = public_encodings(pair)
    assert encodings["openssh"].startswith((b"ecdsa-sha2-nistp256 ", b"ssh-ed25519 ", b"ssh-rsa "))
    verified = []
    for name, secret in encodings.items():
        token = assemble({"typ": "at+jwt", "alg": hs_alg, "kid": "k1"}, CLAIMS, secret, hs_alg)
        for algorithms in ((pair.alg,), (pair.alg, hs_alg)):  # not even a caller allowlisting the HMAC alg enables it
            try:
                verify(token, pair.public, algorithms=algorithms)
            except JWSError:
                continue
            verified.append((name, algorithms))
    assert verified == []


def test_A_02_symmetric_key_from_resolver_refused(p256: Pair) -> None:
    """Authlib CVE-2024-37568 / joserfc CVE-2026-49852: a resolver handing back an oct key never verifies."""
    p256.check_good()
    secret = b"k" * 32
    token = assemble({"typ": "at+jwt", "alg": "HS256", "kid": "k1"}, CLAIMS, secret, "HS256")
    oct_key = OctKey.import_key(secret)
    for algorithms in (("HS256",), ("ES256", "HS256")):
        with pytest.raises(JWSError):
            verify_compact(
                token,
                algorithms=algorithms,
                allowed_headers=AT_HEADERS,
                resolve_key=lambda _h: oct_key,  # type: ignore[arg-type,return-value]  # a secret key, on purpose
                max_length=MAX,
            )


# ---------------------------------------------------------------------------------------------
# A-03 alg / key mismatch (JWT-01: one key, one algorithm)
# ---------------------------------------------------------------------------------------------


def test_A_03_rs256_token_with_ec_key_refused(p256: Pair, rsa_pair: Pair) -> None:
    p256.check_good()
    rsa_pair.check_good()
    token = rsa_pair.good()
    with pytest.raises(JWSError):
        verify(token, p256.public, algorithms=("ES256", "RS256"))


def test_A_03_es256_token_with_rsa_key_refused(p256: Pair, rsa_pair: Pair) -> None:
    rsa_pair.check_good()
    with pytest.raises(JWSError):
        verify(p256.good(), rsa_pair.public, algorithms=("ES256", "RS256"))


def test_A_03_es384_for_p256_key_refused(p256: Pair) -> None:
    """A mathematically valid ECDSA-with-SHA-384 signature on a P-256 key is still the wrong algorithm."""
    p256.check_good()
    token = assemble({"typ": "at+jwt", "alg": "ES384", "kid": "k1"}, CLAIMS, p256.private, "ES384")
    with pytest.raises(JWSError):
        verify(token, p256.public, algorithms=("ES256", "ES384"))


def test_A_03_es256_for_p384_key_refused(p384: Pair) -> None:
    p384.check_good()
    token = assemble({"typ": "at+jwt", "alg": "ES256", "kid": "k1"}, CLAIMS, p384.private, "ES256")
    with pytest.raises(JWSError):
        verify(token, p384.public, algorithms=("ES256", "ES384"))


def test_A_03_eddsa_token_with_ec_key_refused(p256: Pair, ed: Pair) -> None:
    p256.check_good()
    ed.check_good()
    with pytest.raises(JWSError):
        verify(ed.good(), p256.public, algorithms=("ES256", "EdDSA"))


def test_A_03_ps256_on_rsa_key_declaring_rs256_refused(rsa_pair: Pair) -> None:
    rsa_pair.check_good()
    token = assemble({"typ": "at+jwt", "alg": "PS256", "kid": "k1"}, CLAIMS, rsa_pair.private, "PS256")
    with pytest.raises(JWSError):
        verify(token, rsa_pair.public, algorithms=("RS256", "PS256"))


def test_A_03_rs256_on_rsa_key_declaring_ps256_refused(rsa_private: rsa.RSAPrivateKey) -> None:
    jwk = dict(RSAKey.import_key(rsa_private.public_key()).as_dict(private=False))
    pair = Pair(rsa_private, RSAKey.import_key({**jwk, "alg": "PS256"}), "PS256")
    pair.check_good(algorithms=("RS256", "PS256"))
    token = assemble({"typ": "at+jwt", "alg": "RS256", "kid": "k1"}, CLAIMS, rsa_private, "RS256")
    with pytest.raises(JWSError):
        verify(token, pair.public, algorithms=("RS256", "PS256"))


def test_A_03_rsa_key_without_alg_is_rs256_only(rsa_private: rsa.RSAPrivateKey) -> None:
    pair = Pair(rsa_private, RSAKey.import_key(rsa_private.public_key()), "RS256")
    pair.check_good(algorithms=("RS256", "PS256"))
    for alg in ("PS256", "RS384", "RS512"):
        token = assemble({"typ": "at+jwt", "alg": alg, "kid": "k1"}, CLAIMS, rsa_private, alg)
        with pytest.raises(JWSError):
            verify(token, pair.public, algorithms=("RS256", "PS256", "RS384", "RS512"))


@pytest.mark.parametrize("alg", ["es256", "Es256", "ES256 ", "ES-256"])
def test_JWT_01_alg_compared_case_sensitively(p256: Pair, alg: str) -> None:
    p256.check_good()
    token = assemble({"typ": "at+jwt", "alg": alg, "kid": "k1"}, CLAIMS, p256.private, "ES256")
    with pytest.raises(JWSError):
        verify(token, p256.public, algorithms=("ES256", alg))


@pytest.mark.parametrize(
    "alg",
    [
        pytest.param(1, id="int"),
        pytest.param(True, id="bool"),
        pytest.param(None, id="null"),
        pytest.param(["ES256"], id="list"),
        pytest.param({"ES256": True}, id="object"),
    ],
)
def test_JWT_01_non_string_alg_refused(p256: Pair, alg: object) -> None:
    p256.check_good()
    token = assemble({"typ": "at+jwt", "alg": alg, "kid": "k1"}, CLAIMS, p256.private, "ES256")
    with pytest.raises(JWSError):
        verify(token, p256.public)


def test_JWT_01_missing_alg_refused(p256: Pair) -> None:
    p256.check_good()
    token = assemble({"typ": "at+jwt", "kid": "k1"}, CLAIMS, p256.private, "ES256")
    with pytest.raises(JWSError):
        verify(token, p256.public)


def test_JWT_01_alg_outside_caller_allowlist_refused(p256: Pair, ed: Pair) -> None:
    ed.check_good()
    with pytest.raises(JWSError):
        verify(ed.good(), ed.public, algorithms=("ES256",))


# ---------------------------------------------------------------------------------------------
# K-01 psychic signature (CVE-2022-21449), K-02 out-of-range and wrongly sized signatures
# ---------------------------------------------------------------------------------------------

P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _with_signature(token: str, signature: bytes | str) -> str:
    h, p, _ = token.split(".")
    return f"{h}.{p}.{signature if isinstance(signature, str) else b64u(signature)}"


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(bytes(64), id="zero-bytes"),
        pytest.param(
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", id="zero-b64-86-chars"
        ),
        pytest.param("MAYCAQACAQA", id="der-zero"),
    ],
)
def test_K_01_psychic_signature_refused(p256: Pair, signature: bytes | str) -> None:
    p256.check_good()
    with pytest.raises(JWSError):
        verify(_with_signature(p256.good(), signature), p256.public)


def test_K_01_psychic_signature_p384_refused(p384: Pair) -> None:
    p384.check_good()
    with pytest.raises(JWSError):
        verify(_with_signature(p384.good(), bytes(96)), p384.public)


def _r_s(token: str) -> tuple[int, int]:
    sig = b64url_decode(token.rsplit(".", 1)[1])
    return int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")


def _rs_bytes(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda r, s: _rs_bytes(P256_N, P256_N + 1), id="r=n,s=n+1"),
        pytest.param(lambda r, s: _rs_bytes(P256_N, s), id="r=n"),
        pytest.param(lambda r, s: _rs_bytes(r, P256_N), id="s=n"),
        pytest.param(lambda r, s: _rs_bytes(0, s), id="r=0"),
        pytest.param(lambda r, s: _rs_bytes(r, 0), id="s=0"),
        pytest.param(lambda r, s: _rs_bytes(r, s)[:63], id="63-bytes"),
        pytest.param(lambda r, s: _rs_bytes(r, s) + b"\x00", id="65-bytes"),
        pytest.param(lambda r, s: b"\x00" + _rs_bytes(r, s), id="65-bytes-leading-zero"),
        pytest.param(lambda r, s: _rs_bytes(r, s)[1:] + b"\x00", id="shifted"),
        pytest.param(lambda r, s: b"", id="empty"),
    ],
)
def test_K_02_malformed_ecdsa_signature_refused(p256: Pair, mutate: Callable[[int, int], bytes]) -> None:
    p256.check_good()
    good = p256.good()
    r, s = _r_s(good)
    with pytest.raises(JWSError):
        verify(_with_signature(good, mutate(r, s)), p256.public)


def test_K_02_der_signature_instead_of_raw_refused(p256: Pair) -> None:
    p256.check_good()
    h, p, _ = p256.good().split(".")
    der = p256.private.sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256()))
    with pytest.raises(JWSError):
        verify(f"{h}.{p}.{b64u(der)}", p256.public)


def test_signature_by_another_key_refused(p256: Pair) -> None:
    p256.check_good()
    other = ec.generate_private_key(ec.SECP256R1())
    token = assemble({"typ": "at+jwt", "alg": "ES256", "kid": "k1"}, CLAIMS, other, "ES256")
    with pytest.raises(JWSError):
        verify(token, p256.public)


def test_payload_swapped_under_valid_signature_refused(p256: Pair) -> None:
    p256.check_good()
    h, _, sig = p256.good().split(".")
    forged = b64u(js({**CLAIMS, "sub": "spiffe://example.org/admin"}))
    with pytest.raises(JWSError):
        verify(f"{h}.{forged}.{sig}", p256.public)


# ---------------------------------------------------------------------------------------------
# RSA keys under 2048 bits
# ---------------------------------------------------------------------------------------------


def test_rsa_key_under_2048_bits_refused(rsa_pair: Pair) -> None:
    rsa_pair.check_good()
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the weak key is the input under test
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        public = RSAKey.import_key(small.public_key())
        token = assemble({"typ": "at+jwt", "alg": "RS256", "kid": "k1"}, CLAIMS, small, "RS256")
        assert algs_for_key(public) == frozenset()
        with pytest.raises(JWSError):
            verify(token, public, algorithms=("RS256",))


# ---------------------------------------------------------------------------------------------
# AUX-07 duplicate names, JWT-07 UTF-8, NaN / Infinity
# ---------------------------------------------------------------------------------------------

GOOD_HEADER = b'{"typ":"at+jwt","alg":"ES256","kid":"k1"}'
GOOD_PAYLOAD = js(CLAIMS)


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(b'{"typ":"at+jwt","alg":"ES256","alg":"ES256","kid":"k1"}', id="alg-twice"),
        pytest.param(b'{"typ":"at+jwt","alg":"RS256","alg":"ES256","kid":"k1"}', id="alg-rs-then-es"),
        pytest.param(b'{"typ":"at+jwt","alg":"ES256","kid":"k1","kid":"k2"}', id="kid-twice"),
        pytest.param(b'{"typ":"JWT","typ":"at+jwt","alg":"ES256","kid":"k1"}', id="typ-twice"),
        pytest.param(b'{"typ":"at+jwt","alg":"ES256","kid":"k1","\\u006bid":"k2"}', id="kid-escaped-twice"),
    ],
)
def test_AUX_07_duplicate_header_names_refused(p256: Pair, header: bytes) -> None:
    assert verify(assemble(GOOD_HEADER, GOOD_PAYLOAD, p256.private, "ES256"), p256.public) == CLAIMS
    token = assemble(header, GOOD_PAYLOAD, p256.private, "ES256")
    with pytest.raises(JWSError):
        verify(token, p256.public)
    with pytest.raises(JWSError):
        peek_header(token, max_length=MAX)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b'{"sub":"spiffe://example.org/agent","sub":"spiffe://example.org/admin"}', id="sub-twice"),
        pytest.param(b'{"aud":"https://a.example","exp":1,"aud":"https://b.example"}', id="aud-twice"),
        pytest.param(b'{"cnf":{"jkt":"a","jkt":"b"}}', id="nested-cnf"),
        pytest.param(b'{"act":{"sub":"x","act":{"sub":"y","sub":"z"}}}', id="nested-act"),
        pytest.param(b'{"sub":"a","\\u0073ub":"b"}', id="escaped-name"),
    ],
)
def test_AUX_07_duplicate_claim_names_refused(p256: Pair, payload: bytes) -> None:
    assert verify(assemble(GOOD_HEADER, GOOD_PAYLOAD, p256.private, "ES256"), p256.public) == CLAIMS
    with pytest.raises(JWSError):
        verify(assemble(GOOD_HEADER, payload, p256.private, "ES256"), p256.public)


@pytest.mark.parametrize(
    ("data", "name"),
    [
        pytest.param(b'{"a":1,"b":2,"b":3,"a":4}', "b", id="first-repeat-named"),
        pytest.param(b'{"a":1,"b":2,"a":3}', "a", id="apart"),
        pytest.param(b'{"x":{"k":1,"k":1},"x":2}', "k", id="inner-object-first"),
        pytest.param(b'[{"a":1},{"a":1,"a":1}]', "a", id="in-array"),
    ],
)
def test_AUX_07_duplicate_names_the_first_repeat(data: bytes, name: str) -> None:
    with pytest.raises(JWSError) as refused:
        strict_json_loads(data)
    assert str(refused.value) == f"duplicate member `{name}`"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 3)), max_size=6))
def test_AUX_07_duplicate_detection_matches_a_plain_scan(pairs: list[tuple[str, int]]) -> None:
    """Whatever the members, refused exactly when a name repeats, naming the first repeat."""
    data = ("{" + ",".join(f'"{k}":{v}' for k, v in pairs) + "}").encode()
    names = [k for k, _ in pairs]
    repeats = [k for i, k in enumerate(names) if k in names[:i]]
    if repeats:
        with pytest.raises(JWSError) as refused:
            strict_json_loads(data)
        assert str(refused.value) == f"duplicate member `{repeats[0]}`"
    else:
        assert strict_json_loads(data) == dict(pairs)


@pytest.mark.parametrize(
    ("where", "data"),
    [
        pytest.param("header", b'{"typ":"at+jwt","alg":"ES256","kid":"\xc3\x28"}', id="header-bad-2byte"),
        pytest.param("header", b'{"typ":"at+jwt","alg":"ES256","kid":"\xff"}', id="header-ff"),
        pytest.param("header", b'\xef\xbb\xbf{"typ":"at+jwt","alg":"ES256","kid":"k1"}', id="header-bom"),
        pytest.param("payload", b'{"sub":"\xff"}', id="payload-ff"),
        pytest.param("payload", b'{"sub":"\xc0\xaf"}', id="payload-overlong"),
        pytest.param("payload", b'{"sub":"\xed\xa0\x80"}', id="payload-surrogate"),
        pytest.param("payload", b'{"sub":"\x80abc"}', id="payload-continuation"),
    ],
)
def test_JWT_07_invalid_utf8_refused(p256: Pair, where: str, data: bytes) -> None:
    assert verify(assemble(GOOD_HEADER, GOOD_PAYLOAD, p256.private, "ES256"), p256.public) == CLAIMS
    header, payload = (data, GOOD_PAYLOAD) if where == "header" else (GOOD_HEADER, data)
    with pytest.raises(JWSError):
        verify(assemble(header, payload, p256.private, "ES256"), p256.public)


def test_JWT_07_utf8_text_in_claims_accepted(p256: Pair) -> None:
    claims = {**CLAIMS, "purp": "résumé ✓"}
    token = assemble(GOOD_HEADER, json.dumps(claims, ensure_ascii=False).encode(), p256.private, "ES256")
    assert verify(token, p256.public) == claims


@pytest.mark.parametrize(
    ("where", "data"),
    [
        pytest.param("header", b'{"typ":"at+jwt","alg":"ES256","kid":NaN}', id="header-nan"),
        pytest.param("payload", b'{"exp":NaN}', id="exp-nan"),
        pytest.param("payload", b'{"exp":Infinity}', id="exp-inf"),
        pytest.param("payload", b'{"exp":-Infinity}', id="exp-neg-inf"),
        pytest.param("payload", b'{"nbf":[1,NaN]}', id="nested-nan"),
    ],
)
def test_json_nan_infinity_constants_refused(p256: Pair, where: str, data: bytes) -> None:
    assert verify(assemble(GOOD_HEADER, GOOD_PAYLOAD, p256.private, "ES256"), p256.public) == CLAIMS
    header, payload = (data, GOOD_PAYLOAD) if where == "header" else (GOOD_HEADER, data)
    with pytest.raises(JWSError):
        verify(assemble(header, payload, p256.private, "ES256"), p256.public)


@pytest.mark.parametrize(
    ("header", "payload"),
    [
        pytest.param(b'["typ","at+jwt"]', GOOD_PAYLOAD, id="header-list"),
        pytest.param(b'"at+jwt"', GOOD_PAYLOAD, id="header-string"),
        pytest.param(b"null", GOOD_PAYLOAD, id="header-null"),
        pytest.param(b'{"typ":"at+jwt","alg":"ES256","kid":"k1"', GOOD_PAYLOAD, id="header-truncated"),
        pytest.param(GOOD_HEADER, b'["sub"]', id="payload-list"),
        pytest.param(GOOD_HEADER, b"42", id="payload-number"),
        pytest.param(GOOD_HEADER, b'"claims"', id="payload-string"),
        pytest.param(GOOD_HEADER, b"{", id="payload-truncated"),
        pytest.param(GOOD_HEADER, b"", id="payload-empty"),
    ],
)
def test_header_and_payload_must_be_json_objects(p256: Pair, header: bytes, payload: bytes) -> None:
    assert verify(assemble(GOOD_HEADER, GOOD_PAYLOAD, p256.private, "ES256"), p256.public) == CLAIMS
    with pytest.raises(JWSError):
        verify(assemble(header, payload, p256.private, "ES256"), p256.public)


class TestStrictJsonLoads:
    def test_accepts_plain_object(self) -> None:
        assert strict_json_loads(b'{"a":1,"b":{"c":[1.5,"x"]}}') == {"a": 1, "b": {"c": [1.5, "x"]}}

    @pytest.mark.parametrize(
        "data",
        [
            pytest.param(b'{"a":1,"a":1}', id="top"),
            pytest.param(b'{"a":{"b":1,"b":2}}', id="nested"),
            pytest.param(b'[{"x":1,"x":2}]', id="in-list"),
            pytest.param(b'{"a":1,"\\u0061":2}', id="escaped"),
        ],
    )
    def test_AUX_07_duplicates_refused(self, data: bytes) -> None:
        with pytest.raises(JWSError, match="duplicate"):
            strict_json_loads(data)

    @pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
    def test_non_standard_constants_refused(self, constant: bytes) -> None:
        with pytest.raises(JWSError):
            strict_json_loads(b'{"a":' + constant + b"}")

    @pytest.mark.parametrize(
        "data",
        [
            pytest.param(b'{"a":"\xff"}', id="ff"),
            pytest.param(b"\xef\xbb\xbf{}", id="bom"),
            pytest.param(b'{"a":"\xc0\x80"}', id="overlong-nul"),
        ],
    )
    def test_JWT_07_not_utf8_refused(self, data: bytes) -> None:
        with pytest.raises(JWSError):
            strict_json_loads(data)

    @pytest.mark.parametrize(
        "data",
        [
            pytest.param(b"", id="empty"),
            pytest.param(b"{", id="open"),
            pytest.param(b"{'a': 1}", id="quotes"),
            pytest.param(b'{"a":1,}', id="comma"),
            pytest.param(b"[1 2]", id="list"),
        ],
    )
    def test_invalid_json_refused(self, data: bytes) -> None:
        with pytest.raises(JWSError):
            strict_json_loads(data)

    def test_deep_nesting_refused_not_crashing(self) -> None:
        with pytest.raises(JWSError):
            strict_json_loads(b"[" * 200_000 + b"]" * 200_000)


# ---------------------------------------------------------------------------------------------
# JWT-10 / SVID-02 / PyJWT CVE-2026-32597: header names outside the allowlist
# ---------------------------------------------------------------------------------------------

ATTACKER_JWK = {
    "kty": "EC",
    "crv": "P-256",
    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
    "y": "x_FEzRjm6d0BfH6nl4mumBxxfTcMS6JyrcpMzlgbqmM",
}  # RFC 7515 A.3 public key


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"crit": ["exp"], "exp": 1}, id="crit-unknown"),
        pytest.param({"crit": []}, id="crit-empty"),
        pytest.param({"b64": False, "crit": ["b64"]}, id="b64-false"),
        pytest.param({"b64": True}, id="b64-true"),
        pytest.param({"jku": "https://attacker.example/jwks.json"}, id="jku"),
        pytest.param({"x5u": "https://attacker.example/cert.pem"}, id="x5u"),
        pytest.param({"jwk": ATTACKER_JWK}, id="jwk"),
        pytest.param({"x5c": ["MIIB"]}, id="x5c"),
        pytest.param({"x5t": "abc"}, id="x5t"),
        pytest.param({"x5t#S256": "abc"}, id="x5t-s256"),
        pytest.param({"zip": "DEF"}, id="zip"),
        pytest.param({"enc": "A256GCM"}, id="enc"),
        pytest.param({"cty": "JWT"}, id="cty"),
        pytest.param({"epk": ATTACKER_JWK}, id="epk"),
        pytest.param({"p2c": 10_000_000, "p2s": "abc"}, id="p2c"),
    ],
)
def test_JWT_10_SVID_02_header_outside_allowlist_refused(p256: Pair, extra: dict[str, Any]) -> None:
    p256.check_good()
    token = p256.good(**extra)
    with pytest.raises(JWSError, match="not allowed"):
        verify(token, p256.public)


def test_JWT_10_allowlisted_header_accepted_only_when_listed(p256: Pair) -> None:
    token = p256.good(x5t="abc")
    assert verify(token, p256.public, allowed_headers=AT_HEADERS | {"x5t"}) == CLAIMS
    with pytest.raises(JWSError):
        verify(token, p256.public)


def test_ASVS_9_1_3_header_jwk_never_used_as_key(p256: Pair) -> None:
    """A token signed by the key in its own ``jwk`` header is refused when the trusted key differs."""
    p256.check_good()
    attacker = ec.generate_private_key(ec.SECP256R1())
    jwk = dict(ECKey.import_key(attacker.public_key()).as_dict(private=False))
    token = assemble({"typ": "at+jwt", "alg": "ES256", "jwk": jwk}, CLAIMS, attacker, "ES256")
    with pytest.raises(JWSError):
        verify(token, p256.public, allowed_headers=AT_HEADERS | {"jwk"})


# ---------------------------------------------------------------------------------------------
# JWT-14 compact serialization only, JWT-03 JWS only (not JWE)
# ---------------------------------------------------------------------------------------------


def _json_serialization(token: str) -> str:
    h, p, s = token.split(".")
    return json.dumps({"payload": p, "protected": h, "signature": s})


def _general_json(token: str) -> str:
    h, p, s = token.split(".")
    return json.dumps({"payload": p, "signatures": [{"protected": h, "signature": s}]})


def _padded(token: str) -> str:
    return ".".join(seg + "=" * (-len(seg) % 4 or 4) for seg in token.split("."))


JWT_14_MUTATIONS: list[Any] = [
    pytest.param(_json_serialization, id="flattened-json"),
    pytest.param(_general_json, id="general-json"),
    pytest.param(_padded, id="padding-every-segment"),
    pytest.param(lambda t: t + "=", id="padding-signature"),
    pytest.param(lambda t: t.replace(".", "=.", 1), id="padding-header"),
    pytest.param(lambda t: t[:5] + "é" + t[5:], id="non-ascii-letter"),
    pytest.param(lambda t: t.replace(".", "\u2024", 1), id="unicode-one-dot-leader"),
    pytest.param(lambda t: t[:5] + "\u200b" + t[5:], id="zero-width-space"),
    pytest.param(lambda t: t[:5] + "\uff21" + t[5:], id="fullwidth-A"),
    pytest.param(lambda t: "{" + t + "}", id="braces"),
    pytest.param(lambda t: '"' + t + '"', id="quotes"),
    pytest.param(lambda t: " " + t, id="leading-space"),
    pytest.param(lambda t: t + "\n", id="trailing-newline"),
    pytest.param(lambda t: t.replace(".", " .", 1), id="inner-space"),
    pytest.param(lambda t: t + "\x00", id="nul"),
    pytest.param(lambda t: "+" + t[1:], id="std-base64-plus"),
    pytest.param(lambda t: t[:-1] + "/", id="std-base64-slash"),
    pytest.param(lambda t: t + ".", id="four-segments-empty"),
    pytest.param(lambda t: t + ".AAAA.BBBB", id="jwe-five-segments"),
    pytest.param(lambda t: t.rsplit(".", 1)[0], id="two-segments"),
    pytest.param(lambda t: "Bearer " + t, id="scheme-prefix"),
    pytest.param(lambda t: t + "," + t, id="two-tokens-comma"),
    pytest.param(lambda t: t.split(".")[0] + ".." + t.split(".")[2], id="empty-payload"),
    pytest.param(lambda t: "." + t.split(".", 1)[1], id="empty-header"),
]


@pytest.mark.parametrize("mutate", JWT_14_MUTATIONS)
def test_JWT_14_only_compact_base64url_characters(p256: Pair, mutate: Callable[[str], str]) -> None:
    good = p256.good()
    assert verify(good, p256.public) == CLAIMS
    token = mutate(good)
    assert token != good
    with pytest.raises(JWSError):
        verify(token, p256.public)
    with pytest.raises(JWSError):
        peek_header(token, max_length=MAX)


@pytest.mark.parametrize("segment", ["A", "AAAAA", "AB=C", "a+b", "a/b", "ab cd", "é"])
def test_b64url_decode_strict(segment: str) -> None:
    with pytest.raises(JWSError):
        b64url_decode(segment)


@pytest.mark.parametrize("segment", ["AB", "AAB", "_-9", "AP", "AAD"])
def test_JWT_14_b64url_decode_refuses_non_canonical_trailing_bits(segment: str) -> None:
    # "AB" decodes to b"\x00" like "AA" would if the unused low bits were ignored
    with pytest.raises(JWSError, match="invalid base64url"):
        b64url_decode(segment)


def test_JWT_14_a_second_spelling_of_the_signature_is_refused(p256: Pair) -> None:
    """One token, one string: the 64-byte ES256 signature leaves 4 unused bits in its last
    character, and every other value of them must be refused, not verified alike (anything
    keyed by the token string, such as the verified-token cache or ``ath``, relies on it)."""
    good = p256.good()
    head, sig = good.rsplit(".", 1)
    alphabet = _COMPACT_ALPHABET[:-1]
    base = alphabet.index(sig[-1]) & ~0b1111
    spellings = [head + "." + sig[:-1] + alphabet[base | low] for low in range(16)]
    assert good in spellings and len(set(spellings)) == 16
    for token in spellings:
        if token == good:
            assert verify(token, p256.public) == CLAIMS
        else:
            with pytest.raises(JWSError):
                verify(token, p256.public)


@pytest.mark.parametrize(("segment", "expected"), [("", b""), ("AA", b"\x00"), ("AAA", b"\x00\x00"), ("_-8", b"\xff\xef")])
def test_b64url_decode_accepts_unpadded(segment: str, expected: bytes) -> None:
    assert b64url_decode(segment) == expected


# anything that is not a valid token ends in JWSError, never in another exception (no 5xx)
_COMPACT_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=_COMPACT_ALPHABET, max_size=300))
def test_random_compact_strings_refused_cleanly(p256: Pair, token: str) -> None:
    with pytest.raises(JWSError):
        verify(token, p256.public)


@settings(max_examples=300, deadline=None)
@given(header=st.binary(max_size=80), payload=st.binary(max_size=80), signature=st.binary(max_size=80))
def test_random_segments_refused_cleanly(p256: Pair, header: bytes, payload: bytes, signature: bytes) -> None:
    token = ".".join(b64u(part) or "A" for part in (header, payload, signature))
    with pytest.raises(JWSError):
        verify(token, p256.public)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_single_character_mutations_refused(p256: Pair, data: st.DataObject) -> None:
    good = p256.good()  # a fresh (randomised) ECDSA signature each example, always the same length
    index = data.draw(st.integers(min_value=0, max_value=len(good) - 1))
    # the replacement is drawn as an offset, so what is drawn never depends on the random signature
    offset = data.draw(st.integers(min_value=1, max_value=len(_COMPACT_ALPHABET) - 1))
    char = _COMPACT_ALPHABET[(_COMPACT_ALPHABET.index(good[index]) + offset) % len(_COMPACT_ALPHABET)]
    with pytest.raises(JWSError):
        verify(good[:index] + char + good[index + 1 :], p256.public)


# ---------------------------------------------------------------------------------------------
# size cap before decoding (Authlib CVE-2025-61920, PyJWT CVE-2026-48525)
# ---------------------------------------------------------------------------------------------


def test_oversize_token_refused_at_the_cap(p256: Pair) -> None:
    good = p256.good()
    assert verify(good, p256.public, max_length=len(good)) == CLAIMS
    with pytest.raises(JWSError, match="too large"):
        verify(good, p256.public, max_length=len(good) - 1)


def test_oversize_token_refused_before_decoding_or_key_lookup(p256: Pair) -> None:
    """A huge token that is also garbage is refused by the size gate, and the key resolver is never asked."""
    p256.check_good()
    calls: list[Mapping[str, Any]] = []
    huge = "!" * 2_000_000 + "." + "A" * 3_000_000 + ".x"
    with pytest.raises(JWSError, match="too large"):
        verify_compact(
            huge, algorithms=("ES256",), allowed_headers=AT_HEADERS, resolve_key=resolver(p256.public, calls), max_length=MAX
        )
    with pytest.raises(JWSError, match="too large"):
        peek_header(huge, max_length=MAX)
    assert calls == []


def test_oversize_signed_claims_refused(p256: Pair) -> None:
    p256.check_good()
    token = p256.good({**CLAIMS, "pad": "x" * MAX})
    with pytest.raises(JWSError, match="too large"):
        verify(token, p256.public)


def test_resolver_sees_only_gated_headers(p256: Pair) -> None:
    """Key lookup happens only after the header has passed the allowlist (no fetch for a `jku`)."""
    calls: list[Mapping[str, Any]] = []
    good = p256.good()
    verify_compact(
        good, algorithms=("ES256",), allowed_headers=AT_HEADERS, resolve_key=resolver(p256.public, calls), max_length=MAX
    )
    assert calls == [{"typ": "at+jwt", "alg": "ES256", "kid": "k1"}]
    calls.clear()
    for extra in ({"jku": "https://attacker.example/jwks"}, {"alg": "HS256"}, {"alg": "none"}):
        with pytest.raises(JWSError):
            verify_compact(
                p256.good(**extra),
                algorithms=("ES256",),
                allowed_headers=AT_HEADERS,
                resolve_key=resolver(p256.public, calls),
                max_length=MAX,
            )
    assert calls == []


@pytest.mark.parametrize("name", ["kid", "typ"])
@pytest.mark.parametrize(
    "value",
    [None, True, 7, 1.5, ["k1"], {"k1": True}, [{"a": [None]}]],
    ids=["null", "bool", "int", "float", "list", "object", "nested"],
)
def test_non_string_kid_or_typ_refused_before_key_lookup(p256: Pair, name: str, value: object) -> None:
    """Issue 12 "no 500 on odd JSON types": ``kid`` and ``typ`` are strings whenever present, so no
    key resolver (a dict lookup, a keyring) or type check ever sees a list, an object or ``null``."""
    calls: list[Mapping[str, Any]] = []
    verify_compact(p256.good(), algorithms=("ES256",), allowed_headers=AT_HEADERS, resolve_key=resolver(p256.public, calls),
                   max_length=MAX)  # fmt: skip
    assert len(calls) == 1
    with pytest.raises(JWSError, match=f"`{name}` is not a string"):
        verify_compact(p256.good(**{name: value}), algorithms=("ES256",), allowed_headers=AT_HEADERS,
                       resolve_key=resolver(p256.public, calls), max_length=MAX)  # fmt: skip
    assert len(calls) == 1


def test_resolver_refusal_propagates(p256: Pair) -> None:
    p256.check_good()

    def unknown_kid(_header: Mapping[str, Any]) -> PublicKey:
        raise JWSError("unknown kid")

    with pytest.raises(JWSError, match="unknown kid"):
        verify_compact(p256.good(), algorithms=("ES256",), allowed_headers=AT_HEADERS, resolve_key=unknown_kid, max_length=MAX)


# ---------------------------------------------------------------------------------------------
# algs_for_key: one key, one algorithm (JWT-01)
# ---------------------------------------------------------------------------------------------


def _ec(curve: str, **extra: Any) -> PublicKey:
    jwk = dict(ECKey.generate_key(curve, private=False).as_dict(private=False))
    return ECKey.import_key({**jwk, **extra})


def _okp(curve: Literal["Ed25519", "Ed448", "X25519", "X448"], **extra: Any) -> PublicKey:
    jwk = dict(OKPKey.generate_key(curve, private=False).as_dict(private=False))
    return OKPKey.import_key({**jwk, **extra})


ALGS_FOR_KEY_TABLE: list[Any] = [
    pytest.param(lambda _r: _ec("P-256"), {"ES256"}, id="P-256"),
    pytest.param(lambda _r: _ec("P-384"), {"ES384"}, id="P-384"),
    pytest.param(lambda _r: _ec("P-521"), {"ES512"}, id="P-521"),
    pytest.param(lambda _r: _ec("secp256k1"), set(), id="secp256k1"),
    pytest.param(lambda _r: _ec("P-256", alg="ES256"), {"ES256"}, id="P-256-declares-ES256"),
    pytest.param(lambda _r: _ec("P-256", alg="ES384"), set(), id="P-256-declares-ES384"),
    pytest.param(lambda _r: _ec("P-256", alg="HS256"), set(), id="P-256-declares-HS256"),
    pytest.param(lambda _r: _ec("P-384", alg="ES256"), set(), id="P-384-declares-ES256"),
    # RFC 9864: "Ed25519" is the fully specified name of EdDSA over Ed25519, the same algorithm
    pytest.param(lambda _r: _okp("Ed25519"), {"EdDSA", "Ed25519"}, id="Ed25519"),
    pytest.param(lambda _r: _okp("Ed25519", alg="EdDSA"), {"EdDSA"}, id="Ed25519-declares-EdDSA"),
    pytest.param(lambda _r: _okp("Ed25519", alg="Ed25519"), {"Ed25519"}, id="Ed25519-declares-Ed25519"),
    pytest.param(lambda _r: _okp("Ed448", alg="EdDSA"), set(), id="Ed448-declares-EdDSA"),
    pytest.param(lambda _r: _okp("Ed25519", alg="ES256"), set(), id="Ed25519-declares-ES256"),
    pytest.param(lambda _r: _okp("Ed448"), set(), id="Ed448"),
    pytest.param(lambda _r: _okp("X25519"), set(), id="X25519-ecdh-key"),
    pytest.param(lambda _r: _okp("X448"), set(), id="X448-ecdh-key"),
    pytest.param(lambda r: RSAKey.import_key(r.public_key()), {"RS256"}, id="RSA-2048-no-alg"),
    pytest.param(lambda r: _rsa_with(r, "RS256"), {"RS256"}, id="RSA-declares-RS256"),
    pytest.param(lambda r: _rsa_with(r, "PS384"), {"PS384"}, id="RSA-declares-PS384"),
    pytest.param(lambda r: _rsa_with(r, "RS512"), {"RS512"}, id="RSA-declares-RS512"),
    pytest.param(lambda r: _rsa_with(r, "HS256"), set(), id="RSA-declares-HS256"),
    pytest.param(lambda r: _rsa_with(r, "none"), set(), id="RSA-declares-none"),
    pytest.param(lambda r: _rsa_with(r, "ES256"), set(), id="RSA-declares-ES256"),
    pytest.param(lambda r: _rsa_with(r, "RSA-OAEP"), set(), id="RSA-declares-RSA-OAEP"),
]


def _rsa_with(private: rsa.RSAPrivateKey, alg: str) -> PublicKey:
    jwk = dict(RSAKey.import_key(private.public_key()).as_dict(private=False))
    return RSAKey.import_key({**jwk, "alg": alg})


@pytest.mark.parametrize(("make", "expected"), ALGS_FOR_KEY_TABLE)
def test_JWT_01_algs_for_key_table(
    rsa_private: rsa.RSAPrivateKey, make: Callable[[Any], PublicKey], expected: set[str]
) -> None:
    algs = algs_for_key(make(rsa_private))
    assert algs == frozenset(expected)
    assert len(algs - {"Ed25519"}) <= 1  # one algorithm per key; Ed25519 may go by both of its names
    assert algs <= ASYMMETRIC_ALGS


def test_algs_for_self_asserted_rsa_key(rsa_private: rsa.RSAPrivateKey) -> None:
    """A DPoP proof's own RSA jwk (bound only by thumbprint) may use any RSA signature alg; a trusted key stays RS256."""
    key = RSAKey.import_key(rsa_private.public_key())
    assert algs_for_key(key) == {"RS256"}
    assert algs_for_key(key, self_asserted=True) == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    assert algs_for_key(_rsa_with(rsa_private, "PS256"), self_asserted=True) == {"PS256"}
    assert algs_for_key(_ec("P-256"), self_asserted=True) == {"ES256"}


def test_ed25519_token_verifies_under_both_names(ed: Pair) -> None:
    for alg in ("EdDSA", "Ed25519"):
        token = assemble({"typ": "at+jwt", "alg": alg, "kid": "k1"}, CLAIMS, ed.private, "EdDSA")
        assert verify(token, ed.public, algorithms=(alg,)) == CLAIMS
        with pytest.raises(JWSError):
            verify(token, ed.public, algorithms=("ES256",))


def test_ed25519_token_verifies_with_a_jwk_that_declares_alg_eddsa(ed: Pair) -> None:
    """tether's own JWKS publishes Ed25519 keys with ``"alg": "EdDSA"`` (keyring.public_jwk):
    joserfc checks a key's declared alg against the algorithm model's name, so the model used
    for the header name ``EdDSA`` must carry that name (regression: every EdDSA token failed)."""
    declared = OKPKey.import_key({**ed.public.as_dict(private=False), "alg": "EdDSA"})
    token = assemble({"typ": "at+jwt", "alg": "EdDSA", "kid": "k1"}, CLAIMS, ed.private, "EdDSA")
    assert verify(token, declared, algorithms=("EdDSA",)) == CLAIMS
    with pytest.raises(JWSError):
        verify(assemble({"typ": "at+jwt", "alg": "Ed25519", "kid": "k1"}, CLAIMS, ed.private, "EdDSA"), declared,
               algorithms=("Ed25519", "EdDSA"))  # fmt: skip


def test_JWT_01_algs_for_small_rsa_key_is_empty() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the weak key is the input under test
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        assert algs_for_key(RSAKey.import_key(small.public_key())) == frozenset()
        jwk = dict(RSAKey.import_key(small.public_key()).as_dict(private=False))
        assert algs_for_key(RSAKey.import_key({**jwk, "alg": "RS256"})) == frozenset()


# ---------------------------------------------------------------------------------------------
# the header memo: bounded whatever is sent, and never handing out a shared object
# ---------------------------------------------------------------------------------------------


def test_peek_header_copies_cannot_alter_the_memo(p256: Pair) -> None:
    jwk = {"kty": "EC", "crv": "P-256", "x": "a" * 43, "y": "b" * 43}
    token = assemble({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}, CLAIMS, p256.private, "ES256")
    first = peek_header(token, max_length=MAX)
    first["jwk"]["kty"] = "oct"
    first["alg"] = "none"
    again = peek_header(token, max_length=MAX)
    assert again["jwk"] == jwk and again["alg"] == "ES256"


def test_oversized_headers_are_parsed_but_not_memoised(p256: Pair) -> None:
    from tether.rules.jws import _decode_header

    _decode_header.cache_clear()
    for i in range(50):
        token = assemble({"typ": "at+jwt", "alg": "ES256", "kid": "k1", "pad": f"{i}" + "p" * 4000}, CLAIMS,
                         p256.private, "ES256")  # fmt: skip
        assert peek_header(token, max_length=MAX)["pad"].startswith(str(i))
    assert _decode_header.cache_info().currsize == 0
    # positive control: a normal header is memoised
    peek_header(p256.good(), max_length=MAX)
    assert _decode_header.cache_info().currsize == 1
