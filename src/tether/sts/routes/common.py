"""Route plumbing: every endpoint's errors go through ``tether.web.errors``, refusals are audited and counted.

``tether_refusals`` is labelled with the endpoint's name (``token``, ``tasks``, … — taken
from the function, never the path, which carries task ids) and the wire error code.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from tether.errors import OAuthError, TetherError, UseDPoPNonce
from tether.metrics import REFUSALS
from tether.model import AccessToken
from tether.rules.certificate import ClientCertificate
from tether.store.errors import StoreError
from tether.sts.auth import check_bound_token, check_token_proof
from tether.sts.context import StsContext
from tether.web.client_cert import TrustedProxies, presented_certificate
from tether.web.dpop_request import authorization, dpop_header
from tether.web.errors import error_response, wire_code

__all__ = [
    "Endpoint",
    "authenticate_token",
    "client_address",
    "client_certificate",
    "context",
    "endpoint",
    "nonce_headers",
]

Endpoint = Callable[[Request], Awaitable[Response]]


def context(request: Request) -> StsContext:
    ctx: StsContext = request.app.state.ctx
    return ctx


async def authenticate_token(request: Request, *, method: str, url: str) -> AccessToken:
    """The caller of an STS API: its tether token with the proof its binding needs (``sts.auth``):
    ``Authorization: DPoP`` and a ``DPoP`` proof (RFC 9449 §7.1), the client certificate it is
    bound to (RFC 8705 §3), or both."""
    ctx = context(request)
    scheme, token = authorization(request.headers)
    claims, dpop = check_bound_token(ctx, scheme, token, client_certificate(request))
    return await check_token_proof(ctx, claims, token, dpop_header(request.headers), method=method, url=url, dpop=dpop)


def nonce_headers(ctx: StsContext) -> dict[str, str]:
    """RFC 9449 §8.2: hand out the next nonce with every successful response."""
    nonce = ctx.proofs.fresh_nonce()
    return {"DPoP-Nonce": nonce} if nonce else {}


def endpoint(*, resource: bool, audit_kind: str | None = None) -> Callable[[Endpoint], Endpoint]:
    """Catch tether errors, audit the refusal (unless the use case did) and render it."""

    def wrap(fn: Endpoint) -> Endpoint:
        name = fn.__name__.removesuffix("_endpoint")

        @functools.wraps(fn)
        async def handler(request: Request) -> Response:
            ctx = context(request)
            try:
                return await fn(request)
            except (TetherError, StoreError) as exc:
                REFUSALS.labels(endpoint=name, error=wire_code(exc)).inc()
                if isinstance(exc, OAuthError) and audit_kind is not None and not isinstance(exc, UseDPoPNonce):
                    try:
                        detail = {"path": request.url.path[:200]}
                        await ctx.refuse(exc, kind=audit_kind, detail=detail, source=client_address(request))
                    except StoreError as store_exc:
                        return error_response(store_exc, resource=resource, algs=ctx.proofs.algorithms)
                return error_response(exc, resource=resource, algs=ctx.proofs.algorithms)

        return handler

    return wrap


def client_address(request: Request) -> str | None:
    """The peer address as the server saw it (never a forwarded header: a client sets those)."""
    return request.client.host if request.client else None


@functools.lru_cache(maxsize=8)
def _proxies(cidrs: tuple[str, ...]) -> TrustedProxies:
    return TrustedProxies(cidrs)


def client_certificate(request: Request) -> ClientCertificate | None:
    """The caller's client certificate: this server's TLS handshake, or the RFC 9440 header of a
    ``[tls] trusted_proxies`` address (``web.client_cert``; never a header from anyone else)."""
    return presented_certificate(request.scope, _proxies(context(request).settings.trusted_proxies))
