"""Client certificate rules (RFC 8705 §2.1, §3.1; RFC 9440 §2; SPIFFE X509-SVID §4-5), pure.

Certificates are made here with ``cryptography`` (``tether.identity.dev_x509``): real
signatures, real path validation, nothing mocked.
"""

from __future__ import annotations

import base64
import hashlib
import time
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tether.errors import InvalidClient, InvalidToken
from tether.identity.dev_x509 import DevCA, self_signed
from tether.rules.certificate import (
    MAX_CERTIFICATE,
    MAX_CHAIN,
    ClientCertificate,
    check_certificate_binding,
    client_cert_header,
    parse_client_cert,
    parse_client_cert_chain,
    spiffe_id_of,
    thumbprint,
    verify_svid,
)

NOW = time.time()
DOMAIN = "example.org"
AGENT = "spiffe://example.org/agent"


@pytest.fixture(scope="module")
def ca() -> DevCA:
    return DevCA.create(DOMAIN, now=NOW)


def _sf(der: bytes) -> str:
    return client_cert_header(der)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# ---------------------------------------------------------------------------------------------
# thumbprint (RFC 8705 §3.1)
# ---------------------------------------------------------------------------------------------


def test_MTLS_thumbprint_is_base64url_sha256_of_the_der(ca: DevCA) -> None:
    der = ca.issue_svid(AGENT, now=NOW).der
    expected = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")
    assert thumbprint(der) == expected and len(expected) == 43
    assert ClientCertificate(der).thumbprint == expected


def test_MTLS_thumbprint_differs_for_a_reissued_certificate_of_the_same_id(ca: DevCA) -> None:
    assert thumbprint(ca.issue_svid(AGENT, now=NOW).der) != thumbprint(ca.issue_svid(AGENT, now=NOW).der)


# ---------------------------------------------------------------------------------------------
# X.509-SVID path validation
# ---------------------------------------------------------------------------------------------


def test_MTLS_svid_verifies_to_its_trust_domain_bundle(ca: DevCA) -> None:
    svid = ca.issue_svid(AGENT, now=NOW)
    assert verify_svid(svid.der, [], [ca.certificate], trust_domain=DOMAIN, now=NOW) == AGENT


def test_MTLS_svid_signed_by_another_ca_of_the_same_name_refused(ca: DevCA) -> None:
    rogue = DevCA.create(DOMAIN, now=NOW).issue_svid(AGENT, now=NOW)
    with pytest.raises(InvalidClient) as err:
        verify_svid(rogue.der, [], [ca.certificate], trust_domain=DOMAIN, now=NOW)
    assert err.value.error == "invalid_client"


def test_MTLS_svid_of_another_trust_domain_refused_even_with_its_own_ca_in_the_anchors(ca: DevCA) -> None:
    other = DevCA.create("other.org", now=NOW)
    svid = other.issue_svid("spiffe://other.org/agent", now=NOW)
    with pytest.raises(InvalidClient, match="not from this trust domain"):
        verify_svid(svid.der, [], [ca.certificate, other.certificate], trust_domain=DOMAIN, now=NOW)


@pytest.mark.parametrize("offset", [-7200, 7200], ids=["not-yet-valid", "expired"])
def test_MTLS_svid_outside_its_validity_refused(ca: DevCA, offset: int) -> None:
    svid = ca.issue_svid(AGENT, ttl=3600, now=NOW)
    with pytest.raises(InvalidClient, match="does not chain"):
        verify_svid(svid.der, [], [ca.certificate], trust_domain=DOMAIN, now=NOW + offset)


def test_MTLS_no_bundle_for_the_domain_refused(ca: DevCA) -> None:
    svid = ca.issue_svid(AGENT, now=NOW)
    with pytest.raises(InvalidClient, match=r"no X\.509 bundle"):
        verify_svid(svid.der, [], [], trust_domain=DOMAIN, now=NOW)


def test_MTLS_server_certificate_is_not_a_workload_identity(ca: DevCA) -> None:
    server = ca.issue_server(["127.0.0.1", "localhost"], now=NOW)
    with pytest.raises(InvalidClient, match=r"not a valid X\.509-SVID"):
        verify_svid(server.der, [], [ca.certificate], trust_domain=DOMAIN, now=NOW)


def test_MTLS_garbage_and_oversized_der_refused(ca: DevCA) -> None:
    for der in (b"", b"\x30\x03\x02\x01\x00", b"\x30" * (MAX_CERTIFICATE + 1)):
        with pytest.raises(InvalidClient):
            verify_svid(der, [], [ca.certificate], trust_domain=DOMAIN, now=NOW)


