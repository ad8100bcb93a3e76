"""Review of the flat-JWK memo of ``tether.rules.dpop`` (a proof's ``jwk`` memoised by its members).

An outsider controls the proof header, ``jwk`` included, and it is parsed (and memoised) before the
signature is checked. These tests hold the memo to two things: it decides every ``jwk`` the JOSE
parser can yield exactly as the unmemoised canonical path does, whatever the memos hold; and the
parsed keys it keeps stay within the one bound the canonical memo had.
"""

from __future__ import annotations

import gc
import json
import weakref
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc.jwk import ECKey, OKPKey, RSAKey

from tether.errors import InvalidDPoPProof
from tether.rules.dpop import _jwk_and_thumbprint, _parse_flat_jwk, _parse_public_jwk
from tether.rules.jws import JWSError, jose_json_loads

_P256: dict[str, Any] = dict(ECKey.import_key(ec.generate_private_key(ec.SECP256R1()).public_key()).as_dict(private=False))
_ED: dict[str, Any] = dict(OKPKey.import_key(ed25519.Ed25519PrivateKey.generate().public_key()).as_dict(private=False))
_RSA: dict[str, Any] = dict(RSAKey.import_key(rsa.generate_private_key(65537, 2048).public_key()).as_dict(private=False))
_PRIVATE: dict[str, Any] = dict(ECKey.import_key(ec.generate_private_key(ec.SECP256R1())).as_dict(private=True))


def _clear() -> None:
    _parse_flat_jwk.cache_clear()
    _parse_public_jwk.cache_clear()


def _outcome(jwk: dict[str, Any]) -> tuple[str, str]:
    """What the proof's key resolver makes of ``jwk``; any other exception fails the test (a 500)."""
    try:
        return "ok", _jwk_and_thumbprint(jwk)[1]
    except InvalidDPoPProof as exc:
        return "refused", str(exc.debug)


