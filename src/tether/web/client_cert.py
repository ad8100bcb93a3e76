"""Which client certificate a request came with: the TLS handshake's, or a trusted terminator's header.

Two sources, never mixed (RFC 9440 §4, RFC 8705 §3):

* this server's own TLS: the verified chain the protocol hook put in the ASGI TLS extension
  (``tether.web.tls``);
* a TLS-terminating proxy (Envoy, nginx) listed in ``trusted_proxies``: the RFC 9440
  ``Client-Cert`` / ``Client-Cert-Chain`` headers, and only when the connection's peer address
  is one of those proxies. From any other peer the headers are ignored (a client can set
  them) and ``strip_client_cert_headers`` removes them before anything is forwarded.

Nothing is trusted by default: with no ``trusted_proxies`` the headers are never read. The
peer address is the ASGI ``client``; a server that rewrites it from forwarding headers would
let a client choose it, so an address those headers also name is not believed (``_believed``).
Run the resource SDK's server without proxy-header rewriting (uvicorn ``--no-proxy-headers``),
as tether's own servers are.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterable, MutableMapping
from typing import Any

from tether.errors import InvalidRequest
from tether.rules.certificate import ClientCertificate, parse_client_cert, parse_client_cert_chain

__all__ = ["CLIENT_CERT_HEADERS", "TrustedProxies", "presented_certificate", "strip_client_cert_headers"]

#: the RFC 9440 header names (lower-case, as ASGI carries them)
CLIENT_CERT_HEADERS = (b"client-cert", b"client-cert-chain")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """Peer addresses (networks) whose RFC 9440 headers are believed."""

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self.networks: tuple[Network, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, peer: str | None) -> bool:
        if not self.networks or not peer:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


def _peer(scope: MutableMapping[str, Any]) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


def _host(token: str) -> str:
    """An address as forwarding headers write it (``"[::1]:80"``, ``1.2.3.4:5``, ``_hidden``), normalised."""
    token = token.strip().strip('"')
    if token.startswith("["):
        token = token[1:].split("]", 1)[0]
    elif token.count(":") == 1:
        token = token.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(token))
    except ValueError:
        return token.lower()


def _forwarded_hosts(scope: MutableMapping[str, Any]) -> set[str]:
    """Every address the request's forwarding headers name (``X-Forwarded-For``, ``X-Real-IP``,
    RFC 7239 ``Forwarded: for=``)."""
    hosts: set[str] = set()
    for key, raw in scope.get("headers", ()):
        if key not in (b"x-forwarded-for", b"x-real-ip", b"forwarded"):
            continue
        value = raw.decode("latin-1")
        if key == b"forwarded":
            parts = [p.split("=", 1)[1] for e in value.split(",") for p in e.split(";") if p.strip().lower().startswith("for=")]
        else:
            parts = value.split(",")
        hosts.update(_host(part) for part in parts if part.strip())
    return hosts


def _believed(scope: MutableMapping[str, Any], proxies: TrustedProxies | None) -> bool:
    """Whether this request's RFC 9440 headers come from a configured terminator.

    The peer address is the ASGI ``client``, which a server with proxy-header support (uvicorn's
    default for ``forwarded_allow_ips``) may have rewritten from ``X-Forwarded-For`` — a value the
    client writes. A terminator never names itself as the client it forwards for, so an address
    that also appears in the request's forwarding headers came from a header, not from the
    connection, and vouches for nothing."""
    if proxies is None:
        return False
    peer = _peer(scope)
    if not proxies.trusts(peer):
        return False
    return _host(peer or "") not in _forwarded_hosts(scope)


def _header(scope: MutableMapping[str, Any], name: bytes) -> list[bytes]:
    return [value for key, value in scope.get("headers", ()) if key == name]


def _pem_to_der(pem: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem)


def presented_certificate(scope: MutableMapping[str, Any], proxies: TrustedProxies | None = None) -> ClientCertificate | None:
    """The client certificate of this request, or ``None``.

    A trusted proxy's request is judged by its headers alone (the proxy's own TLS client
    certificate, if any, is not the caller's). A trusted proxy that sends a header twice or
    one that does not parse is refused with ``invalid_request``: the proxy is misconfigured.
    """
    if _believed(scope, proxies):
        leaf = _header(scope, b"client-cert")
        chain = _header(scope, b"client-cert-chain")
        if not leaf:
            return None
        if len(leaf) > 1 or len(chain) > 1:
            raise InvalidRequest("the Client-Cert header was sent more than once")
        try:
            der = parse_client_cert(leaf[0].decode("latin-1"))
            intermediates = parse_client_cert_chain(chain[0].decode("latin-1")) if chain else ()
        except ValueError as exc:
            raise InvalidRequest("malformed Client-Cert header", debug=str(exc)) from exc
        return ClientCertificate(der, intermediates, source="proxy")
    tls = (scope.get("extensions") or {}).get("tls")
    if not isinstance(tls, dict):
        return None
    pems = tls.get("client_cert_chain") or ()
    if not pems:
        return None
    ders = [_pem_to_der(pem) for pem in pems]
    return ClientCertificate(ders[0], tuple(ders[1:]), source="tls")


def strip_client_cert_headers(scope: MutableMapping[str, Any], proxies: TrustedProxies | None = None) -> None:
    """Remove RFC 9440 headers that did not come from a trusted proxy (in place), so that no
    application or upstream behind this server ever reads a client's forged certificate."""
    if _believed(scope, proxies):
        return
    headers = scope.get("headers")
    if headers and any(key in CLIENT_CERT_HEADERS for key, _ in headers):
        scope["headers"] = [(k, v) for k, v in headers if k not in CLIENT_CERT_HEADERS]