def _leaf(
    ca: DevCA,
    *,
    uris: list[str],
    ca_flag: bool = False,
    usage: dict[str, bool] | None = None,
    eku: list[x509.ObjectIdentifier] | None = None,
) -> x509.Certificate:
    """A leaf signed by ``ca`` with the given (possibly non-conforming) SVID properties."""
    key = ec.generate_private_key(ec.SECP256R1())
    bits = {
        "digital_signature": True,
        "content_commitment": False,
        "key_encipherment": False,
        "data_encipherment": False,
        "key_agreement": False,
        "key_cert_sign": False,
        "crl_sign": False,
        "encipher_only": False,
        "decipher_only": False,
    }
    bits.update(usage or {})
    at = datetime.fromtimestamp(NOW, UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "t")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(at - timedelta(minutes=1))
        .not_valid_after(at + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca_flag, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(**bits), critical=True)
        .add_extension(x509.ExtendedKeyUsage(eku if eku is not None else [ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False
        )
    return builder.sign(ca.key, hashes.SHA256())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"uris": []}, "no subject alternative name", id="no-san"),
        pytest.param({"uris": [AGENT, "spiffe://example.org/other"]}, "exactly one URI SAN", id="two-uris"),
        pytest.param({"uris": ["https://example.org/agent"]}, "not a SPIFFE ID", id="https-uri"),
        pytest.param({"uris": ["spiffe://example.org"]}, "not a SPIFFE ID", id="no-path"),
        pytest.param({"uris": [AGENT], "ca_flag": True}, "must not be a CA", id="ca-leaf"),
        pytest.param({"uris": [AGENT], "usage": {"key_cert_sign": True}}, "never issues", id="cert-sign"),
        pytest.param({"uris": [AGENT], "usage": {"crl_sign": True}}, "never issues", id="crl-sign"),
        pytest.param({"uris": [AGENT], "usage": {"digital_signature": False, "key_agreement": True}}, "signs", id="no-ds"),
    ],
)
def test_MTLS_non_conforming_svid_refused(ca: DevCA, changes: dict[str, object], message: str) -> None:
    cert = _leaf(ca, **changes)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        spiffe_id_of(cert)
    with pytest.raises(InvalidClient):
        verify_svid(_der(cert), [], [ca.certificate], trust_domain=DOMAIN, now=NOW)


def test_MTLS_svid_for_server_auth_only_refused_as_client(ca: DevCA) -> None:
    cert = _leaf(ca, uris=[AGENT], eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    with pytest.raises(InvalidClient):
        verify_svid(_der(cert), [], [ca.certificate], trust_domain=DOMAIN, now=NOW)


def test_MTLS_svid_through_an_intermediate_verifies_only_with_the_intermediate(ca: DevCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    at = datetime.fromtimestamp(NOW, UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intermediate")])
    inter_cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(at - timedelta(minutes=1))
        .not_valid_after(at + timedelta(hours=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    inter = DevCA(DOMAIN, inter_cert, key)
    leaf = inter.issue_svid(AGENT, now=NOW)
    assert verify_svid(leaf.der, [_der(inter_cert)], [ca.certificate], trust_domain=DOMAIN, now=NOW) == AGENT
    with pytest.raises(InvalidClient):
        verify_svid(leaf.der, [], [ca.certificate], trust_domain=DOMAIN, now=NOW)


# ---------------------------------------------------------------------------------------------
# RFC 9440 headers
# ---------------------------------------------------------------------------------------------


def test_MTLS_client_cert_header_round_trips(ca: DevCA) -> None:
    der = ca.issue_svid(AGENT, now=NOW).der
    assert parse_client_cert(_sf(der)) == der
    assert parse_client_cert_chain(f"{_sf(der)}, {_sf(_der(ca.certificate))}") == (der, _der(ca.certificate))
    assert parse_client_cert_chain("") == ()


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("::", id="empty-bytes"),
        pytest.param("MIIB", id="no-colons"),
        pytest.param(":MIIB", id="unterminated"),
        pytest.param(":MI*B:", id="bad-alphabet"),
        pytest.param(":TUlJQg=:", id="bad-padding"),
        pytest.param(":" + "A" * (MAX_CERTIFICATE * 2) + ":", id="oversized"),
        pytest.param('"MIIB"', id="string-item"),
    ],
)
def test_MTLS_malformed_client_cert_header_refused(value: str) -> None:
    with pytest.raises(ValueError):
        parse_client_cert(value)


def test_MTLS_client_cert_chain_capped(ca: DevCA) -> None:
    item = _sf(_der(ca.certificate))
    assert len(parse_client_cert_chain(", ".join([item] * MAX_CHAIN))) == MAX_CHAIN
    with pytest.raises(ValueError, match="too many"):
        parse_client_cert_chain(", ".join([item] * (MAX_CHAIN + 1)))


# ---------------------------------------------------------------------------------------------
# the binding check (RFC 8705 §3)
# ---------------------------------------------------------------------------------------------


def test_MTLS_binding_holds_only_for_the_bound_certificate(ca: DevCA) -> None:
    mine, other = ca.issue_svid(AGENT, now=NOW), self_signed("someone", now=NOW)
    check_certificate_binding(thumbprint(mine.der), ClientCertificate(mine.der))
    check_certificate_binding(None, None)  # a token not bound to a certificate asks for none
    with pytest.raises(InvalidToken, match="without a client certificate") as err:
        check_certificate_binding(thumbprint(mine.der), None)
    assert err.value.error == "invalid_token"
    with pytest.raises(InvalidToken, match="does not match"):
        check_certificate_binding(thumbprint(mine.der), ClientCertificate(other.der, source="proxy"))
