"""``tether mcp pin|tools``: approve an MCP route's tool catalogue, and see whether the upstream drifted from it.

``pin`` connects to the route's upstream as the gateway does (a stdio server started with
the route's command and a minimal environment; an HTTP upstream with the route's vaulted
secret injected), lists every tool and records the digest of each definition
(``tether.mcp.pins``): from then on the gateway serves only those definitions. Pinning is an
operator approval, so it is written to the audit chain (``mcp.pinned``) like every admin
action. ``tools`` shows the pinned catalogue and, connecting again, what the upstream now
lists that differs: a tool added, removed, or changed under the same name (a "rug pull",
OWASP LLM03 supply chain; MCP "Tools" §Security Considerations).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tether.cli.common import config_or_exit, errors_to_exit
from tether.cli.output import console, fail, print_json, print_table, styled

if TYPE_CHECKING:
    from tether.config import Config
    from tether.gateway.mcp_routes import McpRoute
    from tether.mcp.pins import PinnedCatalogue
    from tether.store.protocol import Store

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, help="MCP routes: pin the upstream's tool catalogue, show drift from it.")
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="tether.toml")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="show the upstream's stderr on stderr (escaped and redacted)")
]
OPERATOR = "operator:cli"
#: exit codes of ``tether mcp tools``
NO_DRIFT, DRIFT, CANNOT_CHECK = 0, 1, 2


def _show_upstream_stderr() -> None:
    """The ``tether.mcp`` records (a stdio upstream's stderr lines, already escaped and redacted) on our stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("tether.mcp")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _route(cfg: Config, name: str) -> McpRoute:
    for route in cfg.mcp_routes:
        if route.name == name:
            return route
    known = ", ".join(r.name for r in cfg.mcp_routes) or "none configured"
    fail(f"no MCP route `{name}` in [[gateway.mcp]] ({known})", code=2)


async def _secret(store: Store, cfg: Config, route: McpRoute) -> str | None:
    """The route's vault secret, opened as the gateway opens it (rollback marks included)."""
    from tether.gateway.vault import MissingSecret, SecretCache, opened_marks
    from tether.keys.sealed import load_master_key

    if not route.secret:
        return None
    cache = SecretCache(store, load_master_key(cfg.master_key_file), opened_marks(cfg))
    try:
        return await cache.get(route.secret)
    except MissingSecret as exc:
        fail(f"route `{route.name}` names vault entry `{route.secret}`, which cannot be opened ({type(exc).__name__})")


async def _listing(store: Store, cfg: Config, route: McpRoute) -> list[dict[str, Any]]:
    from tether.mcp.upstream import UpstreamError, connect

    secret = await _secret(store, cfg, route)
    try:
        upstream = await connect(route, secret=secret)
    except UpstreamError as exc:
        fail(exc.message, code=CANNOT_CHECK)
    try:
        return await upstream.list_tools()
    except UpstreamError as exc:
        fail(exc.message, code=CANNOT_CHECK)
    finally:
        await upstream.aclose()


def _previous(cfg: Config, name: str) -> tuple[PinnedCatalogue | None, str]:
    from tether.mcp.pins import PinsTampered, load_pins

    try:
        return load_pins(cfg, name), ""
    except PinsTampered as exc:
        return None, str(exc)


@app.command()
def pin(name: str, config: ConfigOpt = None, json_out: JsonOpt = False, verbose: VerboseOpt = False) -> None:
    """Connect to route NAME's upstream, list its tools and pin them (the gateway then serves only these)."""
    import asyncio

    from tether.mcp.pins import pin_tools, pins_path, record_pins
    from tether.store.open import open_store

    cfg = config_or_exit(config)
    if verbose:
        _show_upstream_stderr()
    route = _route(cfg, name)
    with errors_to_exit():
        previous, problem = _previous(cfg, name)

        async def work() -> PinnedCatalogue:
            store = await open_store(cfg)
            try:
                tools = await _listing(store, cfg, route)
                try:
                    catalogue = pin_tools(route.name, tools, now=time.time(), by=OPERATOR)
                except ValueError as exc:
                    fail(f"route `{name}`: {exc}; nothing was pinned")
                await record_pins(cfg, store, catalogue)
                return catalogue
            finally:
                await store.aclose()

        catalogue = asyncio.run(work())
    old = dict(previous.tools) if previous else {}
    rows = [{"name": tool, "digest": digest, "status": "new" if tool not in old else
             "changed" if old[tool] != digest else "same", "allowed": route.allows(tool)}
            for tool, digest in catalogue.tools.items()]  # fmt: skip
    removed = sorted(set(old) - set(catalogue.tools))
    if json_out:
        print_json({"route": name, "pinned_at": catalogue.pinned_at, "pinned_by": catalogue.pinned_by,
                    "tools": rows, "removed": removed, "previous_pin_refused": problem or None})  # fmt: skip
        return
    if problem:
        console.print(styled(("warning:", "yellow"), f" the previous pin was refused and is replaced: {problem}"))
    print_table(f"MCP route {name}: pinned tools", ["tool", "digest", "vs previous pin", "allowlisted"],
                [(r["name"], r["digest"], r["status"], "yes" if r["allowed"] else "no") for r in rows])  # fmt: skip
    for tool in removed:
        console.print(f"no longer listed (unpinned): {tool}")
    console.print(f"pinned {len(rows)} tool(s) of route `{name}` in {pins_path(cfg, name)}")


@app.command()
def tools(name: str, config: ConfigOpt = None, json_out: JsonOpt = False, verbose: VerboseOpt = False) -> None:
    """Show route NAME's pinned tools and how the upstream drifted from them.

    Exit code 0: no drift; 1: drift (a tool added, removed or changed, or nothing pinned);
    2: could not check (configuration, a pin file that does not verify, upstream unreachable)."""
    import asyncio

    from tether.mcp.catalogue import drift, tool_digest
    from tether.mcp.pins import PinsTampered, load_pins
    from tether.store.open import open_store

    cfg = config_or_exit(config)
    if verbose:
        _show_upstream_stderr()
    route = _route(cfg, name)
    with errors_to_exit():
        try:
            pinned = load_pins(cfg, name)
        except PinsTampered as exc:
            fail(str(exc), code=CANNOT_CHECK)

        async def work() -> list[dict[str, Any]]:
            store = await open_store(cfg)
            try:
                return await _listing(store, cfg, route)
            finally:
                await store.aclose()

        current = asyncio.run(work())
    pins = dict(pinned.tools) if pinned else {}
    moved = drift(pins, current)
    digests: dict[str, str] = {}
    for tool in current:
        if isinstance(tool.get("name"), str):
            try:
                digests[tool["name"]] = tool_digest(tool)
            except ValueError:
                digests[tool["name"]] = "(undigestible)"
    status = {t: "added (not pinned)" for t in moved.added} | {t: "removed upstream" for t in moved.removed}
    status |= {t: "CHANGED since pinned" for t in moved.changed}
    names = sorted(set(pins) | set(digests))
    rows = [{"name": t, "pinned": pins.get(t), "current": digests.get(t), "status": status.get(t, "pinned"),
             "allowed": route.allows(t)} for t in names]  # fmt: skip
    if json_out:
        print_json({"route": name, "pinned": pinned is not None,
                    "pinned_at": pinned.pinned_at if pinned else None, "pinned_by": pinned.pinned_by if pinned else None,
                    "tools": rows, "drift": {"added": list(moved.added), "removed": list(moved.removed),
                                             "changed": list(moved.changed)}})  # fmt: skip
    else:
        if pinned is None:
            console.print(f"route `{name}` is not pinned: its gateway serves no tool (run tether mcp pin {name})")
        else:
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(pinned.pinned_at))
            console.print(f"route `{name}` pinned {when} by {pinned.pinned_by}")
        print_table(f"MCP route {name}: tools", ["tool", "status", "pinned digest", "current digest", "allowlisted"],
                    [(r["name"], r["status"], r["pinned"], r["current"], "yes" if r["allowed"] else "no")
                     for r in rows])  # fmt: skip
        summary = "no drift" if moved.empty else (
            f"drift: {len(moved.added)} added, {len(moved.removed)} removed, {len(moved.changed)} changed")  # fmt: skip
        console.print(summary)
    raise typer.Exit(NO_DRIFT if pinned is not None and moved.empty else DRIFT)