def _reference(jwk: dict[str, Any]) -> tuple[str, str]:
    """The canonical path without any memo."""
    try:
        canonical = json.dumps(jwk, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return "refused", "jwk is not a json web key"
    try:
        return "ok", _parse_public_jwk.__wrapped__(canonical)[1]
    except InvalidDPoPProof as exc:
        return "refused", str(exc.debug)


def test_the_memos_hold_no_more_parsed_keys_than_the_canonical_memo_bound() -> None:
    """A flat hit used not to touch the canonical memo, so the two drifted apart: 2,048 flat JWKs
    then 2,048 that are not flat (an integer member) kept 4,096 parsed keys alive, twice the bound
    the canonical memo was given against what callers send before their proof is verified
    (measured: about 17.5 MB of RSS for EC keys against 11 MB). The JWKs differ only in a padding
    member, so an outsider needs no key generation for this."""
    _clear()
    bound = _parse_public_jwk.cache_info().maxsize
    assert bound is not None
    refs = []
    flat = ({**_P256, "x-n": f"{i:08d}"} for i in range(bound))
    not_flat = ({**_P256, "x-n": i} for i in range(bound))
    for jwk in (*flat, *not_flat):
        refs.append(weakref.ref(_jwk_and_thumbprint(jwk)[0]))
    gc.collect()
    alive = sum(ref() is not None for ref in refs)
    _clear()
    assert alive <= bound, f"{alive} parsed keys held, over the canonical memo's {bound}"


def test_a_flat_hit_after_the_canonical_memo_dropped_its_key_parses_it_again() -> None:
    _clear()
    expected = ("ok", ECKey.import_key(_P256).thumbprint())
    assert _outcome(_P256) == expected
    _parse_public_jwk.cache_clear()  # evicted there, still in the flat memo
    assert _outcome(dict(reversed(list(_P256.items())))) == expected
    assert _parse_public_jwk.cache_info().currsize == 1, "the key is memoised (and bounded) by the canonical memo"
    assert _parse_flat_jwk.cache_info().currsize == 1
    _clear()


def _pad(chars: int, fill: str = "p") -> dict[str, str]:
    """``_P256`` plus one member ``"z"`` so that its members add up to ``chars`` characters."""
    used = sum(len(k) + len(v) for k, v in _P256.items()) + 1
    return {**_P256, "z": fill * (chars - used)}


@pytest.mark.parametrize(
    ("jwk", "flat"),
    [
        (_pad(500), True),
        (_pad(501), False),
        (_pad(500, '"'), True),  # canonical JSON doubles every quote: still memoised alike
        (_pad(500, "\\"), True),
        ({**_P256, "a": "1", "b": "2"}, True),  # six members
        ({**_P256, "a": "1", "b": "2", "c": "3"}, False),  # seven
        ({**_P256, "z": "\x7f"}, False),  # DEL is ASCII but not printable
        ({**_P256, "z": "é"}, False),
        ({**_P256, "z": "\t"}, False),
        ({**_P256, "z": ""}, True),
        ({**_P256, "": "x"}, True),
        ({**_P256, "kty": "ec"}, True),
        ({**_P256, "crv": "p-256"}, True),
        ({**_P256, "alg": "RS256"}, True),
        ({**_P256, "use": "enc"}, True),
        ({**_P256, "key_ops": "sign"}, True),
        ({**_P256, "kid": "k"}, True),
        ({**_P256, "d": "AAAA"}, True),
        ({**_RSA, "alg": "PS256"}, True),  # an RSA-2048 public JWK is flat too
        ({**_RSA, "n": _RSA["n"][:-100]}, True),  # under 2048 bits
    ],
)  # default ids (jwk0, jwk1, …): the keys are generated per process, and xdist's workers must collect the same names
def test_the_flat_boundaries_decide_as_the_canonical_path(jwk: dict[str, Any], flat: bool) -> None:
    _clear()
    expected = _reference(jwk)
    assert _outcome(jwk) == expected
    assert (_parse_flat_jwk.cache_info().currsize == 1) is (flat and expected[0] == "ok")
    assert _outcome(dict(reversed(list(jwk.items())))) == expected  # memoised now: the same answer
    _clear()


def test_a_header_jwk_comes_from_the_json_parser_as_plain_types() -> None:
    """The memo takes only exact ``str`` members: the JOSE parser yields ``dict``, ``str``, ``int``,
    ``float``, ``bool``, ``None`` and ``list`` and nothing derived from them, and refuses a name twice."""
    header = jose_json_loads(json.dumps({"jwk": {**_P256, "n": 1, "f": 1.5, "b": True, "z": None, "l": []}}).encode())
    assert {type(v) for v in header["jwk"].values()} == {str, int, float, bool, type(None), list}
    assert all(type(k) is str for k in header["jwk"])
    duplicated = b'{"jwk":{"kty":"EC","kty":"OKP"}}'
    with pytest.raises(JWSError, match="duplicate member"):
        jose_json_loads(duplicated)


_NAMES = st.sampled_from(
    ["kty", "crv", "x", "y", "n", "e", "alg", "use", "key_ops", "kid", "ext", "x5c", "d", "k", "oth", "KTY", "Kty", "x "]
) | st.text(max_size=6)
_STRINGS = st.sampled_from(
    ["EC", "ec", "OKP", "RSA", "P-256", "p-256", "Ed25519", "ES256", "RS256", "sig", "AQAB", ""]
) | st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from('"\\\x7f\t~ '), max_size=40)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _STRINGS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from([_P256, _ED, _RSA, _PRIVATE, {"kty": "oct", "k": "AAAA"}, {}]),
    dropped=st.sets(st.sampled_from(["kty", "crv", "x", "y", "n", "e"])),
    extra=st.dictionaries(_NAMES, _JSON | st.integers(0, 460).map(lambda n: "p" * n), max_size=3),
    order=st.randoms(use_true_random=False),
)
def test_DPOP_07_every_parsable_jwk_is_decided_as_the_canonical_path_whatever_the_memos_hold(
    base: dict[str, Any], dropped: set[str], extra: dict[str, Any], order: Any
) -> None:
    """The flat memo decides as the canonical path for every JSON type the header parser yields
    (nested too), the member names a JWK gives meaning to and their case, an RSA-2048 key (flat
    as well), members removed, sizes across the flat bound; and each JWK asked again as a memo
    hit, and as a flat hit whose canonical entry has been evicted."""
    members = [(k, v) for k, v in {**base, **extra}.items() if k not in dropped]
    order.shuffle(members)
    jwk = dict(members)
    expected = _reference(jwk)
    _clear()
    assert _outcome(jwk) == expected
    assert _outcome(dict(reversed(members))) == expected
    _parse_public_jwk.cache_clear()
    assert _outcome(jwk) == expected
    _clear()


def test_DPOP_07_the_flat_memo_takes_one_entry_per_key_and_never_a_refusal() -> None:
    _parse_flat_jwk.cache_clear()
    shuffled = dict(reversed(list(_P256.items())))
    assert _outcome(_P256) == _outcome(shuffled) == ("ok", ECKey.import_key(_P256).thumbprint())
    assert _parse_flat_jwk.cache_info().currsize == 1
    for _ in range(3):
        assert _outcome(_PRIVATE) == ("refused", "jwk contains private key material")
    assert _parse_flat_jwk.cache_info().currsize == 1, "a refused jwk is not remembered"
    padded = {**_P256, "x-pad": "p" * 600}  # over the flat bound: the canonical path decides
    assert _outcome(padded)[0] == "ok" and _parse_flat_jwk.cache_info().currsize == 1
