"""``protect`` over any ASGI app that speaks MCP streamable HTTP, not only the SDK's (in-process).

A small hand-written MCP endpoint (no ``mcp`` SDK) runs in process under ``httpx.ASGITransport``
at the resource URL, so DPoP's ``htu`` is the URL the verifier expects; the STS is the module's
real one. What the app receives is recorded byte for byte: an allowed call reaches it unchanged,
a refused one never reaches it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
from mcpkit import POLICY, TOOL_SCOPES, McpEnv, modern_headers, modern_request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from helpers import SVC_RS
from tether.mcp import protect
from tether.mcp.messages import ACCESS_DENIED
from tether.provision import install_starter_policies
from tether.resource import ResourceSettings, Verifier

URL = "http://127.0.0.1:1/mcp"  # served in process only: nothing listens there


def plain_mcp(received: list[bytes]) -> Starlette:
    async def endpoint(request: Request) -> Response:
        raw = await request.body()
        received.append(raw)
        message = json.loads(raw)
        if message["method"] == "tools/list":
            names = ("echo", "read_file", "secret_admin", "store")
            tools = [{"name": name, "inputSchema": {"type": "object"}} for name in names]
            return JSONResponse({"jsonrpc": "2.0", "id": message["id"], "result": {"tools": tools}})
        result = {"content": [{"type": "text", "text": "ran"}]}
        return JSONResponse({"jsonrpc": "2.0", "id": message["id"], "result": result})

    return Starlette(routes=[Route("/mcp", endpoint, methods=["POST"])])


def test_a_plain_asgi_mcp_app_is_protected_like_the_sdk_server(menv: McpEnv, tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    install_starter_policies(policies)
    (policies / "50-mcp.cedar").write_text(POLICY, encoding="utf-8")
    settings = ResourceSettings(issuer=menv.sts.url, resource=URL, policy_dir=str(policies))
    verifier = Verifier(settings, identity=menv.sts.identity(SVC_RS))
    received: list[bytes] = []
    app = protect(plain_mcp(received), verifier)
    task = menv.task(audiences=[URL], scopes=TOOL_SCOPES)
    session = menv.session(task["id"], scopes={URL: "tool:echo tool:read_file tool:secret_admin"})
    allowed_body = json.dumps(modern_request("tools/call", {"name": "read_file", "arguments": {"path": "/shared/a"}}), indent=1)
    denied_body = json.dumps(modern_request("tools/call", {"name": "read_file", "arguments": {"path": "/etc/a"}}))

    async def run() -> dict[str, httpx.Response]:
        await verifier.start()
        assert verifier.feed is not None
        await verifier.feed.wait_synced()
        mounts = {"all://127.0.0.1:1": httpx.ASGITransport(app=app)}
        auth = session.auth(audiences={URL: URL}, discover=False)
        try:
            async with (
                httpx.AsyncClient(mounts=mounts, auth=auth, trust_env=False, timeout=10.0) as http,
                httpx.AsyncClient(mounts=mounts, trust_env=False, timeout=10.0) as anonymous,
            ):
                headers = modern_headers("tools/call", "read_file")
                return {
                    "allowed": await http.post(URL, content=allowed_body, headers=headers),
                    "denied": await http.post(URL, content=denied_body, headers=headers),
                    "listed": await http.post(URL, json=modern_request("tools/list"), headers=modern_headers("tools/list")),
                    "unscoped": await http.post(
                        URL, json=modern_request("tools/call", {"name": "store"}), headers=modern_headers("tools/call", "store")
                    ),
                    "anonymous": await anonymous.post(URL, content=allowed_body, headers=headers),
                }
        finally:
            await verifier.aclose()

    responses = asyncio.run(run())
    assert responses["allowed"].status_code == 200, responses["allowed"].text
    assert received[0] == allowed_body.encode()  # replayed byte for byte, whitespace and all
    denied: dict[str, Any] = responses["denied"].json()
    assert denied["error"]["code"] == ACCESS_DENIED
    assert [t["name"] for t in responses["listed"].json()["result"]["tools"]] == ["echo", "read_file"]
    assert responses["unscoped"].status_code == 403
    assert 'scope="tool:echo tool:read_file tool:secret_admin tool:store"' in responses["unscoped"].headers["www-authenticate"]
    assert responses["anonymous"].status_code == 401
    # the app saw the allowed call and the listing, nothing else
    assert [json.loads(raw)["method"] for raw in received] == ["tools/call", "tools/list"]
