"""``tether console``: serve the operator console on its own port and print a one-time login link.

Like Jupyter's token, the link logs one browser in once, within ``[console] link_ttl`` seconds
(SECURITY WEB-04); ``--link`` only prints a new link for a console already running (``tether
serve`` with ``[console] enabled``, or another ``tether console``). The link is sealed under a
key derived from the master key, so only someone who can read the master key can mint one.
"""

from __future__ import annotations

import getpass
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tether.cli.common import config_or_exit, errors_to_exit
from tether.cli.output import console, fail

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from tether.config import Config
    from tether.sts.bootstrap import Sts

__all__ = ["console_command", "login_link"]


def login_link(cfg: Config, base: str, *, role: str, principal: str | None) -> str:
    from tether.console.login import mint_link
    from tether.keys.sealed import derive_key, load_master_key

    key = derive_key(load_master_key(cfg.master_key_file), "console")
    who = principal or f"console:{getpass.getuser()}"
    return mint_link(key, base, principal=who, role=role, now=time.time(), ttl=cfg.console.link_ttl)


class ConsoleService:
    """The console alone, with its own STS runtime on the deployment's store (no upkeep: ``tether serve`` does that)."""

    def __init__(self, cfg: Config) -> None:
        from tether.console.app import create_console_app
        from tether.sts.bootstrap import build_sts

        self.sts: Sts = build_sts(cfg, upkeep=False)
        self.app: Starlette = create_console_app(self.sts)

    async def start(self) -> Any:
        return await self.sts.start()


def console_command(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="tether.toml (default ./tether.toml)")] = None,
    host: Annotated[str | None, typer.Option(help="bind address (default [console] host)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default [console] port)")] = None,
    link: Annotated[bool, typer.Option("--link", help="only print a new one-time login link")] = False,
    role: Annotated[str, typer.Option(help="the role the link logs in with: viewer, operator or approver")] = "operator",
    as_: Annotated[str | None, typer.Option("--as", help="the principal the link logs in as (default console:<user>)")] = None,
) -> None:
    """Serve the operator console and print a one-time login link (valid once, for [console] link_ttl seconds)."""
    from tether.cli.main import serve_apps
    from tether.config.console import plain_http_refusal
    from tether.logs import configure_logging
    from tether.rules.console_roles import ROLES

    if role not in ROLES:
        fail(f"--role must be one of {', '.join(ROLES)}", code=2)
    cfg = config_or_exit(config)
    base = cfg.console.base_url(host, port)
    with errors_to_exit():
        url = login_link(cfg, base, role=role, principal=as_)
    if link:
        console.print(url, soft_wrap=True)
        return
    bind_host, bind_port = host or cfg.console.host, port or cfg.console.port
    refusal = plain_http_refusal(bind_host, cfg.console.public_url)
    if refusal is not None:
        fail(refusal, code=2)  # WEB-01: never a login link or a session cookie in the clear
    configure_logging(cfg)
    level = "debug" if cfg.logging.level == "debug" else "warning"

    def banner(service: Any) -> str:
        return (f"tether console for {cfg.issuer} listening on {bind_host}:{bind_port}\n"
                f"log in once, within {cfg.console.link_ttl} s: {url}")  # fmt: skip

    serve_apps(lambda: ConsoleService(cfg), banner, host=bind_host, port=bind_port, level=level, graceful=1, tls={})
