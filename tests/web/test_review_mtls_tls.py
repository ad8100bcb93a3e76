"""Review (issue 16): the TLS protocol hook over real TLS on loopback.

A client that resumes its TLS session (RFC 8446 §2.2 PSK resumption, RFC 5077 tickets /
session ids in TLS 1.2) proved its certificate at the full handshake; the session still carries
it (``getpeercert``), but OpenSSL keeps no *verified chain* for a resumed session, so
``tls_extension`` handed the app an empty ``client_cert_chain`` and every certificate-bound
token on that connection was refused (MTLS-01 availability; fail closed, not a bypass); it now
hands on the leaf the full handshake verified.
curl, Go, Java, nginx/Envoy upstream pools all resume sessions by default.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator

import pytest
from test_tls import _echo, _Kit  # the kit of tests/web/test_tls.py

from tether.rules.certificate import thumbprint
from tether.web.server import ServerThread, free_port


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> _Kit:
    return _Kit(tmp_path_factory.mktemp("tls-review"))


@pytest.fixture(scope="module")
def port(kit: _Kit) -> Iterator[int]:
    port = free_port()
    thread = ServerThread(_echo, port, tls=kit.files).start()
    try:
        yield port
    finally:
        thread.stop()


def _get(context: ssl.SSLContext, port: int, session: ssl.SSLSession | None) -> tuple[dict[str, object], ssl.SSLSocket]:
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1",
                               session=session)  # fmt: skip
    sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    body = data.split(b"\r\n\r\n", 1)[1]
    # chunked: "<hex>\r\n<json>\r\n0\r\n\r\n"
    payload = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
    return json.loads(payload), sock


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
def test_review_MTLS_01_a_resumed_tls_session_still_presents_the_client_certificate(
    kit: _Kit, port: int, version: ssl.TLSVersion
) -> None:
    svid = kit.ca.issue_svid("spiffe://example.org/agent")
    context = kit.client(svid)
    context.maximum_version = version
    first, sock = _get(context, port, None)
    assert first["thumbprint"] == thumbprint(svid.der)  # positive control: a full handshake
    session = sock.session
    sock.close()
    second, again = _get(context, port, session)
    resumed = again.session_reused
    again.close()
    # TLS 1.2 session-ID resumption is served (re-checked against the CAs trusted now); TLS 1.3
    # gets no tickets, so its second connection is a full handshake
    assert resumed is (version is ssl.TLSVersion.TLSv1_2)
    # the same client, the same certificate (held in the resumed session): the app must see it
    assert second["thumbprint"] == thumbprint(svid.der), second


def test_MTLS_01_a_resumed_session_whose_chain_is_forgotten_is_rechecked_against_the_current_cas(
    kit: _Kit, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The remembered chains are bounded (and per process): a resumed session whose chain is gone
    is believed only if its leaf is issued directly by a CA trusted now."""
    from tether.lru import LruCache
    from tether.web import tls

    svid = kit.ca.issue_svid("spiffe://example.org/forgotten")
    context = kit.client(svid)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    first, sock = _get(context, port, None)
    assert first["thumbprint"] == thumbprint(svid.der)
    session = sock.session
    sock.close()
    monkeypatch.setattr(tls, "_CHAINS", LruCache(16))  # the chain evicted
    second, again = _get(context, port, session)
    assert again.session_reused
    again.close()
    assert second["thumbprint"] == thumbprint(svid.der)
