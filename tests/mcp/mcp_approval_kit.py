"""A protected MCP server with a payment tool held for approval (issue 17, APR-01), and tokens to call it.

The server is the ``mcp`` SDK's ``MCPServer`` wrapped by ``tether.mcp.protect`` under
``ServerThread`` on loopback. Its verifier trusts a signing key of the test's own, so each
test signs exactly the token it needs (``tctx``, ``apr``) as the STS would issue it; proofs,
signatures and the JSON-RPC exchange are real. (The STS-issued flow end to end is the agent
folder's headline test.)
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from joserfc.jwk import ECKey
from mcp.server.mcpserver import MCPServer
from mcpkit import modern_headers, modern_request

from tether.agent.proof import DPoPKey
from tether.identity.jwks_cache import KeySet, StaticKeySource
from tether.mcp import protect
from tether.provision import install_starter_policies
from tether.resource import ResourceSettings, Verifier
from tether.rules.approval import tool_call_context
from tether.rules.jws import sign_compact
from tether.web.server import ServerThread, free_port

__all__ = ["AGENT", "APPROVAL", "PAY_POLICY", "HeldMcp", "TokenAuth", "pay", "serve_held_mcp"]

ISSUER = "http://sts.approval.test"
AGENT = "spiffe://tether.local/agent/research"
KID = "mcp-approval-key"
APPROVAL = "apr_" + "M" * 22

#: ``pay`` is held for finance; ``echo`` is not held
PAY_POLICY = """
@id("pay-needs-finance")
@approval("finance")
permit (principal, action == Tether::Action::"call", resource)
when { context.tool == "pay" };
"""


@dataclass
class Ran:
    calls: list[tuple[str, Any]] = field(default_factory=list)


def _server(ran: Ran) -> MCPServer:
    server = MCPServer("payments")

    @server.tool()
    def pay(amount: int, to: str) -> str:
        ran.calls.append(("pay", {"amount": amount, "to": to}))
        return f"paid {amount} to {to}"

    @server.tool()
    def echo(text: str) -> str:
        ran.calls.append(("echo", text))
        return text

    return server


@dataclass
class HeldMcp:
    url: str
    verifier: Verifier
    key: ECKey
    ran: Ran

    def token(
        self, holder: DPoPKey, *, tool: str | None = None, arguments: dict[str, Any] | None = None,
        approval: str | None = None, scope: str = "tool:pay tool:echo",
    ) -> str:  # fmt: skip
        """A token for this server bound to ``holder``: with ``tool`` a ``tctx``, with ``approval`` an ``apr``."""
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": ISSUER, "sub": AGENT, "aud": self.url, "exp": now + 120, "iat": now, "nbf": now,
            "jti": secrets.token_urlsafe(16), "client_id": AGENT, "scope": scope, "cnf": {"jkt": holder.jkt},
            "agt": AGENT, "txn": "tsk_" + secrets.token_urlsafe(8),
        }  # fmt: skip
        if tool is not None:
            body["tctx"] = tool_call_context(tool, arguments or {})
        if approval is not None:
            body["apr"] = {"id": approval, "by": "user:alice@example.com", "at": now - 5}
        return sign_compact({"typ": "at+jwt", "alg": "ES256", "kid": KID}, body, self.key, "ES256")


class TokenAuth(httpx.Auth):
    """``Authorization: DPoP <token>`` and a fresh proof per request (RFC 9449 §7.1)."""

    def __init__(self, token: str, key: DPoPKey) -> None:
        self.token = token
        self.key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"DPoP {self.token}"
        request.headers["DPoP"] = self.key.proof(request.method, str(request.url), access_token=self.token)
        yield request


@contextlib.contextmanager
def serve_held_mcp(directory: Path, **options: Any) -> Iterator[HeldMcp]:
    """The payment server on loopback (``options`` go to ``protect``), policies in ``directory``."""
    install_starter_policies(directory)
    (directory / "60-pay.cedar").write_text(PAY_POLICY, encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    key = ECKey.generate_key("P-256", parameters={"kid": KID}, private=True)
    keys = StaticKeySource(KeySet([ECKey.import_key(key.as_dict(private=False))]))
    settings = ResourceSettings(issuer=ISSUER, resource=url, revocation_feed=False, policy_dir=str(directory))
    verifier = Verifier(settings, keys=keys)
    ran = Ran()
    thread = ServerThread(protect(_server(ran), verifier, **options), port).start()
    try:
        yield HeldMcp(url, verifier, key, ran)
    finally:
        thread.stop()


def pay(http: httpx.Client, url: str, arguments: dict[str, Any], *, tool: str = "pay") -> httpx.Response:
    """One modern (2026-07-28) ``tools/call`` POST."""
    body = modern_request("tools/call", {"name": tool, "arguments": arguments})
    return http.post(url, json=body, headers=modern_headers("tools/call", tool))
