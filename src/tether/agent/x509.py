"""An agent's X.509 identity (X.509-SVID) for mutual TLS: files or the SPIFFE Workload API.

RFC 8705 binds a token to the client certificate of the TLS connection it was issued over
(§3: ``cnf.x5t#S256``); the STS authenticates the client by the same certificate (§2.1
``tls_client_auth``: the SPIFFE ID in the URI SAN). A source hands out the *current*
credential: the SPIFFE ID, the leaf's thumbprint and an ``ssl.SSLContext`` presenting the
certificate and trusting the trust domain's bundle. SVIDs are short-lived and rotate in place
(spiffe-helper rewrites its files, the Workload API streams new ones), so the thumbprint is
how callers notice a rotation: ``X509Transport`` builds a new connection pool with the new
certificate, and ``TaskSession`` re-exchanges, since tokens bound to the old certificate
cannot be used with the new one.

The ``spiffe`` package is imported only by ``WorkloadApiX509Identity`` (the ``spiffe`` extra).
"""

from __future__ import annotations

import os
import ssl
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tether.filemodes import file_signature
from tether.rules.certificate import spiffe_id_of, thumbprint

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "AsyncX509Transport",
    "FileX509Identity",
    "RotatingPools",
    "WorkloadApiX509Identity",
    "X509Credential",
    "X509Source",
    "X509Transport",
    "client_context",
]


@dataclass(frozen=True, eq=False)
class X509Credential:
    """One X.509-SVID as a TLS client presents it."""

    spiffe_id: str
    #: base64url SHA-256 of the leaf's DER, the token's ``cnf.x5t#S256`` (RFC 8705 §3.1)
    thumbprint: str
    #: TLS 1.2+, presenting the SVID (leaf and intermediates), trusting the bundle's CAs
    ssl_context: ssl.SSLContext
    not_after: float


class X509Source(Protocol):
    def current(self) -> X509Credential:
        """The credential to present now (a new one after a rotation); ``OSError``, ``ValueError``
        or ``RuntimeError`` when none can be had."""
        ...


