"""RFC 8705 §2 client authentication by certificate (``tether.identity.x509``), as pure decisions.

Real certificates from ``DevCA``/``self_signed``; no TLS here (tests/sts/test_mtls_e2e.py does
the same over real mutual TLS). Every refusal is ``invalid_client`` (RFC 6749 §5.2).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tether.config import load_config
from tether.errors import InvalidClient
from tether.identity.dev_x509 import DevCA, Issued, self_signed
from tether.identity.x509 import (
    SELF_SIGNED_TLS_CLIENT_AUTH,
    TLS_CLIENT_AUTH,
    CertificateAuthentication,
    CertificateAuthenticator,
    authenticate_certificate,
    client_ca_files,
    pem_file,
)
from tether.model import IdentityKind
from tether.rules.certificate import ClientCertificate

# runs the same whatever TETHER_TEST_STORE says: the PostgreSQL pass of scripts/test leaves it out
pytestmark = pytest.mark.store_independent

AGENT = "spiffe://tether.local/agent/research"
CLIENT = "user:batch-client"
NOW = time.time()


@pytest.fixture(scope="module")
def home() -> DevCA:
    return DevCA.create("tether.local", now=NOW - 3600)


@pytest.fixture(scope="module")
def other() -> DevCA:
    return DevCA.create("other.example", now=NOW - 3600)


def presented(issued: Issued) -> ClientCertificate:
    return ClientCertificate(issued.der)


def decide(cert: ClientCertificate | None, client_id: str | None, *, home: DevCA, other: DevCA,
           registered: Issued | None = None, now: float = NOW) -> CertificateAuthentication:  # fmt: skip
    return authenticate_certificate(
        cert,
        client_id,
        bundles={"tether.local": (home.certificate,), "other.example": (other.certificate,)},
        registered={CLIENT: (registered.certificate,)} if registered else {},
        now=now,
    )


def test_MTLS_02_an_svid_of_its_trust_domain_authenticates_as_its_spiffe_id(home: DevCA, other: DevCA) -> None:
    svid = home.issue_svid(AGENT, now=NOW)
    auth = decide(presented(svid), AGENT, home=home, other=other)
    assert auth.method == TLS_CLIENT_AUTH
    identity = auth.identity
    assert (identity.principal, identity.kind, identity.issuer, identity.trust_domain) == (
        AGENT,
        IdentityKind.SPIFFE,
        "spiffe://tether.local",
        "tether.local",
    )
    assert identity.exp == int(svid.certificate.not_valid_after_utc.timestamp())
    assert identity.jti is None


def test_MTLS_02_a_bundle_with_several_cas_accepts_each(home: DevCA, other: DevCA) -> None:
    rotated = DevCA.create("tether.local", now=NOW - 60)
    svid = rotated.issue_svid(AGENT, now=NOW)
    auth = authenticate_certificate(
        presented(svid), AGENT, bundles={"tether.local": (home.certificate, rotated.certificate)}, registered={}, now=NOW
    )
    assert auth.identity.principal == AGENT


def test_BCP_10_no_certificate_is_invalid_client(home: DevCA, other: DevCA) -> None:
    with pytest.raises(InvalidClient, match="a client certificate is required"):
        decide(None, AGENT, home=home, other=other)


def test_BCP_10_no_client_id_is_invalid_client(home: DevCA, other: DevCA) -> None:
    with pytest.raises(InvalidClient, match="client_id"):
        decide(presented(home.issue_svid(AGENT, now=NOW)), None, home=home, other=other)


def test_MTLS_02_another_ca_for_the_same_domain_is_invalid_client(home: DevCA, other: DevCA) -> None:
    rogue = DevCA.create("tether.local", now=NOW - 3600)
    with pytest.raises(InvalidClient, match="does not chain"):
        decide(presented(rogue.issue_svid(AGENT, now=NOW)), AGENT, home=home, other=other)


def test_MTLS_02_a_ca_of_another_domain_never_vouches_for_this_one(home: DevCA, other: DevCA) -> None:
    # other.example's CA issues a certificate naming a tether.local workload: its bundle is not tether.local's
    forged = DevCA("tether.local", other.certificate, other.key).issue_svid(AGENT, now=NOW)
    with pytest.raises(InvalidClient, match="does not chain"):
        decide(presented(forged), AGENT, home=home, other=other)


def test_MTLS_02_an_svid_of_another_trust_domain_is_not_this_client(home: DevCA, other: DevCA) -> None:
    svid = other.issue_svid("spiffe://other.example/agent/research", now=NOW)
    with pytest.raises(InvalidClient, match="not from this trust domain"):
        decide(presented(svid), AGENT, home=home, other=other)


def test_MTLS_02_the_spiffe_id_must_equal_client_id(home: DevCA, other: DevCA) -> None:
    svid = home.issue_svid("spiffe://tether.local/agent/other", now=NOW)
    with pytest.raises(InvalidClient, match="does not name the client_id"):
        decide(presented(svid), AGENT, home=home, other=other)


def test_MTLS_02_a_trust_domain_without_an_x509_bundle_authenticates_nobody(home: DevCA) -> None:
    svid = home.issue_svid(AGENT, now=NOW)
    with pytest.raises(InvalidClient, match=r"no X\.509 bundle"):
        authenticate_certificate(presented(svid), AGENT, bundles={"other.example": (home.certificate,)}, registered={}, now=NOW)


@pytest.mark.parametrize("shift", [-7200, 7200], ids=["not-yet-valid", "expired"])
def test_MTLS_02_a_certificate_outside_its_validity_is_refused(home: DevCA, other: DevCA, shift: int) -> None:
    svid = home.issue_svid(AGENT, now=NOW, ttl=600)
    with pytest.raises(InvalidClient, match="does not chain"):
        decide(presented(svid), AGENT, home=home, other=other, now=NOW + shift)


def test_an_unregistered_non_spiffe_client_is_invalid_client(home: DevCA, other: DevCA) -> None:
    with pytest.raises(InvalidClient, match="not registered"):
        decide(presented(self_signed("x")), "user:nobody", home=home, other=other)


def test_self_signed_client_is_authenticated_by_thumbprint(home: DevCA, other: DevCA) -> None:
    cert = self_signed(CLIENT, now=NOW)
    auth = decide(presented(cert), CLIENT, home=home, other=other, registered=cert)
    assert auth.method == SELF_SIGNED_TLS_CLIENT_AUTH
    assert (auth.identity.principal, auth.identity.kind, auth.identity.issuer) == (CLIENT, IdentityKind.CLIENT, CLIENT)


def test_self_signed_another_certificate_is_invalid_client(home: DevCA, other: DevCA) -> None:
    registered = self_signed(CLIENT, now=NOW)
    with pytest.raises(InvalidClient, match="not the one registered"):
        decide(presented(self_signed(CLIENT, now=NOW)), CLIENT, home=home, other=other, registered=registered)


def test_self_signed_certificate_of_another_client_is_not_this_one(home: DevCA, other: DevCA) -> None:
    registered = self_signed(CLIENT, now=NOW)
    # the registered certificate presented under a SPIFFE client_id: that path needs an SVID
    with pytest.raises(InvalidClient):
        decide(presented(registered), AGENT, home=home, other=other, registered=registered)


def test_MTLS_02_self_signed_expired_registration_is_refused(home: DevCA, other: DevCA) -> None:
    cert = self_signed(CLIENT, now=NOW, ttl=600)
    with pytest.raises(InvalidClient, match="not valid now"):
        decide(presented(cert), CLIENT, home=home, other=other, registered=cert, now=NOW + 3600)


def test_bundle_file_is_reread_when_it_rotates_and_kept_when_broken(tmp_path: Path, home: DevCA) -> None:
    path = tmp_path / "bundle.pem"
    path.write_bytes(home.bundle_pem)
    source = pem_file(path)
    assert source.current() == (home.certificate,)
    rotated = DevCA.create("tether.local")
    path.write_bytes(home.bundle_pem + rotated.bundle_pem)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    assert source.current() == (home.certificate, rotated.certificate)
    path.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage")  # a rewrite caught half-way
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 20_000_000))
    assert source.current() == (home.certificate, rotated.certificate)


def test_authenticator_reads_rotated_bundle_at_the_next_request(tmp_path: Path, home: DevCA) -> None:
    path = tmp_path / "bundle.pem"
    path.write_bytes(home.bundle_pem)
    auth = CertificateAuthenticator({"tether.local": path}, {})
    rotated = DevCA.create("tether.local")
    svid = presented(rotated.issue_svid(AGENT))
    with pytest.raises(InvalidClient):
        auth.authenticate(svid, AGENT, now=time.time())
    path.write_bytes(home.bundle_pem + rotated.bundle_pem)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    assert auth.authenticate(svid, AGENT, now=time.time()).identity.principal == AGENT
    assert bool(auth) and not bool(CertificateAuthenticator({}, {}))


def test_client_ca_files_lists_every_x509_bundle_and_registered_certificate(tmp_path: Path, home: DevCA) -> None:
    (tmp_path / "td.pem").write_bytes(home.bundle_pem)
    (tmp_path / "client.pem").write_bytes(self_signed(CLIENT).cert_pem)
    (tmp_path / "tether.toml").write_text(
        'issuer = "https://127.0.0.1:8700"\n'
        '[[trust_domains]]\nname = "tether.local"\nbundle_url = "https://td.example/bundle"\nx509_bundle_file = "td.pem"\n'
        '[[trust_domains]]\nname = "jwt.only"\nbundle_url = "https://jwt.example/bundle"\n'
        f'[[clients]]\nclient_id = "{CLIENT}"\ncertificate = "client.pem"\n',
        encoding="utf-8",
    )
    config = load_config(tmp_path / "tether.toml")
    assert client_ca_files(config) == (tmp_path / "td.pem", tmp_path / "client.pem")
