"""The bundle a deployment publishes (``federation.published``): its trust domain's authorities, a
sequence that grows with every change tether makes, and one rendering per change."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from tether.federation.published import PublishedBundle, published_sequence
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


def test_published_bundle_lists_dev_svid_keys_signing_keys_and_the_dev_ca(tmp_path: Path) -> None:
    master = create_master_key(tmp_path / "master.key")
    dev = DevTrustDomain.create(tmp_path, "a.example", master)
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(DevCA.create("a.example").bundle_pem)
    keys = ring(master, NOW)
    published = PublishedBundle("a.example", jwt_file=DevTrustDomain.bundle_path(tmp_path, "a.example"), x509_file=ca_file)
    body, etag = published.render(keys, now=NOW)
    document = json.loads(body)
    bundle = parse_bundle(document)
    assert set(bundle.jwt.by_kid) == {dev.kid, keys.current.kid}
    assert {entry["use"] for entry in document["keys"]} == {"jwt-svid", "x509-svid"}
    assert not any("d" in entry for entry in document["keys"])  # public halves only
    assert len(bundle.x509) == 1 and bundle.sequence == published_sequence(keys, now=NOW)
    assert published.render(keys, now=NOW) == (body, etag)  # reused until something changes
    rotated = ring(master, NOW, NOW + 5, retired_until={NOW: NOW + 900})
    body2, etag2 = published.render(rotated, now=NOW + 6)
    assert etag2 != etag and parse_bundle(json.loads(body2)).sequence > bundle.sequence  # type: ignore[operator]
