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

import pytest
from rs_mtlskit import ISSUER, MtlsKit
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.sync.client import connect

from tether.resource import ResourceSettings, TetherMiddleware, Verifier, principal_of
from tether.rules.certificate import thumbprint
from tether.web.server import ServerThread, free_port


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
