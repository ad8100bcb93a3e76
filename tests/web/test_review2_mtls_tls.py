"""Second review (issue 16): the fixes in ``tether.web.tls`` attacked over real TLS on loopback.

``RotatingContext`` promises that a CA removed from a trust bundle "applies to the next
handshake". The ``sni_callback`` swaps each connection onto the rebuilt ``SSLContext``, but
OpenSSL looks resumed sessions up in the *listening* context's session cache and ticket keys
(``SSL_set_SSL_CTX`` does not change the session context), and a resumed handshake does not
verify the certificate again. ``tls_extension`` then hands the app the leaf held in the session
(the resumed-session fallback added for F2). A client whose CA was retired therefore kept
presenting its certificate on every resumed connection: a resource (which only compares the
thumbprint with ``cnf.x5t#S256``) accepted its certificate-bound token as if the CA were still
trusted. (The STS is not affected for client authentication: ``verify_svid`` re-checks the chain
against the trust domain's bundle file on every request.) Fixed: no tickets (TLS 1.3 never
resumes); a TLS 1.2 session-ID resumption is re-checked against the CAs trusted now.
"""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path

import httpx
import pytest
from test_tls import DOMAIN, _echo  # the kit of tests/web/test_tls.py

from tether.identity.dev_x509 import DevCA, Issued
from tether.web.server import ServerThread, free_port
from tether.web.tls import TlsFiles

REFUSED = (ssl.SSLError, ConnectionError, OSError)


def _get(context: ssl.SSLContext, port: int, session: ssl.SSLSession | None) -> tuple[dict[str, object], ssl.SSLSocket]:
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1",
                               session=session)  # fmt: skip
    data = b""
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        while chunk := sock.recv(65536):
            data += chunk
    except BaseException:
        sock.close()
        raise
    if not data:
        sock.close()  # TLS 1.3: the server checks the client certificate after the client's handshake ends
        raise ConnectionError("the server closed the connection without an answer")
    body = data.split(b"\r\n\r\n", 1)[1]
    payload = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
    return json.loads(payload), sock


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
def test_review2_MTLS_a_ca_removed_from_the_bundle_is_not_honoured_through_a_resumed_session(
    tmp_path: Path, version: ssl.TLSVersion
) -> None:
    kept, retired = DevCA.create(DOMAIN), DevCA.create(DOMAIN)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(kept.bundle_pem + retired.bundle_pem)
    (tmp_path / "trust.pem").write_bytes(kept.bundle_pem)
    cert, key = kept.issue_server(["127.0.0.1"]).write(tmp_path, "server")
    port = free_port()
    thread = ServerThread(_echo, port, tls=TlsFiles(cert, key, (bundle,))).start()

    def client(issued: Issued) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(tmp_path / "trust.pem"))
        path, key_path = issued.write(tmp_path, f"c-{issued.thumbprint[:8]}")
        context.load_cert_chain(path, key_path)
        context.maximum_version = version
        return context

    svid = retired.issue_svid("spiffe://example.org/agent")
    context = client(svid)
    try:
        first, sock = _get(context, port, None)
        assert first["thumbprint"] == svid.thumbprint  # trusted while its CA is in the bundle
        session = sock.session
        sock.close()
        if version is ssl.TLSVersion.TLSv1_3:  # no tickets are issued: TLS 1.3 never resumes here
            assert session is None or not session.has_ticket
        bundle.write_bytes(kept.bundle_pem)  # the CA is retired (e.g. compromised)
        # positive control: a full handshake with that certificate now fails
        with pytest.raises(REFUSED):
            _get(client(svid), port, None)
        with pytest.raises((httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError)):
            httpx.get(f"https://127.0.0.1:{port}/", verify=client(svid))
        # the same certificate through a session resumed from before the removal
        try:
            second, again = _get(context, port, session)
        except REFUSED:
            return  # refused: the removal applies to resumed sessions too (what should hold)
        resumed = again.session_reused
        again.close()
        assert not (resumed and second["thumbprint"] == svid.thumbprint), (
            "a certificate whose CA was removed from the bundle still reaches the app on a resumed session",
            second,
        )
    finally:
        thread.stop()
