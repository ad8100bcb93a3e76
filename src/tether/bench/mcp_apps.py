"""The MCP bench's servers, in their own process: one MCP server plain and the same one behind ``protect``.

``python -m tether.bench.mcp_apps CONFIG PLAIN_PORT PROTECTED_PORT`` serves ``notes_server()``
(the demo's notes service) at ``http://127.0.0.1:PLAIN_PORT/mcp`` without tether and at
``http://127.0.0.1:PROTECTED_PORT/mcp`` behind ``tether.mcp.protect`` for the STS of CONFIG,
both on one event loop, so the only difference between the two is tether. ``/healthz``
answers 200 on both once they are up.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from tether.agent.identity import DevIdentity
from tether.config import load_config
from tether.demo.mcp_servers import notes_server
from tether.identity.dev_issuer import DevTrustDomain
from tether.keys.sealed import load_master_key
from tether.mcp import protect
from tether.resource import ResourceSettings, Verifier

__all__ = ["SERVICE", "main"]

SERVICE = "spiffe://tether.local/service/notes"


class _Health:
    """``/healthz`` for the bench harness, everything else to ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        await self.app(scope, receive, send)


def _server(app: Any, port: int) -> uvicorn.Server:
    config = uvicorn.Config(_Health(app), host="127.0.0.1", port=port, log_level="error", access_log=False, http="httptools",
                            loop="uvloop", lifespan="on")  # fmt: skip
    return uvicorn.Server(config)


async def _serve(config_path: Path, plain_port: int, protected_port: int) -> None:
    config = load_config(config_path)
    domain = DevTrustDomain.load(config.data_dir, "tether.local", load_master_key(config.master_key_file))
    resource = f"http://127.0.0.1:{protected_port}/mcp"
    verifier = Verifier(ResourceSettings(issuer=config.issuer, resource=resource), identity=DevIdentity(domain, SERVICE))
    plain = notes_server().streamable_http_app(streamable_http_path="/mcp")
    protected = protect(notes_server(), verifier)
    await asyncio.gather(_server(plain, plain_port).serve(), _server(protected, protected_port).serve())


def main(argv: list[str] | None = None) -> None:
    import tether.features  # noqa: F401 - the config's feature tables

    args = sys.argv[1:] if argv is None else argv
    asyncio.run(_serve(Path(args[0]), int(args[1]), int(args[2])))


if __name__ == "__main__":
    main()
