"""``GET /spiffe/bundle``: this deployment's SPIFFE bundle (Trust Domain and Bundle §5, ``https_web``).

Unauthenticated, as a bundle endpoint is (§5.2.1: the Web PKI authenticates the server, and a
bundle holds public keys only). Cheap and bounded: the body is rendered once per change of the
keyring or the dev trust domain's files (``federation.published``), and cacheable: ``ETag`` with
``If-None-Match`` and ``max-age`` up to the refresh hint. Serve it over HTTPS (``tether init
--tls``) for a peer's ``bundle_endpoint``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from tether.federation.published import PublishedBundle
from tether.sts.routes.common import context, endpoint

__all__ = ["spiffe_bundle_endpoint"]


@endpoint(resource=False)
async def spiffe_bundle_endpoint(request: Request) -> Response:
    ctx = context(request)
    published: PublishedBundle = request.app.state.spiffe_bundle
    body, etag = published.render(ctx.keyring, now=ctx.now())
    headers = {"ETag": etag, "Cache-Control": f"public, max-age={min(published.refresh_hint, 60)}"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)
