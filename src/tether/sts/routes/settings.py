"""``GET /settings``: the effective settings and the policy set in force, for an authenticated admin."""

from __future__ import annotations

import os

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tether.sts.auth import require_admin
from tether.sts.routes.common import authenticate_token, client_address, context, endpoint, nonce_headers
from tether.web.errors import NO_STORE

__all__ = ["settings_endpoint"]


@endpoint(resource=True, audit_kind="settings.refused")
async def settings_endpoint(request: Request) -> Response:
    ctx = context(request)
    caller = await authenticate_token(request, method="GET", url=ctx.settings.issuer + "/settings")
    require_admin(ctx, caller, operation="settings.read", client=client_address(request))
    ctx.policy.refresh()
    directory = ctx.policy.directory
    policy = {
        "version": ctx.policy.version,
        "mode": ctx.policy.mode,
        "dir": str(directory) if directory else None,
        "resolved_dir": os.path.realpath(directory) if directory else None,
        "refused": [str(p) for p in ctx.policy.last_error.problems[:10]] if ctx.policy.last_error else [],
    }
    body = {"settings": ctx.effective, "overrides": {k: v for k, v in ctx.effective.items() if v["source"].startswith("env ")},
            "policy": policy}  # fmt: skip
    return JSONResponse(body, headers={**NO_STORE, **nonce_headers(ctx)})
