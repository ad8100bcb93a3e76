"""The bundles a deployment publishes (``federation.published``): its trust domain's SVID
authorities and its access-token signing keys apart, each with a sequence that grows with every
change tether makes, and one rendering per change."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from tether.federation.published import SigningBundle, SvidBundle, published_sequence
from tether.identity.dev_issuer import DevTrustDomain
from tether.identity.dev_x509 import DevCA
from tether.identity.spiffe_bundle import parse_bundle
from tether.keys.keyring import KeyRing, issuer_key_aad, new_stored_key, open_key
from tether.keys.sealed import create_master_key, seal, unseal

NOW = 1_800_000_000


def ring(master: bytes, *created: int, retired_until: dict[int, int] | None = None) -> KeyRing:
    """Keys created at ``created`` (the last one current); ``retired_until`` maps a creation time to its not_after."""
    keys = []
    for at in created:
        stored = new_stored_key(master, alg="ES256", now=at)
        if retired_until and at in retired_until:  # re-sealed with its retired state, as a rotation does
            private = unseal(master, stored.sealed_private, aad=issuer_key_aad(stored))
            stored = replace(stored, retired_at=at + 1, not_after=retired_until[at])
            stored = replace(stored, sealed_private=seal(master, private, aad=issuer_key_aad(stored)))
        keys.append(open_key(master, stored))
    return KeyRing(keys)


def test_sequence_grows_when_a_key_is_added_and_when_a_retiring_key_leaves(tmp_path: Path) -> None:
    master = create_master_key(tmp_path / "master.key")
    before = published_sequence(ring(master, NOW), now=NOW + 10)
    rotated = ring(master, NOW, NOW + 100, retired_until={NOW: NOW + 1000})
    after_rotation = published_sequence(rotated, now=NOW + 200)
    after_drop = published_sequence(rotated, now=NOW + 1001)  # the retired key is no longer listed
    assert before < after_rotation < after_drop
    assert len(rotated.jwks(now=NOW + 200)["keys"]) == 2 and len(rotated.jwks(now=NOW + 1001)["keys"]) == 1


def svid_bundle(tmp_path: Path, master: bytes) -> tuple[SvidBundle, DevTrustDomain]:
    """A dev trust domain and dev CA as ``tether init --tls`` leaves them, published."""
    dev = DevTrustDomain.create(tmp_path, "a.example", master)
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(DevCA.create("a.example").bundle_pem)
    jwt_file = DevTrustDomain.bundle_path(tmp_path, "a.example")
    return SvidBundle("a.example", jwt_file=jwt_file, x509_file=ca_file), dev


def test_signing_bundle_lists_the_signing_keys_only(tmp_path: Path) -> None:
    master = create_master_key(tmp_path / "master.key")
    keys = ring(master, NOW)
    published = SigningBundle()
    body, etag = published.render(keys, now=NOW)
    document = json.loads(body)
    bundle = parse_bundle(document)
    assert set(bundle.jwt.by_kid) == {keys.current.kid} and bundle.x509 == ()
    assert {entry["use"] for entry in document["keys"]} == {"jwt-svid"}
    assert not any("d" in entry for entry in document["keys"])  # public halves only
    assert bundle.sequence == published_sequence(keys, now=NOW)
    assert published.render(keys, now=NOW) == (body, etag)  # reused until something changes
    rotated = ring(master, NOW, NOW + 5, retired_until={NOW: NOW + 900})
    body2, etag2 = published.render(rotated, now=NOW + 6)
    after = parse_bundle(json.loads(body2))
    assert etag2 != etag and after.sequence > bundle.sequence  # type: ignore[operator]
    assert len(after.jwt.by_kid) == 2  # the retiring key stays until its last token expired


def test_svid_bundle_lists_the_dev_svid_keys_and_the_dev_ca_only(tmp_path: Path) -> None:
    published, dev = svid_bundle(tmp_path, create_master_key(tmp_path / "master.key"))
    body, etag = published.render()
    document = json.loads(body)
    bundle = parse_bundle(document)
    assert set(bundle.jwt.by_kid) == {dev.kid} and len(bundle.x509) == 1
    assert {entry["use"] for entry in document["keys"]} == {"jwt-svid", "x509-svid"}
    assert not any("d" in entry for entry in document["keys"])
    assert published.render() == (body, etag)


def test_jwt08_published_bundles_hold_disjoint_keys(tmp_path: Path) -> None:
    """No key verifies both an access token and an SVID (SECURITY JWT-08, JWT-12)."""
    master = create_master_key(tmp_path / "master.key")
    published, _ = svid_bundle(tmp_path, master)
    keys = ring(master, NOW, NOW + 5, retired_until={NOW: NOW + 900})
    svids = parse_bundle(json.loads(published.render()[0]))
    signing = parse_bundle(json.loads(SigningBundle().render(keys, now=NOW + 6)[0]))
    assert keys.kids == set(signing.jwt.by_kid)
    assert not set(svids.jwt.by_kid) & set(signing.jwt.by_kid)


def test_svid_bundle_sequence_grows_when_the_dev_trust_domain_is_replaced(tmp_path: Path) -> None:
    master = create_master_key(tmp_path / "master.key")
    published, first = svid_bundle(tmp_path, master)
    before = parse_bundle(json.loads(published.render()[0]))
    replaced = DevTrustDomain.create(tmp_path, "a.example", master)  # tether init --force
    jwt_file = DevTrustDomain.bundle_path(tmp_path, "a.example")
    later = jwt_file.stat().st_mtime_ns + 2_000_000_000  # written later (no test waits for the clock)
    os.utime(jwt_file, ns=(later, later))
    after = parse_bundle(json.loads(published.render()[0]))
    assert set(after.jwt.by_kid) == {replaced.kid} != {first.kid}
    assert after.sequence is not None and before.sequence is not None and after.sequence > before.sequence


def test_svid_bundle_without_a_dev_trust_domain_is_empty_but_valid_json(tmp_path: Path) -> None:
    body, _ = SvidBundle("tether.local", jwt_file=None, x509_file=None).render()
    document = json.loads(body)
    assert document["keys"] == []
    with pytest.raises(ValueError, match="no authorities"):  # a bundle client keeps what it had
        parse_bundle(document)
