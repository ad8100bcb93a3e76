"""Second review (issue 16): a CA removed from a trust domain's X.509 bundle, and a client that
resumes a TLS session from before the removal — at the STS.

``RotatingContext`` applies the new bundle to full handshakes, but a resumed session is looked
up in the listening context's cache / ticket keys and not verified again; ``tls_extension`` hands
the app the leaf held in the session. ``client_credentials`` is safe (``verify_svid`` re-checks
the chain against the bundle file on every request), but a hop exchange of a certificate-bound
session token only compares the connection's thumbprint with the parent's ``x5t``
(``check_hop_binding``): the STS keeps issuing new tokens to a workload whose CA it no longer
trusts (a compromised intermediate/CA retired from the bundle), for as long as the session ticket
and the session token live. Fixed: no tickets are issued (TLS 1.3 never resumes), and a TLS 1.2
session-ID resumption carries a certificate only if the chain its full handshake verified still
ends at a CA trusted now (``web.tls._resumed_chain``).
"""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from sts_mtlskit import MtlsSts, credentials, mtls_sts

from helpers import ACCESS, AGENT, TOKEN_EXCHANGE
from tether.identity.dev_x509 import DevCA, Issued

REFUSED = (ssl.SSLError, ConnectionError, OSError)


def _context(m: MtlsSts, svid: Issued) -> ssl.SSLContext:
    trust = m.directory / "server-trust.pem"
    trust.write_bytes(m.home.bundle_pem)
    context = ssl.create_default_context(cafile=str(trust))
    cert, key = m.files(svid)
    context.load_cert_chain(str(cert), str(key))
    return context


def _post(m: MtlsSts, context: ssl.SSLContext, form: dict[str, str], session: ssl.SSLSession | None = None
          ) -> tuple[int, dict[str, Any], ssl.SSLSession | None, bool]:  # fmt: skip
    """POST /token over a fresh connection (resuming ``session`` if given): status, body, the new
    session, whether it was resumed."""
    port = int(m.url.rsplit(":", 1)[1].split("/", 1)[0])
    body = urlencode(form).encode()
    start = (f"POST /token HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n")  # fmt: skip
    request = start.encode() + body
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1",
                               session=session)  # fmt: skip
    data = b""
    try:
        sock.sendall(request)
        while chunk := sock.recv(65536):
            data += chunk
        reused, new_session = bool(sock.session_reused), sock.session
    finally:
        sock.close()
    if not data:  # TLS 1.3: the client certificate is checked after the client's handshake ends
        raise ConnectionError("closed without an answer")
    head, payload = data.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        decoded = b""
        while True:
            size_line, payload = payload.split(b"\r\n", 1)
            size = int(size_line, 16)
            if size == 0:
                break
            decoded, payload = decoded + payload[:size], payload[size + 2 :]
        payload = decoded
    answer: dict[str, Any] = json.loads(payload)
    return status, answer, new_session, reused


def test_review2_MTLS_a_retired_ca_cannot_hop_through_a_resumed_tls_session(tmp_path: Path) -> None:
    with mtls_sts(tmp_path) as m:
        bundle = m.directory / "x509" / "tether.local.pem"
        retired = DevCA.create("tether.local")
        bundle.write_bytes(m.home.bundle_pem + retired.bundle_pem)  # a second CA of the trust domain
        svid = retired.issue_svid(AGENT)
        context = _context(m, svid)
        context.maximum_version = ssl.TLSVersion.TLSv1_2  # the one resumption the STS serves (TLS 1.3 gets no tickets)
        task = m.create_task(audiences=["https://wiki.example"])
        status, body, session, _ = _post(m, context, credentials(task["id"]))
        assert status == 200, body  # control: trusted while its CA is in the bundle
        token = body["access_token"]
        hop = {"grant_type": TOKEN_EXCHANGE, "subject_token": token, "subject_token_type": ACCESS,
               "resource": "https://wiki.example"}  # fmt: skip
        status, body, session, _ = _post(m, context, hop)
        assert status == 200, body  # control: a hop with the certificate
        assert session is not None

        bundle.write_bytes(m.home.bundle_pem)  # the CA is retired (compromised)
        with pytest.raises(REFUSED):  # control: a full handshake now fails
            _post(m, _context(m, svid), hop)
        # control: client_credentials on a resumed session is refused (verify_svid re-reads the bundle)
        status, body, _, reused = _post(m, context, credentials(task["id"]), session)
        assert reused, "the server did not resume the session (nothing to test)"
        assert status in (400, 401), body
        # the hop on a resumed session
        status, body, _, reused = _post(m, context, hop, session)
        assert reused
        assert status in (400, 401), ("the STS issued a hop token to a certificate whose CA it no longer trusts", body)


def _intermediate(root: DevCA) -> DevCA:
    """A CA of ``root``'s trust domain signed by ``root`` (SPIRE with an upstream authority, or
    nested SPIRE, issues SVIDs from such intermediates; the bundle holds the root only)."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False)  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, root.name + " intermediate")]))
        .issuer_name(root.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(seconds=60))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root.key.public_key()), critical=False)
        .sign(root.key, hashes.SHA256())
    )
    return DevCA(root.name, cert, key)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
def test_review2_MTLS_an_svid_from_an_intermediate_authenticates_on_a_resumed_tls_session(
    tmp_path: Path, version: ssl.TLSVersion
) -> None:
    """F2's fix hands the app the leaf alone on a resumed session; the STS needs the intermediates
    too (the bundle holds the root), so ``client_credentials`` of an intermediate-issued SVID is
    ``invalid_client`` whenever the client resumes (availability; fail closed)."""
    with mtls_sts(tmp_path) as m:
        intermediate = _intermediate(m.home)
        svid = intermediate.issue_svid(AGENT)
        chain = m.directory / "chain.pem"
        chain.write_bytes(svid.cert_pem + intermediate.bundle_pem)
        key = m.directory / "chain.key"
        key.write_bytes(svid.key_pem)
        trust = m.directory / "server-trust.pem"
        trust.write_bytes(m.home.bundle_pem)
        context = ssl.create_default_context(cafile=str(trust))
        context.load_cert_chain(str(chain), str(key))
        context.maximum_version = version
        task = m.create_task(audiences=["https://wiki.example"])
        status, body, session, _ = _post(m, context, credentials(task["id"]))
        assert status == 200, body  # control: the full handshake
        status, body, _, reused = _post(m, context, credentials(task["id"]), session)
        # TLS 1.2 resumes (the chain its full handshake verified is remembered and re-checked);
        # TLS 1.3 gets no tickets: a full handshake with the chain
        assert reused is (version is ssl.TLSVersion.TLSv1_2)
        assert status == 200, body
