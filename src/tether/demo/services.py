"""Two tool services protected by the resource SDK: B (search) calls C (docs) on the agent's behalf."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether.agent.identity import IdentitySource
from tether.agent.onward import Onward
from tether.resource import Principal, ResourceSettings, TetherMiddleware, Verifier, require_scope

__all__ = ["docs_service", "search_service"]


def _seen(principal: Principal) -> dict[str, Any]:
    return {
        "subject": principal.subject,
        "agent": principal.agent,
        "actor": principal.actor,
        "actors": list(principal.actors),
        "scopes": sorted(principal.scopes),
        "task": principal.task,
    }


async def whoami(request: Request) -> Response:
    """Any valid token: who the service sees (cheap, used to time revocation)."""
    return JSONResponse(_seen(require_scope(request)))


def docs_service(sts_url: str, resource: str, identity: IdentitySource) -> tuple[Starlette, Verifier]:
    """C: returns a document; needs ``docs:read``. ``identity`` is C's own (it follows the revocation feed)."""
    verifier = Verifier(ResourceSettings(issuer=sts_url, resource=resource), identity=identity)

    async def fetch(request: Request) -> Response:
        principal = require_scope(request, "docs:read")
        return JSONResponse({"doc": request.query_params.get("doc", "design-q3"), "seen_by_c": _seen(principal)})

    app = Starlette(
        routes=[Route("/fetch", fetch), Route("/whoami", whoami)], middleware=[Middleware(TetherMiddleware, verifier=verifier)]
    )
    return app, verifier


def search_service(sts_url: str, resource: str, docs_url: str, identity: IdentitySource) -> tuple[Starlette, Verifier]:
    """B: searches, then fetches from C on the agent's behalf (its own identity as actor and feed subscriber)."""
    verifier = Verifier(ResourceSettings(issuer=sts_url, resource=resource), identity=identity)
    onward = Onward(sts_url, identity)

    async def search(request: Request) -> Response:
        principal = require_scope(request, "wiki:read")
        incoming = request.headers["authorization"].split(" ", 1)[1]
        auth = onward.auth(incoming, audiences={docs_url: docs_url}, scope="docs:read")
        async with httpx.AsyncClient(auth=auth, timeout=10.0, trust_env=False) as http:
            upstream = await http.get(docs_url + "/fetch", params={"doc": "design-q3"})
        return JSONResponse(
            {
                "results": ["design-q3"],
                "seen_by_b": _seen(principal),
                "from_c": upstream.json(),
                "c_status": upstream.status_code,
            },
            status_code=200 if upstream.status_code == 200 else 502,
        )

    app = Starlette(
        routes=[Route("/search", search), Route("/whoami", whoami)],
        middleware=[Middleware(TetherMiddleware, verifier=verifier)],
    )
    return app, verifier
