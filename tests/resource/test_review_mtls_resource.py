"""Review (issue 16): certificate-bound tokens at a resource server's WebSocket endpoint, over real TLS.

``TetherMiddleware`` verifies WebSocket handshakes like any request, and the issue says the
resource SDK honours a certificate-bound token with the certificate of this server's own TLS.
uvicorn hands an upgraded connection to its WebSocket protocol, which builds its own scope:
the TLS extension the hook (``TlsHttpToolsProtocol``) adds to HTTP scopes is not there, so the
certificate the client presented at the handshake never reaches the verifier and every
certificate-bound WebSocket is refused (MTLS-01 fails closed; a DPoP-bound one works).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from rs_mtlskit import ISSUER, MtlsKit
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.sync.client import connect

from tether.resource import ResourceSettings, TetherMiddleware, Verifier, principal_of
from tether.rules.certificate import client_cert_header, thumbprint
from tether.web.server import ServerThread, free_port

# runs the same whatever TETHER_TEST_STORE says: the PostgreSQL pass of scripts/test leaves it out
pytestmark = pytest.mark.store_independent


async def _whoami(websocket: WebSocket) -> None:
    principal = principal_of(websocket)
    await websocket.accept()
    await websocket.send_json({"x5t": principal.x5t})
    await websocket.close()


@dataclass
class Ws:
    kit: MtlsKit
    url: str


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ws]:
    kit = MtlsKit.create(tmp_path_factory.mktemp("review-rs-ws"))
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    verifier = Verifier(ResourceSettings(issuer=ISSUER, resource=url, revocation_feed=False), keys=kit.keys())
    app = Starlette(routes=[WebSocketRoute("/ws", _whoami)], middleware=[Middleware(TetherMiddleware, verifier=verifier)])
    with contextlib.ExitStack() as stack:
        stack.callback(ServerThread(app, port, tls=kit.files).start().stop)
        yield Ws(kit, url)


def test_review_MTLS_01_certificate_bound_token_opens_a_websocket_with_its_certificate(ws: Ws) -> None:
    token = ws.kit.bound(ws.url)
    headers = {"Authorization": f"Bearer {token}"}
    with connect("wss" + ws.url.removeprefix("https") + "/ws", ssl=ws.kit.context(ws.kit.agent),
                 additional_headers=headers, proxy=None, open_timeout=10) as conn:  # fmt: skip
        seen = json.loads(conn.recv(timeout=10))
    assert seen == {"x5t": thumbprint(ws.kit.agent.der)}


async def _whoami_http(request: Request) -> Response:
    return JSONResponse({"x5t": principal_of(request).x5t})


def test_review_MTLS_03_a_forwarded_for_header_makes_anyone_the_trusted_terminator(tmp_path: Path) -> None:
    """``trusted_proxies`` is judged on ``scope["client"]``, which the ASGI server may already have
    rewritten from ``X-Forwarded-For``: uvicorn does so by default for peers in
    ``forwarded_allow_ips`` (``127.0.0.1``), and ``--forwarded-allow-ips='*'`` is the documented
    setting behind a load balancer, where the left-most (client-written) address wins. The
    resource SDK runs under the operator's server, not tether's (``proxy_headers=False``).
    A thief with a certificate-bound token then needs only the agent's *certificate* (public:
    sent in clear in TLS 1.2, logged, forwarded in ``Client-Cert`` between proxy and app), not
    its key: ``X-Forwarded-For: <terminator>`` plus ``Client-Cert`` passed MTLS-01 before a peer
    address named by the request's own forwarding headers stopped counting as the terminator."""
    kit = MtlsKit.create(tmp_path)
    terminator = "10.0.0.5"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = ResourceSettings(issuer=ISSUER, resource=url, revocation_feed=False, trusted_proxies=(f"{terminator}/32",))
    verifier = Verifier(settings, keys=kit.keys())
    app = Starlette(routes=[Route("/whoami", _whoami_http)], middleware=[Middleware(TetherMiddleware, verifier=verifier)])
    thread = ServerThread(app, port)
    thread.server.config.proxy_headers = True  # uvicorn's default; tether's own servers turn it off
    thread.server.config.forwarded_allow_ips = "*"  # "behind a load balancer" (uvicorn docs)
    thread.start()
    try:
        stolen = kit.bound(url)
        forged = {"Authorization": f"Bearer {stolen}", "Client-Cert": client_cert_header(kit.agent.der)}
        with httpx.Client(trust_env=False, timeout=10.0) as thief:
            # control: from the thief's own address the header is not believed
            assert thief.get(url + "/whoami", headers=forged).status_code == 401
            response = thief.get(url + "/whoami", headers={**forged, "X-Forwarded-For": terminator})
        assert response.status_code == 401, f"accepted without the certificate's key: {response.text}"
    finally:
        thread.stop()
