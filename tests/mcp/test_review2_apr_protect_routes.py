"""Review 2 of issue 17: the plain HTTP routes beside an MCP server under ``tether.mcp.protect`` (APR-01).

``protect`` serves every path of the wrapped app (an ``mcp`` SDK server may add routes with
``custom_route``). Approvals were checked per ``tools/call`` only, for every request: a plain
request to another route was served without ``check_call``. So a route a ``call`` permit holds
``@approval`` was served to any token, and a ``tctx`` token approved for one tool call served
any number of plain requests — where the resource SDK and the gateway refuse both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey
from mcp.server.mcpserver import MCPServer
from mcp_approval_kit import APPROVAL, ISSUER, KID, PAY_POLICY, HeldMcp, Ran, TokenAuth, pay
from mcpkit import result_of
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tether.agent.proof import DPoPKey
from tether.identity.jwks_cache import KeySet, StaticKeySource
from tether.mcp import protect
from tether.provision import install_starter_policies
from tether.resource import ResourceSettings, Verifier
from tether.web.server import ServerThread, free_port

ARGS = {"amount": 120, "to": "acme-ltd"}

#: a plain route of the same app, held for finance by a ``call`` policy
PAYOUT_POLICY = """
@id("payouts-need-finance")
@approval("finance")
permit (principal, action == Tether::Action::"call", resource)
when { context.path == "/payouts" };
"""


def _server(ran: Ran) -> MCPServer:
    server = MCPServer("payments")

    @server.tool()
    def pay(amount: int, to: str) -> str:
        ran.calls.append(("pay", {"amount": amount, "to": to}))
        return f"paid {amount} to {to}"

    async def payouts(request: Request) -> Response:
        ran.calls.append(("payouts", None))
        return JSONResponse({"paid": True})

    async def balance(request: Request) -> Response:
        ran.calls.append(("balance", None))
        return JSONResponse({"balance": 1000})

    server.custom_route("/payouts", methods=["POST"])(payouts)
    server.custom_route("/balance", methods=["GET"])(balance)
    return server


@contextlib.contextmanager
def _serve(directory: Path) -> Iterator[HeldMcp]:
    install_starter_policies(directory)
    (directory / "60-pay.cedar").write_text(PAY_POLICY + PAYOUT_POLICY, encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    key = ECKey.generate_key("P-256", parameters={"kid": KID}, private=True)
    keys = StaticKeySource(KeySet([ECKey.import_key(key.as_dict(private=False))]))
    settings = ResourceSettings(issuer=ISSUER, resource=url, revocation_feed=False, policy_dir=str(directory))
    verifier = Verifier(settings, keys=keys)
    ran = Ran()
    thread = ServerThread(protect(_server(ran), verifier, stateless_http=True, json_response=True), port).start()
    try:
        yield HeldMcp(url, verifier, key, ran)
    finally:
        thread.stop()


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeldMcp]:
    with _serve(tmp_path_factory.mktemp("review2-protect-routes")) as server:
        yield server


def _client(token: str, key: DPoPKey) -> httpx.Client:
    return httpx.Client(auth=TokenAuth(token, key), trust_env=False, timeout=10.0)


def _origin(held: HeldMcp) -> str:
    return held.url.removesuffix("/mcp")


def _ran(held: HeldMcp, name: str) -> int:
    return sum(1 for n, _ in held.ran.calls if n == name)


def test_review2_apr01_held_plain_route_beside_mcp_needs_an_approval(held: HeldMcp) -> None:
    key = DPoPKey()
    before = _ran(held, "payouts")
    with _client(held.token(key), key) as http:
        response = http.post(_origin(held) + "/payouts")
    assert response.status_code == 403, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == "access_denied" and body["approval_required"] == ["finance"], body
    assert _ran(held, "payouts") == before


def test_review2_apr01_approved_token_serves_a_held_plain_route_once(held: HeldMcp) -> None:
    key = DPoPKey()
    with _client(held.token(key, approval=APPROVAL), key) as http:
        assert http.post(_origin(held) + "/payouts").status_code == 200
        again = http.post(_origin(held) + "/payouts")
    assert again.status_code == 403 and again.json()["error"] == "access_denied", again.text


def test_review2_apr01_tool_call_token_serves_no_plain_route(held: HeldMcp) -> None:
    key = DPoPKey()
    before = _ran(held, "balance")
    token = held.token(key, tool="pay", arguments=ARGS, approval=APPROVAL)
    with _client(token, key) as http:
        response = http.get(_origin(held) + "/balance")
        assert response.status_code == 403, response.text
        assert response.json()["error"] == "access_denied"
        assert _ran(held, "balance") == before
        # its own call is still served, once
        assert result_of(pay(http, held.url, ARGS))["content"][0]["text"] == "paid 120 to acme-ltd"


def test_review2_apr01_plain_route_unheld_is_served_to_an_ordinary_token(held: HeldMcp) -> None:
    """Control."""
    key = DPoPKey()
    with _client(held.token(key), key) as http:
        response = http.get(_origin(held) + "/balance")
    assert response.status_code == 200, response.text
