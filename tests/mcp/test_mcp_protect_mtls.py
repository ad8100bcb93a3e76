"""``tether.mcp.protect`` with certificate-bound tokens over real TLS on loopback (RFC 8705 §3, RFC 9440).

A plain ASGI MCP app (no SDK needed) behind ``protect`` under ``ServerThread(tls=...)``; the
verifier trusts a signing key the test owns, so the token carries exactly ``cnf.x5t#S256``.
A certificate-bound token without its certificate is refused before the server sees the
message (401 ``invalid_token``, a ``Bearer`` challenge naming the RFC 9728 metadata), and a
``Client-Cert`` header from an untrusted peer is removed before the app sees the request.
"""

from __future__ import annotations

import json
import secrets
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey
from mcpkit import modern_headers, modern_request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from helpers import AGENT
from tether.identity.dev_x509 import DevCA, Issued
from tether.identity.jwks_cache import KeySet, StaticKeySource
from tether.mcp import protect
from tether.resource import ResourceSettings, Verifier
from tether.rules.certificate import client_cert_header, thumbprint
from tether.rules.jws import sign_compact
from tether.web.server import ServerThread, free_port
from tether.web.tls import TlsFiles

ISSUER = "https://sts.mtls.test"
KID = "mcp-mtls-key"


@dataclass
class Served:
    url: str
    root: Path
    agent: Issued
    other: Issued
    signing: ECKey
    received: list[dict[str, Any]] = field(default_factory=list)

    def client(self, issued: Issued | None) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.root / "ca.pem"))
        if issued is not None:
            cert, key = issued.write(self.root, f"client-{thumbprint(issued.der)[:10]}")
            context.load_cert_chain(cert, key)
        return httpx.Client(verify=context, trust_env=False, timeout=10.0)

    def token(self) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": AGENT, "aud": self.url, "exp": now + 120, "iat": now, "nbf": now,
                  "jti": secrets.token_urlsafe(16), "client_id": AGENT, "scope": "tool:echo", "agt": AGENT,
                  "txn": "tsk_" + secrets.token_urlsafe(8), "cnf": {"x5t#S256": thumbprint(self.agent.der)}}  # fmt: skip
        return sign_compact({"typ": "at+jwt", "alg": "ES256", "kid": KID}, claims, self.signing, "ES256")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("mcp-mtls")
    ca = DevCA.create("example.org")
    (root / "ca.pem").write_bytes(ca.bundle_pem)
    cert, key = ca.issue_server(["127.0.0.1"]).write(root, "server")
    signing = ECKey.generate_key("P-256", parameters={"kid": KID}, private=True)
    port = free_port()
    url = f"https://127.0.0.1:{port}/mcp"
    state = Served(url, root, ca.issue_svid("spiffe://example.org/agent"), ca.issue_svid("spiffe://example.org/other"), signing)

    async def endpoint(request: Request) -> Response:
        message = json.loads(await request.body())
        state.received.append({"method": message["method"], "headers": sorted(request.headers)})
        result = {"content": [{"type": "text", "text": "ran"}]}
        return JSONResponse({"jsonrpc": "2.0", "id": message["id"], "result": result})

    keys = StaticKeySource(KeySet([ECKey.import_key(signing.as_dict(private=False))]))
    verifier = Verifier(ResourceSettings(issuer=ISSUER, resource=url, revocation_feed=False), keys=keys)
    app = protect(Starlette(routes=[Route("/mcp", endpoint, methods=["POST"])]), verifier)
    thread = ServerThread(app, port, tls=TlsFiles(cert, key, (root / "ca.pem",))).start()
    try:
        yield state
    finally:
        thread.stop()


def post(client: httpx.Client, served: Served, token: str, **extra: str) -> httpx.Response:
    body = modern_request("tools/call", {"name": "echo", "arguments": {"text": "x"}})
    headers = {**modern_headers("tools/call", "echo"), "Authorization": f"Bearer {token}", **extra}
    return client.post(served.url, json=body, headers=headers)


def test_MTLS_01_protect_refuses_a_certificate_bound_token_without_its_certificate(served: Served) -> None:
    token = served.token()
    spoofed = {"Client-Cert": client_cert_header(served.agent.der)}
    metadata = served.url.removesuffix("/mcp") + "/.well-known/oauth-protected-resource/mcp"
    before = len(served.received)
    with served.client(None) as anonymous, served.client(served.other) as other:
        for refused in (post(anonymous, served, token), post(other, served, token), post(anonymous, served, token, **spoofed)):
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"] == "invalid_token"
            challenge = refused.headers["www-authenticate"]
            assert challenge.startswith('Bearer error="invalid_token"') and f'resource_metadata="{metadata}"' in challenge
    assert len(served.received) == before, "a refused message reached the MCP server"
    with served.client(served.agent) as agent:  # control: the same token with its certificate
        accepted = post(agent, served, token, **spoofed)
        assert accepted.status_code == 200, accepted.text
        document = agent.get(metadata).json()
    assert served.received[-1]["method"] == "tools/call"
    assert not [h for h in served.received[-1]["headers"] if h.startswith("client-cert")]  # stripped (MTLS-03)
    assert document["tls_client_certificate_bound_access_tokens"] is True
