"""The TLS protocol hook and the client-certificate sources, over real TLS on loopback (RFC 8705, RFC 9440).

A tiny ASGI app echoes what ``presented_certificate`` saw; the server is uvicorn with
``TlsHttpToolsProtocol`` (``ServerThread(tls=...)``), the clients real ``ssl`` contexts.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tether.errors import OAuthError
from tether.identity.dev_x509 import DevCA, Issued, self_signed
from tether.rules.certificate import client_cert_header, thumbprint
from tether.web.client_cert import TrustedProxies, presented_certificate, strip_client_cert_headers
from tether.web.server import ServerThread, free_port
from tether.web.tls import TlsFiles

DOMAIN = "example.org"


async def _echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the thumbprint and source of the certificate the request came with."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    proxies = TrustedProxies(scope["state"].get("proxies", ()) if "state" in scope else ())
    try:
        cert = presented_certificate(scope, proxies)
        strip_client_cert_headers(scope, proxies)
        body = {
            "thumbprint": cert.thumbprint if cert else None,
            "source": cert.source if cert else None,
            "scheme": scope["scheme"],
            "headers": sorted(k.decode() for k, _ in scope["headers"] if k.startswith(b"client-cert")),
        }
        status = 200
    except OAuthError as exc:
        body, status = {"error": exc.error}, 400
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


class _Kit:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = DevCA.create(DOMAIN)
        (root / "ca.pem").write_bytes(self.ca.bundle_pem)
        self.registered = self_signed("registered-client")
        (root / "registered.pem").write_bytes(self.registered.cert_pem)
        cert, key = self.ca.issue_server(["127.0.0.1"]).write(root, "server")
        self.files = TlsFiles(cert, key, (root / "ca.pem", root / "registered.pem"))

    def client(self, issued: Issued | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.root / "ca.pem"))
        if issued is not None:
            cert, key = issued.write(self.root, f"client-{thumbprint(issued.der)[:8]}")
            context.load_cert_chain(cert, key)
        return context


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> _Kit:
    return _Kit(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def server(kit: _Kit) -> Iterator[str]:
    port = free_port()
    thread = ServerThread(_echo, port, tls=kit.files).start()
    try:
        yield f"https://127.0.0.1:{port}/"
    finally:
        thread.stop()


def test_MTLS_verified_svid_reaches_the_app(kit: _Kit, server: str) -> None:
    svid = kit.ca.issue_svid("spiffe://example.org/agent")
    body = httpx.get(server, verify=kit.client(svid)).json()
    assert body == {"thumbprint": thumbprint(svid.der), "source": "tls", "scheme": "https", "headers": []}


def test_MTLS_registered_self_signed_certificate_reaches_the_app(kit: _Kit, server: str) -> None:
    body = httpx.get(server, verify=kit.client(kit.registered)).json()
    assert body["thumbprint"] == thumbprint(kit.registered.der)


def test_MTLS_no_client_certificate_is_none_not_a_refusal(kit: _Kit, server: str) -> None:
    """DPoP clients share the port: a certificate is asked for, not required."""
    assert httpx.get(server, verify=kit.client(None)).json()["thumbprint"] is None


@pytest.mark.parametrize("who", ["rogue-ca", "unregistered-self-signed"])
def test_MTLS_certificate_that_does_not_verify_fails_the_handshake(kit: _Kit, server: str, who: str) -> None:
    issued = DevCA.create(DOMAIN).issue_svid("spiffe://example.org/agent") if who == "rogue-ca" else self_signed("x")
    with pytest.raises((httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError)):
        httpx.get(server, verify=kit.client(issued))


def test_MTLS_each_connection_sees_its_own_certificate(kit: _Kit, server: str) -> None:
    first, second = (kit.ca.issue_svid(f"spiffe://example.org/a{i}") for i in range(2))
    with httpx.Client(verify=kit.client(first)) as a, httpx.Client(verify=kit.client(second)) as b:
        for _ in range(3):  # keep-alive: the extension is per connection, repeated per request
            assert a.get(server).json()["thumbprint"] == thumbprint(first.der)
            assert b.get(server).json()["thumbprint"] == thumbprint(second.der)


def test_MTLS_client_cert_header_from_an_untrusted_peer_is_ignored_and_stripped(kit: _Kit, server: str) -> None:
    """RFC 9440 §4: only a configured terminator's header counts; a client's own is removed."""
    forged = client_cert_header(kit.registered.der)
    body = httpx.get(server, verify=kit.client(None), headers={"Client-Cert": forged, "Client-Cert-Chain": forged}).json()
    assert body["thumbprint"] is None and body["headers"] == []


def _scope(peer: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "client": (peer, 5000), "headers": headers}


def test_MTLS_trusted_proxy_header_is_the_certificate(kit: _Kit) -> None:
    der = kit.registered.der
    header = (b"client-cert", client_cert_header(der).encode())
    proxies = TrustedProxies(["10.0.0.0/8"])
    cert = presented_certificate(_scope("10.1.2.3", [header]), proxies)
    assert cert is not None and (cert.thumbprint, cert.source) == (thumbprint(der), "proxy")
    scope = _scope("10.1.2.3", [header])
    strip_client_cert_headers(scope, proxies)
    assert scope["headers"] == [header]  # kept for the app: it came from the terminator
    for peer in ("192.168.1.1", "not-an-address", ""):
        assert presented_certificate(_scope(peer, [header]), proxies) is None
    assert presented_certificate(_scope("10.1.2.3", [header]), None) is None  # nothing trusted by default


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([(b"client-cert", b"garbage")], id="malformed"),
        pytest.param([(b"client-cert", b":AAAA:"), (b"client-cert", b":AAAA:")], id="twice"),
    ],
)
def test_MTLS_bad_header_from_a_trusted_proxy_is_invalid_request(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(OAuthError) as err:
        presented_certificate(_scope("127.0.0.1", headers), TrustedProxies(["127.0.0.1/32"]))
    assert err.value.error == "invalid_request"


def _peer_certificate(port: int, trust: ssl.SSLContext) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        trust.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_MTLS_rotated_bundle_and_server_certificate_apply_to_the_next_handshake(tmp_path: Path) -> None:
    """SPIFFE bundles rotate while servers run: a CA added to the bundle file is trusted, a CA
    removed is not, and a new server certificate is served — from the next connection, no restart."""
    old, new = DevCA.create(DOMAIN), DevCA.create(DOMAIN)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(old.bundle_pem)
    trust = ssl.create_default_context(cafile=str(bundle))
    cert, key = old.issue_server(["127.0.0.1"]).write(tmp_path, "server")
    port = free_port()
    thread = ServerThread(_echo, port, tls=TlsFiles(cert, key, (bundle,))).start()
    url = f"https://127.0.0.1:{port}/"

    def client(issued: Issued) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(tmp_path / "trust.pem"))
        path, key_path = issued.write(tmp_path, f"c-{issued.thumbprint[:8]}")
        context.load_cert_chain(path, key_path)
        return context

    (tmp_path / "trust.pem").write_bytes(old.bundle_pem + new.bundle_pem)
    from_old, from_new = old.issue_svid("spiffe://example.org/a"), new.issue_svid("spiffe://example.org/b")
    try:
        assert httpx.get(url, verify=client(from_old)).json()["thumbprint"] == from_old.thumbprint
        with pytest.raises((httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError)):
            httpx.get(url, verify=client(from_new))  # positive control: not trusted yet
        bundle.write_bytes(old.bundle_pem + new.bundle_pem)
        assert httpx.get(url, verify=client(from_new)).json()["thumbprint"] == from_new.thumbprint
        bundle.write_bytes(new.bundle_pem)  # the old CA retired
        with pytest.raises((httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError)):
            httpx.get(url, verify=client(from_old))
        before = _peer_certificate(port, trust)
        rotated = new.issue_server(["127.0.0.1"])
        rotated.write(tmp_path, "server")
        both = ssl.create_default_context(cafile=str(tmp_path / "trust.pem"))
        assert _peer_certificate(port, both) == rotated.der != before
        cert.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n")  # half-written: the last good one stays
        assert _peer_certificate(port, both) == rotated.der
    finally:
        thread.stop()


@pytest.mark.parametrize(
    ("forwarding", "believed"),
    [
        pytest.param([], True, id="no-forwarding-headers"),
        pytest.param([(b"x-forwarded-for", b"203.0.113.7")], True, id="xff-names-the-real-client"),
        pytest.param([(b"x-forwarded-for", b"203.0.113.7, 10.1.2.3")], False, id="xff-names-the-terminator"),
        pytest.param([(b"x-forwarded-for", b"10.1.2.3:443")], False, id="xff-with-port"),
        pytest.param([(b"x-real-ip", b"10.1.2.3")], False, id="x-real-ip"),
        pytest.param([(b"forwarded", b'for="10.1.2.3:8443";proto=https')], False, id="rfc7239-quoted-port"),
        pytest.param([(b"forwarded", b"for=203.0.113.7, for=10.1.2.3")], False, id="rfc7239-list"),
        pytest.param([(b"forwarded", b"for=203.0.113.7;by=10.1.2.3")], True, id="rfc7239-by-is-not-for"),
    ],
)
def test_MTLS_03_a_peer_address_a_forwarding_header_names_vouches_for_nothing(
    kit: _Kit, forwarding: list[tuple[bytes, bytes]], believed: bool
) -> None:
    """An ASGI server with proxy-header support may have set ``client`` from ``X-Forwarded-For``,
    which the client writes; a terminator never names itself as the client it forwards for."""
    header = (b"client-cert", client_cert_header(kit.registered.der).encode())
    proxies = TrustedProxies(["10.0.0.0/8"])
    cert = presented_certificate(_scope("10.1.2.3", [header, *forwarding]), proxies)
    assert (cert is not None) is believed
    scope = _scope("10.1.2.3", [header, *forwarding])
    strip_client_cert_headers(scope, proxies)
    assert (header in scope["headers"]) is believed


def test_MTLS_03_ipv6_terminator_with_a_bracketed_forwarded_address() -> None:
    header = (b"client-cert", b":AAAA:")
    proxies = TrustedProxies(["fd00::/8"])
    scope = _scope("fd00::5", [header, (b"forwarded", b'for="[fd00::5]:443"')])
    assert presented_certificate(scope, proxies) is None
