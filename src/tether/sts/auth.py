"""Authenticating callers of the STS's own APIs.

``/tasks`` and the kill switch take a sender-constrained tether token for the issuer, never a
static API key: a DPoP-bound one with ``Authorization: DPoP`` and a proof with ``ath`` (RFC 9449
§7), a certificate-bound one (RFC 8705 §3) with the certificate it names, both for both
(``rules.binding``); a DPoP-bound token sent as ``Bearer`` is refused. ``/introspect`` and
``/revoke`` take a workload JWT as an RFC 7523 client assertion (RFC 7662 §2.1, RFC 7009
§2.1), redeemed once when it carries a ``jti``, or a client certificate on the connection with
``client_id`` (RFC 8705 §2).
Reading the headers is the routes' part (``sts.routes.common.authenticate_token``).
"""

from __future__ import annotations

from tether.errors import InsufficientScope, InvalidClient, InvalidToken
from tether.model import AccessToken, WorkloadIdentity
from tether.policy.entities import admin_request
from tether.rules.binding import SCHEMES, needs_dpop_proof
from tether.rules.certificate import ClientCertificate
from tether.sts.context import StsContext, spend_key
from tether.urns import JWT_BEARER

__all__ = ["authenticate_client", "check_bound_token", "check_token_proof", "is_admin", "require_admin"]


def check_bound_token(
    ctx: StsContext, scheme: str, token: str, certificate: ClientCertificate | None
) -> tuple[AccessToken, bool]:
    """The STS's own sender-constrained token, presented as its binding demands; also whether a
    DPoP proof must follow (RFC 9449 §7.1, RFC 8705 §3: the same rules as at a resource)."""
    if scheme not in SCHEMES:
        raise InvalidToken("tokens must be presented with the dpop or bearer scheme", debug=f"scheme {scheme}")
    claims = ctx.verify_own_token(token, audience=ctx.settings.issuer)
    dpop = needs_dpop_proof(jkt=claims.jkt, x5t=claims.x5t, scheme=scheme, certificate=certificate, mtls=True)
    return claims, dpop


async def check_token_proof(
    ctx: StsContext, claims: AccessToken, token: str, proof_jwt: str | None, *, method: str, url: str, dpop: bool = True
) -> AccessToken:
    """The DPoP proof of possession of ``claims``' key (RFC 9449 §4.3, ``ath`` §7.1) when its
    binding needs one (``check_bound_token``), then its live state."""
    if dpop:
        proof = await ctx.proofs.check(proof_jwt, method=method, url=url, access_token=token)
        if proof.jkt != claims.jkt:
            raise InvalidToken("dpop proof key does not match the token binding")
    stored = await ctx.store.lookup(task_id=None, jti=claims.jti, principals=[claims.sub, claims.client_id])
    if stored.token is None or stored.token.revoked_at is not None:
        raise InvalidToken("token has been revoked")
    if stored.blocked:
        raise InvalidToken("principal is blocked")
    return claims


def is_admin(ctx: StsContext, caller: AccessToken) -> bool:
    return caller.txn is None and bool(caller.scope & ctx.settings.admin_scope)


def require_admin(ctx: StsContext, caller: AccessToken, *, operation: str | None = None, client: str | None = None) -> None:
    """Admin scope, then (with ``operation``) the Cedar ``admin`` action for that operation."""
    if not is_admin(ctx, caller):
        raise InsufficientScope(f"scope `{' '.join(sorted(ctx.settings.admin_scope))}` is required")
    if operation is not None:
        ctx.authorize(
            admin_request(
                caller=caller.sub,
                caller_kind=caller.client_kind,
                caller_domain=caller.client_domain,
                issuer=ctx.settings.issuer,
                operation=operation,
                now=ctx.now(),
                client=client,
                admins=ctx.settings.admin_principals,
                risk=ctx.risk(caller.sub),
            )
        )


async def authenticate_client(
    ctx: StsContext,
    assertion: str | None,
    assertion_type: str | None,
    *,
    certificate: ClientCertificate | None = None,
    client_id: str | None = None,
) -> WorkloadIdentity:
    """RFC 7523 ``private_key_jwt``, or — with no assertion, a ``client_id`` and a client
    certificate on the connection — RFC 8705 §2 certificate authentication (``identity.x509``)."""
    if assertion is None and assertion_type is None and client_id is not None and certificate is not None:
        if not ctx.certificates:
            raise InvalidClient("certificate client authentication is not configured")
        return ctx.certificates.authenticate(certificate, client_id, now=ctx.now()).identity
    if assertion is None or assertion_type != JWT_BEARER:
        raise InvalidClient("client authentication with a jwt-bearer client assertion is required")
    client = await ctx.verify_workload(assertion, as_client=True)
    spend = spend_key(client)
    if spend is not None and not await ctx.store.spend(spend[0], until=spend[1], now=ctx.now()):
        raise InvalidClient("client assertion has already been used")
    return client
