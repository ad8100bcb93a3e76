"""``POST /token`` (RFC 8693 §2), ``POST /introspect`` (RFC 7662 §2), ``POST /revoke`` (RFC 7009 §2).

With ``[[federation]]`` peers, the token endpoint also takes the RFC 7523 §2.1 ``jwt-bearer`` grant
(``assertion``: a peer's access token, draft-ietf-oauth-identity-chaining §2.4).

The token endpoint also takes RFC 9396 ``authorization_details`` (one ``tool_call``, echoed in
the response as §7 says) and ``approval_id``, the poll of a held request (RFC 8628 §3.4 style).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tether.errors import AuthorizationPending, InvalidRequest, OAuthError
from tether.model import WorkloadIdentity
from tether.rules.approval import parse_authorization_details, valid_approval_id
from tether.rules.resource import select_audience
from tether.rules.scope import parse_scope
from tether.sts.auth import authenticate_client
from tether.sts.exchange import ExchangeRequest, exchange
from tether.sts.holds import details_json
from tether.sts.introspection import introspect, revoke
from tether.sts.routes.common import client_address, client_certificate, context, endpoint, nonce_headers
from tether.web.dpop_request import dpop_header
from tether.web.errors import NO_STORE, error_response
from tether.web.forms import Form, read_form
from tether.web.json_response import CompactJSONResponse

__all__ = ["introspect_endpoint", "revoke_endpoint", "token_endpoint"]


@endpoint(resource=False)
async def token_endpoint(request: Request) -> Response:
    ctx = context(request)
    try:
        req = await _parse(request)
    except OAuthError as exc:
        await ctx.refuse(exc, kind="token.refused", detail={"stage": "request"}, source=client_address(request))
        raise
    try:
        result = await exchange(ctx, req)
    except AuthorizationPending as exc:
        # RFC 8628 §3.5 answer; with the next DPoP nonce (RFC 9449 §8.2), as the agent polls on
        response = error_response(exc)
        response.headers.update(nonce_headers(ctx))
        return response
    body = result.as_json()
    if req.tool_call is not None:
        body["authorization_details"] = details_json(req.tool_call)
    return CompactJSONResponse(body, headers={**NO_STORE, **nonce_headers(ctx)})


async def _parse(request: Request) -> ExchangeRequest:
    """Strictly parse the RFC 8693 §2.1 (or RFC 6749 §4.4.2) form; any problem is ``invalid_request``
    or more specific. The client certificate is this connection's, or a trusted terminator's
    RFC 9440 header (``web.client_cert``); which grant needs it is the use case's to say."""
    form = await read_form(request, repeatable=("resource", "audience"))
    scope = form.get("scope")
    details = form.get("authorization_details")
    approval_id = form.get("approval_id")
    if approval_id is not None and not valid_approval_id(approval_id):
        raise InvalidRequest("`approval_id` is not an approval id")
    return ExchangeRequest(
        grant_type=form.require("grant_type"),
        subject_token=form.get("subject_token"),
        subject_token_type=form.get("subject_token_type"),
        dpop=dpop_header(request.headers),
        actor_token=form.get("actor_token"),
        actor_token_type=form.get("actor_token_type"),
        audience=select_audience(form.all("resource"), form.all("audience")),
        scope=parse_scope(scope) if scope is not None else None,
        requested_token_type=form.get("requested_token_type"),
        task=form.get("task"),
        client_id=form.get("client_id"),
        client_assertion=form.get("client_assertion"),
        client_assertion_type=form.get("client_assertion_type"),
        client_ip=client_address(request),
        certificate=client_certificate(request),
        tool_call=parse_authorization_details(details) if details is not None else None,
        approval_id=approval_id,
        assertion=form.get("assertion"),
    )


@endpoint(resource=False, audit_kind="introspect.refused")
async def introspect_endpoint(request: Request) -> Response:
    ctx = context(request)
    form = await read_form(request)
    body = await introspect(ctx, await _client(request, form), form.require("token"))
    return JSONResponse(body, headers=NO_STORE)


@endpoint(resource=False, audit_kind="revoke.refused")
async def revoke_endpoint(request: Request) -> Response:
    ctx = context(request)
    form = await read_form(request)
    await revoke(ctx, await _client(request, form), form.require("token"))
    return Response(status_code=200, headers=NO_STORE)


async def _client(request: Request, form: Form) -> WorkloadIdentity:
    """RFC 7662 §2.1 / RFC 7009 §2.1 client authentication: a jwt-bearer client assertion, or the
    connection's certificate with ``client_id`` (RFC 8705 §2)."""
    return await authenticate_client(
        context(request),
        form.get("client_assertion"),
        form.get("client_assertion_type"),
        certificate=client_certificate(request),
        client_id=form.get("client_id"),
    )
