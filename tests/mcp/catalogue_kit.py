"""Routes to the tiny files MCP server (tests/mcp/servers/files_server.py), over stdio or HTTP on loopback.

Everything is real: the SDK's stdio transport starts the server as a subprocess, the HTTP
upstream is the same server's streamable-HTTP app on uvicorn, loopback.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import tether.features  # noqa: F401 - registers the feature tables
from tether.config import parse_config
from tether.gateway.mcp_routes import McpRoute
from tether.web.server import ServerThread, free_port

SERVER = Path(__file__).resolve().parent / "servers" / "files_server.py"
SECRET = "mcp-upstream-secret-0123456789"
SECRET_HEADER = "X-Api-Key"
ROW: dict[str, Any] = {
    "name": "files",
    "tools": ["*"],
    "owner": "team-docs",
    "justification": "agents read the shared drive",
    "expires": dt.date(2099, 1, 1),
}


def files_server() -> ModuleType:
    """The server module, loaded from its file (it is a script, not on the import path)."""
    spec = importlib.util.spec_from_file_location("files_server", SERVER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stdio_row(**extra: Any) -> dict[str, Any]:
    return ROW | {"command": [sys.executable, str(SERVER)], "timeout": 60} | extra


def http_row(url: str, **extra: Any) -> dict[str, Any]:
    return ROW | {"url": url, "secret": "files-key", "header": SECRET_HEADER, "template": "{secret}"} | extra


def route(row: dict[str, Any]) -> McpRoute:
    (parsed,) = parse_config({"gateway": {"mcp": [row]}}, path=None, env={}).mcp_routes
    return parsed


@contextlib.contextmanager
def http_upstream(*, rug_pull: bool = False, port: int | None = None, header: str = SECRET_HEADER,
                  value: str = SECRET, query: str = "") -> Iterator[str]:  # fmt: skip
    """The files server over streamable HTTP, demanding ``header: value`` (default ``X-Api-Key: SECRET``)
    or, with ``query``, the query parameter ``query=value``; yields its MCP url."""
    port = port or free_port()
    app = files_server().http_app(header="" if query else header, value=value, query=query, rug_pull=rug_pull)
    server = ServerThread(app, port).start()
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.stop()
