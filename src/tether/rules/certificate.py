"""Client certificates: thumbprints, X.509-SVIDs and the RFC 9440 ``Client-Cert`` headers (pure).

RFC 8705 binds a token to the certificate its client presented over mutual TLS: ``cnf``
carries ``x5t#S256``, the base64url SHA-256 of the certificate's DER (§3.1), and whoever
verifies the token compares it with the certificate of the connection. A SPIFFE X.509-SVID
names its workload in exactly one URI SAN and chains to its trust domain's X.509 bundle
(SPIFFE X509-SVID §4, §5); RFC 9440 carries the certificate from a TLS terminator in a
structured-field byte sequence. Nothing here does I/O: adapters hand in DER bytes.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from tether.errors import InvalidClient, InvalidToken
from tether.rules.principal import spiffe_trust_domain

__all__ = [
    "MAX_CERTIFICATE",
    "MAX_CHAIN",
    "ClientCertificate",
    "check_certificate_binding",
    "client_cert_header",
    "load_certificate",
    "parse_client_cert",
    "parse_client_cert_chain",
    "spiffe_id_of",
    "thumbprint",
    "verify_svid",
]

#: a DER certificate larger than this is refused before parsing (an X.509-SVID is ~600 bytes)
MAX_CERTIFICATE = 16 * 1024
#: intermediates accepted with a leaf (RFC 9440 ``Client-Cert-Chain``, or a TLS chain)
MAX_CHAIN = 8
_THUMBPRINT = re.compile(r"[A-Za-z0-9_-]{43}")
_SF_BINARY = re.compile(r":([A-Za-z0-9+/]*={0,2}):")


def thumbprint(der: bytes) -> str:
    """RFC 8705 §3.1: base64url (no padding) of the SHA-256 of the certificate's DER encoding."""
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")


def is_thumbprint(value: object) -> bool:
    return isinstance(value, str) and _THUMBPRINT.fullmatch(value) is not None


@dataclass(frozen=True)
class ClientCertificate:
    """The certificate a caller presented: its leaf (DER), any intermediates it sent, and how
    it reached us — ``tls`` (this server's own handshake verified it) or ``proxy`` (a
    configured TLS terminator forwarded it, RFC 9440)."""

    der: bytes
    chain: tuple[bytes, ...] = ()
    source: str = "tls"

    @functools.cached_property
    def thumbprint(self) -> str:
        """Computed once per request: the binding check, the hop and the principal all read it."""
        return thumbprint(self.der)


def load_certificate(der: bytes) -> x509.Certificate:
    """Parse a DER certificate, refusing oversized or malformed input as ``ValueError``.

    cryptography parses the version and extensions lazily and raises its own exception types
    for them (a duplicated extension, an unknown version); they are forced here so that every
    malformed certificate is one ``ValueError`` before any rule reads it — never a 500."""
    if not der or len(der) > MAX_CERTIFICATE:
        raise ValueError("certificate is empty or too large")
    try:
        cert = x509.load_der_x509_certificate(der)
        _ = cert.version, cert.extensions, cert.subject, cert.issuer
    except (ValueError, x509.DuplicateExtension, x509.InvalidVersion, x509.UnsupportedGeneralNameType) as exc:
        raise ValueError(f"malformed certificate: {exc}") from exc
    return cert


def _sf_binary(item: str) -> bytes:
    match = _SF_BINARY.fullmatch(item.strip())
    if match is None:
        raise ValueError("not a structured-field byte sequence")
    try:
        der = base64.b64decode(match.group(1), validate=True)
    except binascii.Error as exc:
        raise ValueError("bad base64 in a byte sequence") from exc
    if not der or len(der) > MAX_CERTIFICATE:
        raise ValueError("certificate is empty or too large")
    return der


def client_cert_header(der: bytes) -> str:
    """RFC 9440 §2.2 ``Client-Cert`` value for a DER certificate: a structured-field byte sequence
    (what a TLS terminator sends; ``parse_client_cert`` reads it back)."""
    return ":" + base64.b64encode(der).decode("ascii") + ":"


def parse_client_cert(value: str) -> bytes:
    """RFC 9440 §2.2 ``Client-Cert``: one sf-binary item, the DER leaf certificate."""
    if len(value) > MAX_CERTIFICATE * 2:
        raise ValueError("Client-Cert header too large")
    return _sf_binary(value)


