"""Client authentication by certificate at the STS (RFC 8705 §2).

Two methods, chosen by the ``client_id`` the request names (RFC 8705 §2: the client_id is
always sent, and the certificate must be the one registered or issued for it):

* ``tls_client_auth`` (§2.1) for a SPIFFE ID: the certificate is an X.509-SVID whose URI SAN
  is exactly ``client_id`` and whose chain verifies to *that* trust domain's X.509 bundle
  (``x509_bundle_file``). A trust domain without an X.509 bundle authenticates nobody by
  certificate; a CA of one domain never vouches for another's workloads.
* ``self_signed_tls_client_auth`` (§2.2) for a ``[[clients]]`` entry with ``certificate``: the
  presented leaf's SHA-256 thumbprint must equal the registered certificate's (no chain: the
  registration is the trust).

Bundles rotate: each PEM file is re-read when it changes, keeping the last good contents if a
rewrite is caught half-way (``identity.watched``, as for JWKS bundles). The decision itself
(``authenticate_certificate``) is pure; only ``pem_file`` reads files.
``client_ca_files`` tells the TLS layer which CA files to ask client certificates for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tether.errors import InvalidClient
from tether.identity.watched import WatchedFile
from tether.model import IdentityKind, WorkloadIdentity
from tether.rules.certificate import ClientCertificate, load_certificate, thumbprint, verify_svid
from tether.rules.principal import spiffe_trust_domain

if TYPE_CHECKING:
    from tether.config import Config

__all__ = [
    "SELF_SIGNED_TLS_CLIENT_AUTH",
    "TLS_CLIENT_AUTH",
    "CertificateAuthentication",
    "CertificateAuthenticator",
    "authenticate_certificate",
    "client_ca_files",
]


#: RFC 8705 §2.1.1 / §2.2.1 ``token_endpoint_auth_method`` values
TLS_CLIENT_AUTH = "tls_client_auth"
SELF_SIGNED_TLS_CLIENT_AUTH = "self_signed_tls_client_auth"
#: a bundle file larger than this is refused (keeping the last good one)
MAX_BUNDLE_BYTES = 1024 * 1024


def client_ca_files(config: Config) -> tuple[Path, ...]:
    """The CA files a TLS server of this configuration asks client certificates to chain to.

    Every trust domain's X.509 bundle and every registered self-signed client certificate
    (RFC 8705 §2.2: a self-signed certificate is its own trust anchor at the handshake); the
    handshake only filters, the STS still checks which of them vouches for which client_id.
    Deduplicated, in configuration order.
    """
    files: list[Path] = [d.x509_bundle_file for d in config.trust_domains if d.x509_bundle_file is not None]
    files += [c.certificate for c in config.clients if c.certificate is not None]
    return tuple(dict.fromkeys(files))


def load_pem_certificates(data: bytes) -> tuple[x509.Certificate, ...]:
    """Every certificate of a PEM bundle (``ValueError`` if there is none or one is malformed)."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise ValueError("certificate bundle too large")
    certs = tuple(x509.load_pem_x509_certificates(data))
    if not certs:
        raise ValueError("no certificate in the bundle")
    return certs


def pem_file(path: Path) -> WatchedFile[tuple[x509.Certificate, ...]]:
    """A PEM bundle of certificates, re-read as it rotates (``identity.watched``)."""
    return WatchedFile(path, load_pem_certificates, (), what="certificate file", kept="one")


@dataclass(frozen=True)
class CertificateAuthentication:
    """The outcome: who the certificate proves, and by which RFC 8705 method."""

    identity: WorkloadIdentity
    method: str


