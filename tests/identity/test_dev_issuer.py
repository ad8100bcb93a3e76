"""The dev trust domain: sealed key, bundle on disk, SVIDs that the STS verifies like SPIRE's."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest
from identity_support import NOW

from tether.identity.checks import IdentityError
from tether.identity.dev_issuer import DevTrustDomain
from tether.identity.jwks_cache import FileKeySource
from tether.identity.spiffe import SvidVerifier
from tether.keys.sealed import SealError
from tether.model import IdentityKind
from tether.rules.jws import b64url_decode

NAME = "dev.example"
STS = "https://sts.example"
AGENT = f"spiffe://{NAME}/agent/research"


@pytest.fixture
def master() -> bytes:
    return os.urandom(32)


def verifier_for(data_dir: Path, name: str = NAME) -> SvidVerifier:
    bundle = DevTrustDomain.bundle_path(data_dir, name)
    return SvidVerifier({name: FileKeySource(bundle)}, audiences=[STS], max_lifetime=3600, skew=10, foreign_issuers=[STS])


def test_create_writes_sealed_key_and_public_bundle(tmp_path: Path, master: bytes) -> None:
    domain = DevTrustDomain.create(tmp_path, NAME, master)
    key_file = DevTrustDomain.key_path(tmp_path, NAME)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    sealed = key_file.read_bytes()
    private_d = domain.key.as_dict(private=True)["d"]
    assert isinstance(private_d, str)  # `d` is a single string member
    assert private_d.encode() not in sealed  # sealed, not plain JWK

    bundle = json.loads(DevTrustDomain.bundle_path(tmp_path, NAME).read_text())
    assert len(bundle["keys"]) == 1
    (entry,) = bundle["keys"]
    assert entry["use"] == "jwt-svid"
    assert entry["kid"] == domain.kid == domain.key.thumbprint()
    assert entry["kty"] == "EC"
    assert entry["crv"] == "P-256"
    assert "d" not in entry


def test_create_load_round_trip(tmp_path: Path, master: bytes) -> None:
    created = DevTrustDomain.create(tmp_path, NAME, master)
    loaded = DevTrustDomain.load(tmp_path, NAME, master)
    assert loaded.name == NAME
    assert loaded.kid == created.kid
    assert loaded.key.as_dict(private=True) == created.key.as_dict(private=True)
    assert loaded.bundle() == created.bundle()


def test_load_with_wrong_master_key_refused(tmp_path: Path, master: bytes) -> None:
    DevTrustDomain.create(tmp_path, NAME, master)
    assert DevTrustDomain.load(tmp_path, NAME, master).name == NAME
    with pytest.raises(SealError):
        DevTrustDomain.load(tmp_path, NAME, os.urandom(32))


def test_sealed_key_bound_to_its_trust_domain_name(tmp_path: Path, master: bytes) -> None:
    """A sealed key moved into another domain's slot does not open (the name is associated data)."""
    DevTrustDomain.create(tmp_path, NAME, master)
    other = "other.example"
    DevTrustDomain.create(tmp_path, other, master)
    assert DevTrustDomain.load(tmp_path, other, master).name == other
    DevTrustDomain.key_path(tmp_path, other).write_bytes(DevTrustDomain.key_path(tmp_path, NAME).read_bytes())
    with pytest.raises(SealError):
        DevTrustDomain.load(tmp_path, other, master)


@pytest.mark.parametrize("reload", [False, True], ids=["created", "loaded"])
def test_issued_svid_verifies_with_bundle_on_disk(tmp_path: Path, master: bytes, reload: bool) -> None:
    domain = DevTrustDomain.create(tmp_path, NAME, master)
    if reload:
        domain = DevTrustDomain.load(tmp_path, NAME, master)
    token = domain.issue(AGENT, audience=STS, ttl=300, now=NOW)

    header = json.loads(b64url_decode(token.split(".")[0]))
    assert header == {"alg": "ES256", "kid": domain.kid, "typ": "JWT"}
    claims = json.loads(b64url_decode(token.split(".")[1]))
    assert claims["sub"] == AGENT
    assert claims["aud"] == [STS]
    assert claims["iat"] == NOW
    assert claims["exp"] == NOW + 300
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16
    assert "iss" not in claims

    identity = asyncio.run(verifier_for(tmp_path).verify(token, now=NOW))
    assert identity.principal == AGENT
    assert identity.kind is IdentityKind.SPIFFE
    assert identity.jti == claims["jti"]
    assert identity.exp == NOW + 300


def test_issued_svid_jti_unique_and_optional(tmp_path: Path, master: bytes) -> None:
    domain = DevTrustDomain.create(tmp_path, NAME, master)
    jtis = {
        asyncio.run(verifier_for(tmp_path).verify(domain.issue(AGENT, audience=STS, ttl=60, now=NOW), now=NOW)).jti
        for _ in range(20)
    }
    assert len(jtis) == 20
    without = domain.issue(AGENT, audience=STS, ttl=60, now=NOW, with_jti=False)
    assert asyncio.run(verifier_for(tmp_path).verify(without, now=NOW)).jti is None


def test_issued_svid_not_trusted_by_another_dev_domain(tmp_path: Path, master: bytes) -> None:
    a = DevTrustDomain.create(tmp_path / "a", NAME, master)
    DevTrustDomain.create(tmp_path / "b", NAME, master)  # same name, different key
    token = a.issue(AGENT, audience=STS, ttl=60, now=NOW)
    assert asyncio.run(verifier_for(tmp_path / "a").verify(token, now=NOW)).principal == AGENT
    with pytest.raises(IdentityError):
        asyncio.run(verifier_for(tmp_path / "b").verify(token, now=NOW))


@pytest.mark.parametrize(
    "spiffe_id",
    [
        "spiffe://other.example/agent",
        "spiffe://dev.example.evil/agent",
        "spiffe://DEV.example/agent",
        "spiffe://dev.example/agent/../admin",
        "spiffe://dev.example/agent/",
        "spiffe://dev.example",
        "https://dev.example/agent",
        "k8s:ns/name",
    ],
)
def test_refuses_spiffe_id_outside_its_trust_domain(tmp_path: Path, master: bytes, spiffe_id: str) -> None:
    domain = DevTrustDomain.create(tmp_path, NAME, master)
    assert domain.issue(AGENT, audience=STS, ttl=60, now=NOW)
    with pytest.raises(ValueError, match="not a spiffe id in trust domain"):
        domain.issue(spiffe_id, audience=STS, ttl=60, now=NOW)