def parse_client_cert_chain(value: str) -> tuple[bytes, ...]:
    """RFC 9440 §2.3 ``Client-Cert-Chain``: a list of sf-binary items, leaf's issuer first."""
    if len(value) > MAX_CERTIFICATE * 2 * MAX_CHAIN:
        raise ValueError("Client-Cert-Chain header too large")
    items = [item for item in value.split(",") if item.strip()]
    if len(items) > MAX_CHAIN:
        raise ValueError("Client-Cert-Chain lists too many certificates")
    return tuple(_sf_binary(item) for item in items)


def spiffe_id_of(cert: x509.Certificate) -> str:
    """The SPIFFE ID of an X.509-SVID leaf (SPIFFE X509-SVID §2, §4.1-4.3).

    Exactly one URI SAN, a ``spiffe://`` ID; the leaf is not a CA and may sign
    (``digitalSignature``) but not issue certificates or CRLs. Anything else is ``ValueError``.
    """
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier
        )
    except x509.ExtensionNotFound as exc:
        raise ValueError("certificate has no subject alternative name") from exc
    if len(uris) != 1:
        raise ValueError(f"an X.509-SVID has exactly one URI SAN, this one has {len(uris)}")
    spiffe_id = uris[0]
    if spiffe_trust_domain(spiffe_id) is None:
        raise ValueError("the URI SAN is not a SPIFFE ID")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if constraints.ca:
            raise ValueError("an X.509-SVID leaf must not be a CA certificate")
    except x509.ExtensionNotFound:
        pass
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise ValueError("an X.509-SVID leaf must carry key usage") from exc
    if not usage.digital_signature or usage.key_cert_sign or usage.crl_sign:
        raise ValueError("an X.509-SVID leaf signs (digitalSignature) and never issues certificates")
    return spiffe_id


def verify_svid(
    leaf_der: bytes, intermediates: Sequence[bytes], anchors: Sequence[x509.Certificate], *, trust_domain: str, now: float
) -> str:
    """Verify an X.509-SVID chain to ``trust_domain``'s X.509 bundle and return its SPIFFE ID.

    Path validation is cryptography's RFC 5280 client verifier (validity, signatures, CA
    constraints, ``clientAuth`` extended key usage); the SPIFFE ID must be in
    ``trust_domain`` — a certificate from another domain's CA never names a workload here.
    Every failure is ``InvalidClient`` (RFC 6749 §5.2: client authentication failed).
    """
    try:
        leaf = load_certificate(leaf_der)
        spiffe_id = spiffe_id_of(leaf)
        chain = [load_certificate(der) for der in intermediates[:MAX_CHAIN]]
    except ValueError as exc:
        raise InvalidClient("client certificate is not a valid X.509-SVID", debug=str(exc)) from exc
    if spiffe_trust_domain(spiffe_id) != trust_domain:
        raise InvalidClient("client certificate is not from this trust domain", debug=f"{spiffe_id:.200}")
    if not anchors:
        raise InvalidClient("no X.509 bundle for the client's trust domain", debug=trust_domain)
    try:
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store(list(anchors)))
            .time(datetime.fromtimestamp(now, UTC))
            .max_chain_depth(MAX_CHAIN)
            .build_client_verifier()
        )
        verifier.verify(leaf, chain)
    except (verification.VerificationError, ValueError) as exc:
        raise InvalidClient("client certificate does not chain to its trust domain's bundle", debug=str(exc)) from exc
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise InvalidClient("client certificate is not for client authentication")
    return spiffe_id


def check_certificate_binding(x5t: str | None, presented: ClientCertificate | None) -> None:
    """RFC 8705 §3: a certificate-bound token is only honoured with the certificate it names.

    No certificate (plain HTTP, a proxy not trusted, a client that sent none) or another
    certificate is ``invalid_token``; the token is never downgraded to a bearer token.
    """
    if x5t is None:
        return
    if presented is None:
        raise InvalidToken("certificate-bound token presented without a client certificate")
    if presented.thumbprint != x5t:
        raise InvalidToken("client certificate does not match the token binding", debug=f"{presented.thumbprint} != {x5t}")
