"""Second review (issue 16): F1's fix (``client_cert._believed``) against uvicorn's own
``ProxyHeadersMiddleware`` (the code that rewrites ``scope["client"]`` in the resource SDK's server).

The thief holds a certificate-bound token and the victim's public certificate, connects
directly (not through the terminator) and writes the forwarding headers itself. Every spelling
of the terminator's address that uvicorn turns into ``client`` must also be recognised by
tether as named by the request (``_host`` parses the same token the same way): checked with
ports, brackets, whitespace, several headers, upper-case IPv6, IPv4-mapped IPv6, zone ids and
obfuscated IPv4 forms. These pass (sound) and stay as regression tests.

One fails: a legitimate terminator forwarding for a client that connects from the terminator's
own address (a sidecar or same-host client: Envoy writes ``X-Forwarded-For: 127.0.0.1``) is not
believed — ``_believed`` assumes "a terminator never names itself", which is not so. Fail closed
(availability, Low).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from tether.rules.certificate import client_cert_header
from tether.web.client_cert import TrustedProxies, presented_certificate

CERT = (b"client-cert", client_cert_header(b"\x30\x03\x02\x01\x01").encode())  # only the thumbprint is read
PROXIES = TrustedProxies(["10.0.0.0/8", "fd00::/8", "127.0.0.1", "::ffff:10.0.0.0/104"])


def _run(trusted_hosts: str, peer: str, headers: list[tuple[bytes, bytes]]) -> tuple[str | None, bool]:
    """(the client uvicorn made of the request, whether tether believed its Client-Cert)."""
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen["client"] = scope["client"][0] if scope.get("client") else None
        seen["believed"] = presented_certificate(scope, PROXIES) is not None

    middleware = ProxyHeadersMiddleware(app, trusted_hosts=trusted_hosts)  # type: ignore[arg-type]
    scope = {"type": "http", "client": (peer, 40000), "headers": [CERT, *headers], "scheme": "https"}
    asyncio.run(middleware(scope, None, None))  # type: ignore[arg-type]
    return seen["client"], seen["believed"]


XFF_FORMS = [
    "10.0.0.5",
    "10.0.0.5:443",
    "[10.0.0.5]",
    "[10.0.0.5]:443",
    "[10.0.0.5]:x",
    " 10.0.0.5 ",
    "\t10.0.0.5",
    "10.0.0.5,203.0.113.9",
    "10.0.0.5 , 203.0.113.9",
    "010.0.0.5",
    "0x0a000005",
    "167772165",
    "10.0.0.5%eth0",
    '"10.0.0.5"',
    "fd00::5",
    "FD00::5",
    "fd00:0:0::5",
    "[FD00::0005]:80",
    "fd00::5%eth0",
    "[fd00::5%25eth0]:1",
    "::ffff:10.0.0.5",
    "::FFFF:A00:5",
    "[::ffff:10.0.0.5]:443",
    "127.0.0.1",
    "127.000.000.001",
    "::ffff:127.0.0.1",
]


@pytest.mark.parametrize("trusted_hosts", ["*", "10.0.0.0/8,fd00::/8,203.0.113.0/24"])
@pytest.mark.parametrize("form", XFF_FORMS)
def test_review2_MTLS_03_no_spelling_of_the_terminator_in_x_forwarded_for_gets_a_forged_certificate_believed(
    trusted_hosts: str, form: str
) -> None:
    client, believed = _run(trusted_hosts, "203.0.113.9", [(b"x-forwarded-for", form.encode())])
    assert not believed, f"uvicorn made client {client!r} from X-Forwarded-For {form!r} and tether believed it"


@pytest.mark.parametrize("trusted_hosts", ["*"])
def test_review2_MTLS_03_several_x_forwarded_for_headers(trusted_hosts: str) -> None:
    headers = [(b"x-forwarded-for", b"10.0.0.5"), (b"x-forwarded-for", b"203.0.113.9")]
    client, believed = _run(trusted_hosts, "203.0.113.9", headers)
    assert client == "10.0.0.5" and not believed


def test_review2_MTLS_03_control_a_terminator_with_no_forwarding_headers_is_believed() -> None:
    assert _run("*", "10.0.0.5", []) == ("10.0.0.5", True)


def test_review2_MTLS_03_a_terminator_forwarding_for_a_client_on_its_own_address_fails_closed() -> None:
    """The trade-off, pinned: with ``--no-proxy-headers`` the peer is the real terminator, but a client
    that connected to it from the same host is written into X-Forwarded-For as that very address, and
    tether cannot tell this from a server that rewrote ``client`` out of a forged header. It refuses
    to believe the header (the request carries no certificate: a certificate-bound token is refused)
    rather than let a forged X-Forwarded-For choose the terminator."""
    scope = {"type": "http", "client": ("127.0.0.1", 40000), "headers": [CERT, (b"x-forwarded-for", b"127.0.0.1")]}
    assert presented_certificate(scope, PROXIES) is None
    control = {"type": "http", "client": ("127.0.0.1", 40000), "headers": [CERT, (b"x-forwarded-for", b"192.0.2.9")]}
    assert presented_certificate(control, PROXIES) is not None
