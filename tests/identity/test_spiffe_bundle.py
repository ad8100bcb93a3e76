"""SPIFFE bundle format (Trust Domain and Bundle §4): strict parsing, rendering, the refresh bounds.

A malformed authority refuses the whole bundle (a shorter key set would be silent narrowing
of what the domain says, or a key smuggled beside a broken one); unknown ``use`` values are
ignored for forward compatibility.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from identity_support import ec_key, okp_key, public_jwk, rsa_key
from joserfc.jwk import ECKey, RSAKey

from tether.identity.dev_x509 import DevCA
from tether.identity.spiffe_bundle import MAX_AUTHORITIES, bundle_document, parse_bundle, refresh_interval

EC = ec_key("ec-1")
RSA = rsa_key("rsa-1")
OKP = okp_key("okp-1")
CA = DevCA.create("a.example")
CA_DER = x509.load_pem_x509_certificate(CA.bundle_pem).public_bytes(Encoding.DER)
CA_X5C = base64.b64encode(CA_DER).decode()
LEAF_DER = x509.load_pem_x509_certificate(CA.issue_svid("spiffe://a.example/w").cert_pem).public_bytes(Encoding.DER)


def good() -> dict[str, Any]:
    return bundle_document([public_jwk(EC), public_jwk(RSA), public_jwk(OKP)], [CA_DER], sequence=7, refresh_hint=120)


def test_parse_bundle_reads_authorities_sequence_and_hint() -> None:
    bundle = parse_bundle(good())
    assert len(bundle.jwt) == 3
    assert isinstance(bundle.jwt.find("ec-1"), ECKey)
    assert isinstance(bundle.jwt.find("rsa-1"), RSAKey)
    assert bundle.jwt.find("okp-1") is not None
    assert not any(key.is_private for key in bundle.jwt.by_kid.values())
    assert bundle.x509 == (CA_DER,)
    assert (bundle.sequence, bundle.refresh_hint) == (7, 120)


def test_rendered_bundle_marks_each_use() -> None:
    document = good()
    uses = [entry["use"] for entry in document["keys"]]
    assert uses == ["jwt-svid", "jwt-svid", "jwt-svid", "x509-svid"]
    x509_entry = document["keys"][3]
    assert base64.b64decode(x509_entry["x5c"][0]) == CA_DER
    assert x509_entry["kty"] == "EC"  # the CA's public key, as SPIFFE §4.2.2 shows it


def test_unknown_use_is_ignored_and_missing_hint_or_sequence_is_none() -> None:
    document = {"keys": [public_jwk(EC, use="jwt-svid"), public_jwk(ec_key("later"), use="wit-svid")]}
    bundle = parse_bundle(document)
    assert list(bundle.jwt.by_kid) == ["ec-1"]
    assert (bundle.sequence, bundle.refresh_hint) == (None, None)
    assert parse_bundle({**document, "spiffe_refresh_hint": 0}).refresh_hint is None


def _with_key(entry: dict[str, Any]) -> dict[str, Any]:
    return {"keys": [public_jwk(ec_key("fine"), use="jwt-svid"), entry], "spiffe_sequence": 1}


MALFORMED: dict[str, Any] = {
    "jwt-svid key without kid": _with_key(public_jwk(ec_key(None), use="jwt-svid")),
    "jwt-svid key with private material": _with_key({**EC.as_dict(private=True), "use": "jwt-svid"}),
    "jwt-svid key of unknown kty": _with_key({"kty": "oct", "kid": "hmac", "use": "jwt-svid", "alg": "HS256"}),
    "jwt-svid key off its curve": _with_key({**public_jwk(EC, use="jwt-svid"), "kid": "bent", "y": public_jwk(OKP)["x"]}),
    "rsa key under 2048 bits": _with_key({**public_jwk(RSA, use="jwt-svid"), "kid": "small", "n": "AQAB"}),
    "key without use": _with_key(public_jwk(ec_key("no-use"))),
    "key that is not an object": _with_key("ec-1"),  # type: ignore[arg-type]
    "duplicate kid": _with_key(public_jwk(ec_key("fine"), use="jwt-svid")),
    "x509-svid with two certificates": _with_key({"use": "x509-svid", "kty": "EC", "x5c": [CA_X5C, CA_X5C]}),
    "x509-svid not base64": _with_key({"use": "x509-svid", "kty": "EC", "x5c": ["not base64!"]}),
    "x509-svid not a certificate": _with_key({"use": "x509-svid", "kty": "EC", "x5c": [base64.b64encode(b"junk").decode()]}),
    "x509-svid leaf, not a CA": _with_key({"use": "x509-svid", "kty": "EC", "x5c": [base64.b64encode(LEAF_DER).decode()]}),
    "negative sequence": {**good(), "spiffe_sequence": -1},
    "boolean sequence": {**good(), "spiffe_sequence": True},
    "string sequence": {**good(), "spiffe_sequence": "7"},
    "negative refresh hint": {**good(), "spiffe_refresh_hint": -5},
    "no keys member": {"spiffe_sequence": 1},
    "keys not a list": {"keys": {"ec-1": public_jwk(EC)}},
    "no authorities": {"keys": [public_jwk(EC, use="wit-svid")]},
    "too many keys": {"keys": [public_jwk(ec_key(f"k{i}"), use="jwt-svid") for i in range(MAX_AUTHORITIES + 1)]},
    "not an object": [public_jwk(EC, use="jwt-svid")],
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_bundle_is_refused_whole(name: str) -> None:
    with pytest.raises(ValueError):
        parse_bundle(copy.deepcopy(MALFORMED[name]))


@pytest.mark.parametrize(
    ("hint", "expected"),
    [(None, 300.0), (120, 120.0), (3600, 300.0), (1, 5.0), (5, 5.0), (300, 300.0)],
    ids=["no hint: the configured refresh", "within bounds", "capped by refresh", "raised to the floor", "at floor", "at cap"],
)
def test_refresh_interval_follows_the_hint_within_bounds(hint: int | None, expected: float) -> None:
    assert refresh_interval(hint, refresh=300.0, floor=5.0) == expected
