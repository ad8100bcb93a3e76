"""tether and the Model Context Protocol (MCP authorization spec 2026-07-28).

``protect(server, verifier)`` wraps an ``mcp`` SDK server (or any ASGI app speaking MCP
streamable HTTP) so that every request carries a DPoP-bound tether token for the server's URL,
every ``tools/call`` is authorized on the tool and its arguments, ``tools/list`` shows only
what the caller may call, and an ended task cuts its open streams. The ``mcp`` SDK is never
imported here: a plain ASGI app needs none of it.

    server = MCPServer("notes")

    @server.tool()
    def read_note(path: str) -> str: ...

    verifier = Verifier(ResourceSettings(issuer=STS, resource="https://notes.example/mcp"), identity=identity)
    app = protect(server, verifier)  # serve with uvicorn

For the gateway: ``upstream`` talks to an upstream MCP server on the official SDK (imported
lazily); ``catalogue`` is pure (tool digests and drift); ``pins`` keeps the operator-approved
catalogue per route in a file MAC'd under the master key.
"""

from tether.mcp.protect import DEFAULT_CUT_INTERVAL, DEFAULT_MAX_BODY_BYTES, ProtectedMCP, protect

__all__ = ["DEFAULT_CUT_INTERVAL", "DEFAULT_MAX_BODY_BYTES", "ProtectedMCP", "protect"]
