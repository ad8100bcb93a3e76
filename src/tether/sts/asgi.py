"""An ASGI application factory for multi-process serving (``tether serve --workers N``).

Each worker process builds its own STS from ``TETHER_CONFIG`` and opens its own store
connection inside its own event loop; the workers share state only through the store.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette

from tether.config import load_config
from tether.sts.bootstrap import build_sts

__all__ = ["app"]


def app() -> Starlette:
    return build_sts(load_config(Path(os.environ["TETHER_CONFIG"]))).app
