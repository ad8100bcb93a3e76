"""An ASGI application factory for multi-process serving (``tether serve --workers N``).

Each worker process builds its own STS from ``TETHER_CONFIG`` and opens its own store
connection inside its own event loop; the workers share state only through the store.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette

import tether.features  # noqa: F401  (the feature tables are registered before a config is loaded)
from tether.config import load_config
from tether.sts.bootstrap import build_sts
from tether.web.heap import settle_after_start

__all__ = ["app"]


def app() -> Starlette:
    sts = build_sts(load_config(Path(os.environ["TETHER_CONFIG"])))
    settle_after_start()  # modules, keys and policies are loaded; the store opens in the lifespan
    return sts.app
