"""The published bundles (``federation.published``), SPIFFE Trust Domain and Bundle §5 ``https_web``.

``GET /spiffe/bundle`` serves the trust domain's SVID authorities, ``GET /federation/bundle`` the
STS's access-token signing keys: one purpose per document (SECURITY JWT-08, JWT-12).

Unauthenticated, as a bundle endpoint is (§5.2.1: the Web PKI authenticates the server, and a
bundle holds public keys only). Cheap and bounded: each body is rendered once per change of what
it lists, and cacheable: ``ETag`` with ``If-None-Match`` and ``max-age`` up to the refresh hint.
Serve them over HTTPS (``tether init --tls``) for a peer's ``bundle_endpoint``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from tether.federation.published import SigningBundle, SvidBundle
from tether.sts.routes.common import context, endpoint

__all__ = ["signing_bundle_endpoint", "svid_bundle_endpoint"]


def _served(request: Request, body: bytes, etag: str, refresh_hint: int) -> Response:
    headers = {"ETag": etag, "Cache-Control": f"public, max-age={min(refresh_hint, 60)}"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


@endpoint(resource=False)
async def svid_bundle_endpoint(request: Request) -> Response:
    """The trust domain's JWT-SVID keys and dev CA, for a peer's ``[[trust_domains]] bundle_endpoint``."""
    published: SvidBundle = request.app.state.svid_bundle
    body, etag = published.render()
    return _served(request, body, etag, published.refresh_hint)


@endpoint(resource=False)
async def signing_bundle_endpoint(request: Request) -> Response:
    """The access-token signing keys, for a peer's ``[[federation]] bundle_endpoint``."""
    ctx = context(request)
    published: SigningBundle = request.app.state.signing_bundle
    body, etag = published.render(ctx.keyring, now=ctx.now())
    return _served(request, body, etag, published.refresh_hint)
