"""``/jwks``, RFC 8414 metadata and ``/healthz`` (the feed and ``/policies`` are in ``routes.feed``).

``/healthz`` is for load balancers and says only whether the store answers, nothing about the
deployment. Its check is shared and reused for a second (``tether.sts.health``), and its 503 is
not logged above debug level: the answer is the report, and a flood must not reach the log.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tether.identity.x509 import SELF_SIGNED_TLS_CLIENT_AUTH, TLS_CLIENT_AUTH
from tether.metrics import REFUSALS
from tether.rules.approval import TOOL_CALL_TYPE
from tether.store.errors import StoreError
from tether.sts.health import federation_health
from tether.sts.routes.common import context, endpoint
from tether.urns import CLIENT_CREDENTIALS, JWT_BEARER_GRANT, TOKEN_EXCHANGE
from tether.web.errors import error_response, wire_code

__all__ = ["health_endpoint", "jwks_endpoint", "metadata_endpoint"]


@endpoint(resource=False)
async def jwks_endpoint(request: Request) -> Response:
    ctx = context(request)
    return JSONResponse(
        ctx.keyring.jwks(now=ctx.now()), headers={"Cache-Control": "public, max-age=60"}, media_type="application/jwk-set+json"
    )


@endpoint(resource=False)
async def metadata_endpoint(request: Request) -> Response:
    """RFC 8414 §2, with RFC 9449 §5.1 ``dpop_signing_alg_values_supported`` and, when client
    certificates can authenticate anyone here (a trust domain's X.509 bundle or a registered
    certificate), RFC 8705 §3.3 and §5 (``mtls_endpoint_aliases``: one port serves both); the
    RFC 9396 §10 ``authorization_details`` types the token endpoint takes; the RFC 7523 §2.1
    ``jwt-bearer`` grant when federation peers are configured (issue 19)."""
    ctx = context(request)
    issuer = ctx.settings.issuer
    algs = list(ctx.proofs.algorithms)
    mtls = bool(ctx.certificates)
    body: dict[str, Any] = {
        "issuer": issuer,
        "token_endpoint": issuer + "/token",
        "jwks_uri": issuer + "/jwks",
        "introspection_endpoint": issuer + "/introspect",
        "revocation_endpoint": issuer + "/revoke",
        "grant_types_supported": [TOKEN_EXCHANGE],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": algs,
        "introspection_endpoint_auth_methods_supported": ["private_key_jwt"],
        "revocation_endpoint_auth_methods_supported": ["private_key_jwt"],
        "dpop_signing_alg_values_supported": algs,
        "scopes_supported": sorted(ctx.settings.admin_scope),
        "tether_tasks_endpoint": issuer + "/tasks",
        "tether_revocations_endpoint": issuer + "/revocations",
        # RFC 9396 §10: one MCP tool call per token request (``rules.approval``)
        "authorization_details_types_supported": [TOOL_CALL_TYPE],
    }
    if mtls:
        body["grant_types_supported"] = [TOKEN_EXCHANGE, CLIENT_CREDENTIALS]
        body["token_endpoint_auth_methods_supported"] = [
            "private_key_jwt",
            "none",
            TLS_CLIENT_AUTH,
            SELF_SIGNED_TLS_CLIENT_AUTH,
        ]
        for key in ("introspection_endpoint_auth_methods_supported", "revocation_endpoint_auth_methods_supported"):
            body[key] = ["private_key_jwt", TLS_CLIENT_AUTH, SELF_SIGNED_TLS_CLIENT_AUTH]
        body["tls_client_certificate_bound_access_tokens"] = True
        body["mtls_endpoint_aliases"] = {
            "token_endpoint": issuer + "/token",
            "introspection_endpoint": issuer + "/introspect",
            "revocation_endpoint": issuer + "/revoke",
        }
    if ctx.settings.federation:
        # RFC 7523 §2.1: a federation peer's access token as the grant (identity chaining)
        body["grant_types_supported"] = [*body["grant_types_supported"], JWT_BEARER_GRANT]
    return JSONResponse(body, headers={"Cache-Control": "public, max-age=300"})


@endpoint(resource=False)
async def health_endpoint(request: Request) -> Response:
    ctx = context(request)
    try:
        await ctx.health()
    except StoreError as exc:
        REFUSALS.labels(endpoint="health", error=wire_code(exc)).inc()
        return error_response(exc, quiet=True)
    return JSONResponse({"status": "ok", **federation_health(ctx.federation, ctx.now())}, headers={"Cache-Control": "no-store"})
