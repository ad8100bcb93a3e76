"""The ``tether`` command line (typer + rich), installed with the ``server`` extra.

``main`` is the console script. A plain ``pip install tether`` (the SDKs) still puts the
command on the path, so a missing optional dependency is answered with the extra that
installs it instead of a traceback."""

from __future__ import annotations

import sys

__all__ = ["EXTRA_OF", "main"]

#: top-level modules of the optional dependencies the CLI can reach, and the extra of each
EXTRA_OF = {
    **dict.fromkeys(
        ("typer", "click", "rich", "uvicorn", "uvloop", "httptools", "aiohttp", "yarl", "yaml", "prometheus_client"), "server"
    ),
    **dict.fromkeys(("psycopg", "psycopg_pool", "redis"), "postgres"),
}


def main() -> None:
    """Run ``tether.cli.main``; exit 1 naming the extra when one of its dependencies is absent."""
    try:
        from tether.cli.main import main as run

        run()
    except ModuleNotFoundError as exc:
        extra = EXTRA_OF.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        sys.exit(f"tether: {exc.name} is not installed; the command needs the {extra} extra: pip install 'tether[{extra}]'")
