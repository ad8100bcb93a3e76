"""Login with the organisation's OIDC provider (helper "oidc" writes this)."""

from __future__ import annotations

from starlette.routing import BaseRoute

__all__ = ["OIDC_ROUTES"]

OIDC_ROUTES: list[BaseRoute] = []
