"""TLS for tether's servers, and the client certificate handed to the ASGI app.

uvicorn terminates TLS and verifies client certificates, but it does not tell the app which
certificate the client presented. tether adds the ASGI TLS extension
(``scope["extensions"]["tls"]``, ASGI spec "TLS Extension") with a small protocol hook: a
subclass of uvicorn's httptools protocol that reads the verified chain from the connection's
``SSLObject`` once, after the handshake, and puts it in the scope of every request on that
connection. Why a hook and not another server: the TLS stack, HTTP parser and event loop stay
the ones that were measured (``tether bench``); the hook adds one attribute read per request.

The server requests a certificate but does not require one (``CERT_OPTIONAL``): DPoP clients
and mTLS clients share the endpoints (RFC 8705 §5 aliases name the same URLs). A client that
sends a certificate must chain to a configured X.509 bundle or be a registered self-signed
certificate, or the handshake fails; which workload it proves is decided per request
(``tether.rules.certificate``), against its own trust domain's bundle.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tether.filemodes import file_signature
from tether.lru import LruCache

__all__ = ["RotatingContext", "TlsFiles", "TlsHttpToolsProtocol", "client_trust", "server_context", "tls_extension"]

log = logging.getLogger("tether.web")


@dataclass(frozen=True)
class TlsFiles:
    """A server's certificate chain and key (PEM), and the CA files client certificates may chain to
    (X.509 bundles of trust domains, registered self-signed client certificates)."""

    certificate: Path
    key: Path
    client_cas: tuple[Path, ...] = field(default=())


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """A TLS 1.2+ server context that asks for (but does not require) a client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(files.certificate), str(files.key))
    # no tickets (TLS 1.2 RFC 5077, TLS 1.3 PSK): a resumed session is not verified again and
    # carries no chain; TLS 1.2 session-ID resumption remains, checked again in ``tls_extension``
    context.options |= ssl.OP_NO_TICKET
    context.num_tickets = 0
    if files.client_cas:
        for ca in files.client_cas:
            context.load_verify_locations(cafile=str(ca))
        context.verify_mode = ssl.CERT_OPTIONAL
    context.set_alpn_protocols(["http/1.1"])
    return context


def client_trust(ca_file: Path | None) -> ssl.SSLContext | bool:
    """What tether's own HTTPS clients (CLI, gateway) verify the STS's certificate with: the
    system's CAs, plus ``[tls] ca_file`` when set (a private or dev CA). Never "no verification"."""
    if ca_file is None:
        return True
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=str(ca_file))
    return context


