"""The console's pages (helper "pages" writes these)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tether.console.web import Human, page, render
from tether.web.forms import Form

__all__ = ["PAGE_ROUTES"]


@page("view")
async def overview(request: Request, human: Human, form: Form | None) -> Response:
    return render(request, "error.html", {"title": "Overview", "status": 200, "message": "placeholder"}, human=human)


PAGE_ROUTES: list[BaseRoute] = [Route("/", overview, methods=["GET"])]

from tether.console.pages import approvals, records  # noqa: E402  (h-records: the lead merges these into PAGE_ROUTES)

PAGE_ROUTES += records.ROUTES + approvals.ROUTES
