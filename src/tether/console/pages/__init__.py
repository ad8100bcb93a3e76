"""The console's pages, as one list of routes for ``create_console_app``.

Each page module exports its own ``ROUTES``; this list joins them, so a new module of pages is
added with one line in ``PAGE_MODULES``. Order matters only where paths overlap: a module listed
earlier wins.
"""

from __future__ import annotations

import importlib

from starlette.routing import BaseRoute

__all__ = ["PAGE_MODULES", "PAGE_ROUTES"]

#: modules whose ``ROUTES`` the console serves
PAGE_MODULES: tuple[str, ...] = (
    "tether.console.pages.overview",
    "tether.console.pages.tasks",
    "tether.console.pages.agents",
    "tether.console.live",
    "tether.console.pages.records",
    "tether.console.pages.approvals",
)


def _routes() -> list[BaseRoute]:
    routes: list[BaseRoute] = []
    for name in PAGE_MODULES:
        routes.extend(importlib.import_module(name).ROUTES)
    return routes


PAGE_ROUTES: list[BaseRoute] = _routes()