def authenticate_certificate(
    presented: ClientCertificate | None,
    client_id: str | None,
    *,
    bundles: Mapping[str, Sequence[x509.Certificate]],
    registered: Mapping[str, Sequence[x509.Certificate]],
    now: float,
) -> CertificateAuthentication:
    """Who ``presented`` proves to be, as ``client_id`` (RFC 8705 §2); every failure is ``invalid_client``.

    ``bundles`` maps a trust domain to its X.509 bundle (only domains that have one);
    ``registered`` maps a self-signed client's id to its registered certificate(s).
    The identity carries the certificate's ``notAfter`` as ``exp`` (a session never outlives
    its credential, as with a JWT-SVID) and no ``jti``: the TLS handshake, not a single-use
    mark, is what proves this request is the holder's own.
    """
    if not client_id:
        raise InvalidClient("`client_id` is required with certificate client authentication")
    if presented is None:
        raise InvalidClient("a client certificate is required", debug=f"no certificate for {client_id:.200}")
    if client_id in registered:
        return _self_signed(presented, client_id, registered[client_id], now=now)
    domain = spiffe_trust_domain(client_id)
    if domain is None:
        raise InvalidClient("client is not registered for certificate authentication", debug=f"{client_id:.200}")
    anchors = bundles.get(domain)
    if not anchors:
        raise InvalidClient("no X.509 bundle for the client's trust domain", debug=domain)
    spiffe_id = verify_svid(presented.der, presented.chain, anchors, trust_domain=domain, now=now)
    if spiffe_id != client_id:
        raise InvalidClient("client certificate does not name the client_id", debug=f"{spiffe_id:.200} != {client_id:.200}")
    leaf = load_certificate(presented.der)
    identity = WorkloadIdentity(
        principal=spiffe_id,
        kind=IdentityKind.SPIFFE,
        issuer=f"spiffe://{domain}",
        exp=int(leaf.not_valid_after_utc.timestamp()),
        jti=None,
        token_hash=presented.thumbprint,
    )
    return CertificateAuthentication(identity, TLS_CLIENT_AUTH)


def _self_signed(
    presented: ClientCertificate, client_id: str, certs: Sequence[x509.Certificate], *, now: float
) -> CertificateAuthentication:
    """RFC 8705 §2.2: the registered certificate itself is the trust anchor, compared by thumbprint."""
    match = next((c for c in certs if thumbprint(c.public_bytes(Encoding.DER)) == presented.thumbprint), None)
    if match is None:
        raise InvalidClient("client certificate is not the one registered for this client", debug=f"{client_id:.200}")
    not_before, not_after = match.not_valid_before_utc.timestamp(), match.not_valid_after_utc.timestamp()
    if not not_before <= now < not_after:
        raise InvalidClient("registered client certificate is not valid now", debug=f"{client_id:.200}")
    identity = WorkloadIdentity(
        principal=client_id,
        kind=IdentityKind.CLIENT,
        issuer=client_id,
        exp=int(not_after),
        jti=None,
        token_hash=presented.thumbprint,
    )
    return CertificateAuthentication(identity, SELF_SIGNED_TLS_CLIENT_AUTH)


class CertificateAuthenticator:
    """``authenticate_certificate`` over the configured bundle and client certificate files."""

    def __init__(self, bundles: Mapping[str, Path], registered: Mapping[str, Path]) -> None:
        self._bundles = {domain: pem_file(path) for domain, path in bundles.items()}
        self._registered = {client_id: pem_file(path) for client_id, path in registered.items()}
        # read once at startup, so a broken file is logged then rather than at the first request
        for source in (*self._bundles.values(), *self._registered.values()):
            source.current()

    @classmethod
    def from_config(cls, config: Config) -> CertificateAuthenticator:
        return cls(
            {d.name: d.x509_bundle_file for d in config.trust_domains if d.x509_bundle_file is not None},
            {c.client_id: c.certificate for c in config.clients if c.certificate is not None},
        )

    def __bool__(self) -> bool:
        return bool(self._bundles or self._registered)

    def authenticate(
        self, presented: ClientCertificate | None, client_id: str | None, *, now: float
    ) -> CertificateAuthentication:
        """Only the file ``client_id`` names is looked at (stat per request, re-read on change)."""
        registered = {client_id: self._registered[client_id].current()} if client_id in self._registered else {}
        domain = spiffe_trust_domain(client_id) if client_id else None
        source = self._bundles.get(domain) if domain is not None else None
        bundles = {domain: source.current()} if domain is not None and source is not None else {}
        return authenticate_certificate(presented, client_id, bundles=bundles, registered=registered, now=now)