class RotatingContext:
    """Server TLS material that follows its files: a rotated server certificate, or a trust
    bundle that gained (or lost) a CA, applies to the next handshake without a restart.

    SPIFFE bundles rotate while servers run. The listening socket keeps one ``SSLContext``;
    its ``sni_callback`` — called on every ClientHello, with or without SNI — compares the
    files' (mtime, size, inode) with those the current context was built from, rebuilds it
    when they changed, and hands the connection the current one. A rewrite caught half-way
    that does not load keeps the previous context (and is logged)."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._seen = self._signature()
        self.current = server_context(files)

    def _signature(self) -> tuple[tuple[int, int, int], ...]:
        try:
            return file_signature(self.files.certificate, self.files.key, *self.files.client_cas)
        except OSError:
            return ()

    def listening(self) -> ssl.SSLContext:
        """The context the server socket is created with."""
        root = server_context(self.files)
        root.sni_callback = self._pick
        return root

    def _pick(self, connection: ssl.SSLObject, _server_name: str | None, _context: ssl.SSLContext) -> None:
        seen = self._signature()
        if seen and seen != self._seen:
            try:
                self.current = server_context(self.files)
                self._seen = seen
            except (OSError, ssl.SSLError, ValueError) as exc:
                log.warning("TLS files changed but do not load (%s); keeping the previous ones", exc)
        connection.context = self.current


def uvicorn_context_factory(files: TlsFiles, _config: Any, _default: Any) -> ssl.SSLContext:
    """``uvicorn.Config(ssl_context_factory=functools.partial(uvicorn_context_factory, files))``:
    a context that follows rotated certificate and bundle files (``RotatingContext``)."""
    return RotatingContext(files).listening()


def _verified_chain(ssl_object: Any) -> Sequence[Any]:
    """The chain OpenSSL verified, leaf first (``SSLObject.get_verified_chain`` from Python 3.13;
    the same method on the underlying ``_ssl`` object before)."""
    getter = getattr(ssl_object, "get_verified_chain", None) or getattr(ssl_object._sslobj, "get_verified_chain", None)
    chain = getter() if getter is not None else None
    return list(chain or ())


#: the chain each full handshake verified, by TLS session id (bounded): a TLS 1.2 session-ID
#: resumption (RFC 5246 §7.3) is not verified again and keeps no chain of its own
_CHAINS: LruCache[bytes, tuple[bytes, ...]] = LruCache(4096)


def _resumed_chain(ssl_object: Any, leaf: bytes) -> list[bytes]:
    """The chain of a resumed session, if it still holds under the CAs trusted *now*.

    OpenSSL resumes a session without verifying the certificate again, so a CA removed from the
    bundle since (``RotatingContext``) would stay trusted through it. The chain its full
    handshake verified must still end at a CA of the connection's current context and the leaf
    must be within its validity; otherwise — or when the chain is no longer remembered and the
    leaf is neither a registered certificate nor issued directly by a current CA — the request
    carries no certificate (fail closed)."""
    anchors = set(ssl_object.context.get_ca_certs(binary_form=True))
    try:
        cert = x509.load_der_x509_certificate(leaf)
    except ValueError:
        return []
    now = datetime.now(UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        return []
    session = ssl_object.session
    cached = _CHAINS.get(session.id) if session is not None else None
    if cached is not None and cached[0] == leaf and cached[-1] in anchors:
        return list(cached)
    if leaf in anchors:
        return [leaf]  # a registered self-signed certificate is its own anchor (RFC 8705 §2.2)
    for der in anchors:
        try:
            cert.verify_directly_issued_by(x509.load_der_x509_certificate(der))
        except (ValueError, TypeError, InvalidSignature):
            continue
        return [leaf, der]
    return []


def tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    """The ASGI TLS extension for a connection (``None`` over plain TCP).

    ``client_cert_chain`` holds PEM strings, leaf first, and only when the handshake verified
    the client's certificate (``CERT_OPTIONAL`` lets a client send none; one it sends that
    does not verify fails the handshake)."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    chain: list[str] = []
    leaf = ssl_object.getpeercert(binary_form=True)
    if leaf:
        ders = [cert.public_bytes(ssl._ssl.ENCODING_DER) for cert in _verified_chain(ssl_object)]  # type: ignore[attr-defined]
        session = ssl_object.session
        if ders and session is not None:
            _CHAINS.put(session.id, tuple(ders))
        elif not ders:
            ders = _resumed_chain(ssl_object, leaf)
        chain = [ssl.DER_cert_to_PEM_cert(der) for der in ders]
    version = ssl_object.version()
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}.get(version or ""),
        "cipher_suite": None,
    }


def _websocket_with_tls(protocol_class: Any, tls: dict[str, Any]) -> Any:
    """uvicorn's WebSocket protocol (whichever implementation) for a connection upgraded from
    this one, its scope given the same TLS extension: a certificate-bound token opens a
    WebSocket with its certificate as it makes a request."""

    def make(**kwargs: Any) -> Any:
        protocol = protocol_class(**kwargs)
        app = protocol.app

        async def with_tls(scope: Any, receive: Any, send: Any) -> Any:
            scope["extensions"] = {**(scope.get("extensions") or {}), "tls": tls}
            return await app(scope, receive, send)

        protocol.app = with_tls
        return protocol

    return make


class TlsHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, adding the ASGI TLS extension to every request's scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._tls = tls_extension(transport)
        if self._tls is not None and self.ws_protocol_class is not None:
            self.ws_protocol_class = _websocket_with_tls(self.ws_protocol_class, self._tls)

    def shutdown(self) -> None:
        """A server stopping drops idle TLS connections at once. ``close()`` would first send
        close_notify and wait for the peer's (asyncio waits up to 30 s for an idle keep-alive
        client that never reads), outlasting the graceful-shutdown period; a request in flight
        still completes as uvicorn arranges."""
        if self._tls is not None and (self.cycle is None or self.cycle.response_complete):
            self.transport.abort()
            return
        super().shutdown()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._tls is not None:
            extensions: dict[str, Any] = dict(self.scope.get("extensions") or {})
            extensions["tls"] = self._tls
            self.scope["extensions"] = extensions