def _pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def client_context(chain_pem: bytes, key_pem: bytes, trust_pem: bytes) -> ssl.SSLContext:
    """A TLS client context presenting ``chain_pem`` (leaf first) with ``key_pem``, trusting ``trust_pem``.

    ``ssl`` loads a certificate chain only from files: the PEM is written to a private temporary
    directory (0700) and removed at once, so the bytes loaded are exactly the bytes checked.
    ``ssl.SSLError`` when the key is not the certificate's (a rotation caught half-written)."""
    context = ssl.create_default_context(cadata=trust_pem.decode("ascii"))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="tether-svid-") as directory:
        cert_path, key_path = Path(directory) / "svid.pem", Path(directory) / "svid.key"
        for path, data in ((cert_path, chain_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        context.load_cert_chain(str(cert_path), str(key_path))
    return context


def _credential(chain: Sequence[x509.Certificate], key_pem: bytes, trust_pem: bytes) -> X509Credential:
    if not chain:
        raise ValueError("no certificate in the X.509-SVID")
    leaf = chain[0]
    der = leaf.public_bytes(serialization.Encoding.DER)
    return X509Credential(
        spiffe_id=spiffe_id_of(leaf),
        thumbprint=thumbprint(der),
        ssl_context=client_context(_pem(chain), key_pem, trust_pem),
        not_after=leaf.not_valid_after_utc.timestamp(),
    )


class FileX509Identity:
    """An X.509-SVID on disk, as spiffe-helper writes it: ``svid.pem`` (leaf, then intermediates),
    ``svid.key`` and ``bundle.pem`` (the trust domain's CAs; the STS's server certificate must
    chain to them or to ``trust``, an extra CA file).

    The files are re-read whenever one of them changes (size, mtime or inode): a rotation is
    picked up on the next request. A pair caught mid-rotation (a key that is not the
    certificate's) keeps the previous credential until the files agree again."""

    def __init__(self, certificate: Path, key: Path, bundle: Path, *, trust: Path | None = None) -> None:
        self.certificate = Path(certificate)
        self.key = Path(key)
        self.bundle = Path(bundle)
        self.trust = trust
        self._lock = threading.Lock()
        self._seen: tuple[tuple[int, int, int], ...] | None = None
        self._current: X509Credential | None = None

    def _signature(self) -> tuple[tuple[int, int, int], ...]:
        return file_signature(self.certificate, self.key, self.bundle, *([self.trust] if self.trust else []))

    def current(self) -> X509Credential:
        with self._lock:
            seen = self._signature()
            if seen == self._seen and self._current is not None:
                return self._current
            try:
                chain = x509.load_pem_x509_certificates(self.certificate.read_bytes())
                trust = self.bundle.read_bytes() + (self.trust.read_bytes() if self.trust else b"")
                credential = _credential(chain, self.key.read_bytes(), trust)
            except (ValueError, ssl.SSLError) as exc:
                if self._current is not None:  # half-rotated: try again on the next call
                    return self._current
                raise ValueError(f"no usable X.509-SVID in {self.certificate}: {exc}") from exc
            self._seen, self._current = seen, credential
            return credential

    @property
    def spiffe_id(self) -> str:
        return self.current().spiffe_id


class WorkloadApiX509Identity:
    """X.509-SVIDs from the SPIFFE Workload API (SPIRE agent), via ``spiffe.X509Source``, which keeps
    the newest SVID and bundles streamed by the agent; a new SVID gets a new context.

    ``source``: an existing ``spiffe.X509Source`` (default: one on ``socket_path`` or
    ``SPIFFE_ENDPOINT_SOCKET``, owned and closed by this object). Needs ``pip install tether[spiffe]``."""

    def __init__(self, socket_path: str | None = None, *, source: Any = None, timeout: float = 10.0) -> None:
        self._owned = source is None
        if source is None:
            try:
                from spiffe import X509Source as SpiffeX509Source
            except ImportError as exc:  # pragma: no cover - depends on the optional extra
                raise RuntimeError("the SPIFFE Workload API needs the `spiffe` package: pip install tether[spiffe]") from exc
            from spiffe.errors import PySpiffeError

            socket = socket_path or os.environ.get("SPIFFE_ENDPOINT_SOCKET")
            try:
                source = SpiffeX509Source(socket_path=socket, timeout_in_seconds=timeout)
            except PySpiffeError as exc:  # no agent on the socket, or no SVID for us in time
                raise RuntimeError(f"the SPIFFE Workload API gave no X.509-SVID: {exc}") from exc
        self._source = source
        self._lock = threading.Lock()
        self._current: X509Credential | None = None

    def current(self) -> X509Credential:
        from spiffe.errors import PySpiffeError

        try:
            context = self._source.get_x509_context()
        except PySpiffeError as exc:
            raise RuntimeError(f"the SPIFFE Workload API gave no X.509-SVID: {exc}") from exc
        svid = context.default_svid
        leaf = svid.leaf
        with self._lock:
            if (
                self._current is not None
                and thumbprint(leaf.public_bytes(serialization.Encoding.DER)) == self._current.thumbprint
            ):
                return self._current
            trust = b"".join(
                _pem(sorted(b.x509_authorities, key=lambda c: c.serial_number)) for b in context.x509_bundle_set.bundles
            )
            key_pem = svid.private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            self._current = _credential(list(svid.cert_chain), key_pem, trust)
            return self._current

    def close(self) -> None:
        if self._owned:
            self._source.close()


T = TypeVar("T")


class RotatingPools(Generic[T]):
    """The connection pool for ``source``'s current certificate: after a rotation, a new pool
    (``make(ssl_context)``) for new requests — a TLS connection keeps the certificate it was
    opened with — while requests in flight on the old one finish. ``drain`` hands every pool
    over for closing. Shared by the httpx and httpx2 (MCP SDK) transports."""

    def __init__(self, source: X509Source, make: Callable[[ssl.SSLContext], T]) -> None:
        self.source = source
        self._make = make
        self._lock = threading.Lock()
        self._thumbprint = ""
        self._inner: T | None = None
        self._retired: list[T] = []

    def current(self) -> T:
        credential = self.source.current()
        with self._lock:
            if self._inner is None or credential.thumbprint != self._thumbprint:
                if self._inner is not None:
                    self._retired.append(self._inner)
                self._inner = self._make(credential.ssl_context)
                self._thumbprint = credential.thumbprint
            return self._inner

    def drain(self) -> list[T]:
        with self._lock:
            pools = [*self._retired, *([self._inner] if self._inner is not None else [])]
            self._retired, self._inner = [], None
        return pools


class X509Transport(httpx.BaseTransport):
    """An ``httpx`` transport presenting ``source``'s current certificate (``RotatingPools``)."""

    def __init__(self, source: X509Source, **options: Any) -> None:
        self.source = source
        self._pools = RotatingPools(source, lambda context: httpx.HTTPTransport(verify=context, **options))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._pools.current().handle_request(request)

    def close(self) -> None:
        for transport in self._pools.drain():
            transport.close()


class AsyncX509Transport(httpx.AsyncBaseTransport):
    """``X509Transport`` for ``httpx.AsyncClient``."""

    def __init__(self, source: X509Source, **options: Any) -> None:
        self.source = source
        self._pools = RotatingPools(source, lambda context: httpx.AsyncHTTPTransport(verify=context, **options))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._pools.current().handle_async_request(request)

    async def aclose(self) -> None:
        for transport in self._pools.drain():
            await transport.aclose()
