"""A development X.509 CA: server certificates and X.509-SVIDs without SPIRE (``tether init --tls``).

The CA is one ECDSA P-256 key with a self-signed root whose certificate is the trust
domain's X.509 bundle (SPIFFE Trust Domain and Bundle §4: a set of CA certificates). It
issues two kinds of leaf: a TLS server certificate for the issuer's host names (DNS and IP
SANs, ``serverAuth``) and X.509-SVIDs (one ``spiffe://`` URI SAN, ``digitalSignature``, not a
CA, ``clientAuth`` and ``serverAuth``, as SPIRE issues them). ``self_signed`` makes a client's
own certificate for RFC 8705 §2.2 ``self_signed_tls_client_auth``. Everything is PEM.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tether.rules.certificate import thumbprint
from tether.rules.principal import spiffe_trust_domain

__all__ = ["DevCA", "Issued", "pem_chain", "self_signed", "write_secret"]


@dataclass(frozen=True)
class Issued:
    """A leaf certificate with its private key (PEM, unencrypted: a dev credential)."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def thumbprint(self) -> str:
        """RFC 8705 §3.1 ``x5t#S256`` of the certificate."""
        return thumbprint(self.der)

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """``stem.pem`` (certificate) and ``stem.key`` (private, mode 0600) in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
        cert.write_bytes(self.cert_pem)
        write_secret(key, self.key_pem)
        return cert, key


def write_secret(path: Path, data: bytes) -> None:
    """Write a private key only its owner can read (mode 0600 whatever the umask; replaces the
    file's content: a re-issued credential overwrites the old one, unlike ``filemodes.write_private``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def pem_chain(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _builder(
    subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey, now: datetime, ttl: int
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(seconds=60))
        .not_valid_after(now + timedelta(seconds=ttl))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )


_LEAF_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


class DevCA:
    """A root CA for one trust domain (``name``), dated by the caller's ``now``."""

    def __init__(self, name: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.name = name
        self.certificate = certificate
        self.key = key

    @classmethod
    def create(cls, name: str, *, now: float | None = None, ttl: int = 365 * 86400) -> DevCA:
        key = ec.generate_private_key(ec.SECP256R1())
        at = datetime.fromtimestamp(now, UTC) if now is not None else datetime.now(UTC)
        subject = x509.Name(
            [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tether dev"), x509.NameAttribute(NameOID.COMMON_NAME, name)]
        )
        ca_usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=True,
            encipher_only=False,
            decipher_only=False,
        )
        cert = (
            _builder(subject, subject, key.public_key(), at, ttl)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(ca_usage, critical=True)
        ).sign(key, hashes.SHA256())
        return cls(name, cert, key)

    @classmethod
    def load(cls, name: str, cert_pem: bytes, key_pem: bytes) -> DevCA:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the dev CA key must be an EC key")
        return cls(name, x509.load_pem_x509_certificate(cert_pem), key)

    @property
    def bundle_pem(self) -> bytes:
        """The trust domain's X.509 bundle: the root certificate."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def _leaf(
        self, subject: x509.Name, san: list[x509.GeneralName], usages: list[x509.ObjectIdentifier], now: float | None, ttl: int
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        at = datetime.fromtimestamp(now, UTC) if now is not None else datetime.now(UTC)
        cert = (
            _builder(subject, self.certificate.subject, key.public_key(), at, ttl)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_LEAF_USAGE, critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return Issued(cert, key)

    def issue_svid(self, spiffe_id: str, *, ttl: int = 3600, now: float | None = None) -> Issued:
        """An X.509-SVID for ``spiffe_id`` (which must be in this trust domain)."""
        if spiffe_trust_domain(spiffe_id) != self.name:
            raise ValueError(f"`{spiffe_id}` is not a spiffe id in trust domain `{self.name}`")
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tether dev")])
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
        return self._leaf(subject, [x509.UniformResourceIdentifier(spiffe_id)], usages, now, ttl)

    def issue_server(self, hosts: list[str], *, ttl: int = 90 * 86400, now: float | None = None) -> Issued:
        """A TLS server certificate for ``hosts`` (names become DNS SANs, addresses IP SANs)."""
        san: list[x509.GeneralName] = []
        for host in hosts:
            try:
                san.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                san.append(x509.DNSName(host))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
        return self._leaf(subject, san, [ExtendedKeyUsageOID.SERVER_AUTH], now, ttl)


def self_signed(name: str, *, ttl: int = 365 * 86400, now: float | None = None) -> Issued:
    """A client's own self-signed certificate (RFC 8705 §2.2), registered with tether by thumbprint."""
    key = ec.generate_private_key(ec.SECP256R1())
    at = datetime.fromtimestamp(now, UTC) if now is not None else datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])])
    cert = (
        _builder(subject, subject, key.public_key(), at, ttl)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_LEAF_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)
