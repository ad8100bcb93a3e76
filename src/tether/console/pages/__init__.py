"""The console's pages, as one list of routes for ``create_console_app``.

Each page module exports its own ``ROUTES``; this list joins them so another module's pages
(alerts, audit, approvals: ``pages.records``, ``pages.approvals``) are added with one line here.
Order matters only where paths overlap: a module listed earlier wins.
"""

from __future__ import annotations

import importlib

from starlette.routing import BaseRoute

__all__ = ["PAGE_MODULES", "PAGE_ROUTES"]

#: modules under ``tether.console.pages`` (or ``tether.console``) whose ``ROUTES`` the console serves
PAGE_MODULES: tuple[str, ...] = (
    "tether.console.pages.overview",
    "tether.console.pages.tasks",
    "tether.console.pages.agents",
    "tether.console.live",
)
#: modules another helper adds; skipped while they do not exist yet
OPTIONAL_MODULES: tuple[str, ...] = ("tether.console.pages.records", "tether.console.pages.approvals")


def _routes() -> list[BaseRoute]:
    routes: list[BaseRoute] = []
    for name in PAGE_MODULES:
        routes.extend(importlib.import_module(name).ROUTES)
    for name in OPTIONAL_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a missing dependency inside the module is a real error
                raise
            continue
        routes.extend(module.ROUTES)
    return routes


PAGE_ROUTES: list[BaseRoute] = _routes()
