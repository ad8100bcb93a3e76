"""``tether``: init · serve · identity · keys · task · approvals · revoke · token · audit.

Starting the CLI imports typer, rich and the command modules, nothing else: each command
imports the parts of tether it uses (the store, the STS, uvicorn, Cedar, httpx…) inside its
own body, so ``tether --help`` and a command's start cost only what that command needs. The
command modules follow the same rule; annotations of what they import late are
``TYPE_CHECKING`` imports (typer reads only the commands' own parameters, all plain types).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from tether.cli import approvals as approvals_cli
from tether.cli import audit as audit_cli
from tether.cli import bench as bench_cli
from tether.cli import keys as keys_cli
from tether.cli import mcp as mcp_cli
from tether.cli import policy as policy_cli
from tether.cli import task as task_cli
from tether.cli import vault as vault_cli
from tether.cli.alerts import alerts
from tether.cli.common import admin_client, config_or_exit, dev_approvers, dev_ca, dev_domain, errors_to_exit
from tether.cli.console import console_command
from tether.cli.demo import demo
from tether.cli.output import console, fail, print_json, print_mapping, styled
from tether.cli.report import report

if TYPE_CHECKING:
    from tether.config import Config
    from tether.web.tls import TlsFiles

__all__ = ["app", "main"]

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Task-bound, key-bound, short-lived tokens for agents.")
identity_app = typer.Typer(no_args_is_help=True, help="Workload identities from the dev trust domain.")
token_app = typer.Typer(no_args_is_help=True, help="Inspect tokens.")
app.add_typer(identity_app, name="identity")
app.add_typer(token_app, name="token")
app.add_typer(keys_cli.app, name="keys")
app.add_typer(task_cli.app, name="task")
app.add_typer(audit_cli.app, name="audit")
app.add_typer(policy_cli.app, name="policy")
app.add_typer(vault_cli.app, name="vault")
app.add_typer(vault_cli.master_app, name="master-key")
app.add_typer(bench_cli.app, name="bench")
app.add_typer(mcp_cli.app, name="mcp")
app.add_typer(approvals_cli.app, name="approvals")
app.command()(demo)
app.command()(report)
app.command()(alerts)
app.command("console")(console_command)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="tether.toml (default ./tether.toml)")]


@app.command()
def init(
    directory: Annotated[Path, typer.Option("--dir", help="where to write tether.toml and .tether/")] = Path("."),
    issuer: Annotated[str, typer.Option(help="the STS issuer URL")] = "http://127.0.0.1:8700",
    force: Annotated[bool, typer.Option(help="replace the dev trust domain key and add a new signing key")] = False,
    tls: Annotated[
        bool, typer.Option("--tls", help="also a dev X.509 CA, a server certificate and https URLs (RFC 8705)")
    ] = False,
    trust_domain: Annotated[
        str | None,
        typer.Option("--trust-domain", help="the dev trust domain (default tether.local; one per federating deployment)"),
    ] = None,
) -> None:
    """Create tether.toml, the master key, the issuer signing key and the dev trust domain."""
    from tether.provision import initialize

    with errors_to_exit():
        result = initialize(directory, issuer=issuer, force=force, tls=tls, trust_domain=trust_domain)
    for item in result.created:
        console.print(styled(("created", "green"), f" {item}"))
    for item in result.kept:
        console.print(styled(("kept", "yellow"), f"    {item} (use --force to replace keys)"))
    for item in result.todo:
        console.print(styled(("todo", "red"), f"    {result.config_path} exists and was not rewritten: set {item}"))
    console.print(f"next: tether serve --config {result.config_path}")


TlsOpt = Annotated[
    bool,
    typer.Option(
        "--tls", help="require HTTPS from [tls] (the default whenever [tls] certificate and key are set; an error if not)"
    ),
]


def _tls_files(cfg: Config, required: bool) -> TlsFiles | None:
    """The server's TLS files when ``[tls]`` names a certificate and key (``None`` otherwise);
    ``--tls`` without them exits 2 rather than serving plain HTTP by surprise."""
    from tether.identity.x509 import client_ca_files
    from tether.web.tls import TlsFiles

    if not (cfg.tls.certificate and cfg.tls.key):
        if required:
            fail("--tls needs [tls] certificate and key in the configuration (tether init --tls writes them)", code=2)
        return None
    files = TlsFiles(cfg.resolve(cfg.tls.certificate), cfg.resolve(cfg.tls.key), client_ca_files(cfg))
    for path in (files.certificate, files.key, *files.client_cas):
        if not path.is_file():
            fail(f"tls: no such file `{path}`", code=2)
    return files


def _uvicorn_tls(files: TlsFiles | None) -> dict[str, Any]:
    """uvicorn options for HTTPS with the client certificate in the ASGI TLS extension
    (``tether.web.tls``); a ``functools.partial`` of module-level names, so it pickles for --workers."""
    import functools

    from tether.web.tls import TlsHttpToolsProtocol, uvicorn_context_factory

    if files is None:
        return {"http": "httptools"}
    return {"http": TlsHttpToolsProtocol, "ssl_context_factory": functools.partial(uvicorn_context_factory, files)}


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="port")] = None,
    workers: Annotated[int, typer.Option(help="worker processes (share state through the store)")] = 1,
    tls: TlsOpt = False,
) -> None:
    """Serve the STS (default 127.0.0.1:8700); HTTPS with client certificates when [tls] is set."""
    from tether.logs import configure_logging
    from tether.sts.bootstrap import build_sts

    cfg = config_or_exit(config)
    configure_logging(cfg)  # [logging] format/level; redacted either way (tether.logs)
    uvicorn_level = "debug" if cfg.logging.level == "debug" else "warning"
    bind_host = host or cfg.server.host
    bind_port = port or cfg.server.port
    tls_options = _uvicorn_tls(_tls_files(cfg, tls))
    if workers > 1:
        from tether.cli.workers import listen_sockets, run_workers

        with errors_to_exit():
            build_sts(cfg)  # check configuration, master key and policies before starting the workers
        try:  # held by this process while it runs: the address never looks free while workers restart
            listeners = listen_sockets(bind_host, bind_port, workers)
        except OSError as exc:
            fail(f"cannot listen on {bind_host}:{bind_port}: {exc.strerror or exc}")
        bind_port = int(listeners[0].getsockname()[1])
        if cfg.console.enabled:
            console.print("[console] is not served with --workers: run `tether console` beside the workers")
        console.print(f"tether STS {cfg.issuer} listening on {bind_host}:{bind_port} with {workers} workers")
        # every worker, replacements too, serves this configuration, never a later edit of the file
        code = run_workers(listeners, serve_worker, (cfg, uvicorn_level, tls_options))
        if code:
            raise typer.Exit(code)
        return

    def banner(sts: Any) -> str:
        line = f"tether STS {cfg.issuer} listening on {bind_host}:{bind_port} (kid {sts.ctx.keyring.current.kid})"
        if cfg.console.enabled:
            line += f"\nconsole on {cfg.console.host}:{cfg.console.port}; a login link: tether console --link"
        return line

    def console_app(sts: Any) -> list[tuple[Any, str, int]]:
        from tether.console.app import create_console_app

        if not cfg.console.enabled:
            return []
        return [(create_console_app(sts, lifespan=False), cfg.console.host, cfg.console.port)]

    serve_apps(lambda: build_sts(cfg), banner, host=bind_host, port=bind_port, level=uvicorn_level, graceful=None,
               tls=tls_options, beside=console_app)  # fmt: skip


def serve_worker(cfg: Config, level: str, tls: dict[str, Any], sock: Any, started: Any) -> None:
    """One process of ``tether serve --workers N`` (``tether.cli.workers``): the one-process server
    with the parent's configuration, on a socket of its own (``SO_REUSEPORT``, bound and held by the
    parent), so the kernel spreads connections across the workers."""
    from tether.logs import configure_logging
    from tether.sts.bootstrap import build_sts

    configure_logging(cfg)
    host, port = sock.getsockname()[:2]
    serve_apps(lambda: build_sts(cfg), None, host=host, port=port, level=level, graceful=2, tls=tls, sockets=[sock],
               started=started.set)  # fmt: skip


def serve_apps(build: Callable[[], Any], banner: Callable[[Any], str] | None, *, host: str, port: int, level: str,
               graceful: int | None, tls: dict[str, Any],
               beside: Callable[[Any], list[tuple[Any, str, int]]] | None = None,
               sockets: list[Any] | None = None, started: Callable[[], None] | None = None) -> None:  # fmt: skip
    """One process: build the service (its ``app`` and ``start()``) and serve it on uvloop + httptools;
    ``beside`` names more apps to serve in the same event loop (the console next to the STS, sharing its runtime);
    ``sockets``: listen on these instead of binding ``host:port``; ``started``: called once the service has started."""
    import asyncio

    import uvicorn
    import uvloop

    from tether.web.heap import settle_after_start

    def server(app: Any, bind: str, number: int, options: dict[str, Any], lifespan: Literal["auto", "off"]) -> uvicorn.Server:
        return uvicorn.Server(uvicorn.Config(app, host=bind, port=number, loop="none", log_level=level, log_config=None,
                                             access_log=False, server_header=False, proxy_headers=False, lifespan=lifespan,
                                             timeout_graceful_shutdown=graceful, **options))  # fmt: skip

    async def run() -> None:
        service = build()
        await service.start()
        settle_after_start()
        servers = [server(service.app, host, port, tls, "auto")]
        servers += [server(app, bind, number, {}, "off") for app, bind, number in (beside(service) if beside else [])]
        if banner is not None:
            console.print(banner(service), soft_wrap=True)
        running = [asyncio.create_task(servers[0].serve(sockets=sockets))]
        running += [asyncio.create_task(s.serve()) for s in servers[1:]]
        announce = asyncio.create_task(_announce(servers[0], started or (lambda: None)))
        # each server catches the signals in turn: when one stops, stop the others
        await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        for each in servers:
            each.should_exit = True
        await asyncio.gather(*running, announce)

    with errors_to_exit(), contextlib.suppress(KeyboardInterrupt):
        uvloop.run(run())


async def _announce(server: Any, started: Callable[[], None]) -> None:
    """Call ``started`` once uvicorn listens (after the app's lifespan start-up succeeded)."""
    import asyncio

    while not server.started:
        if server.should_exit:
            return
        await asyncio.sleep(0.02)
    started()


@app.command()
def gateway(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="port")] = None,
    tls: TlsOpt = False,
) -> None:
    """Serve the gateway: legacy-credential routes ([[gateway.routes]]) and MCP routes ([[gateway.mcp]])."""
    from tether.gateway.app import build_gateway
    from tether.gateway.routes import route_warnings
    from tether.logs import configure_logging

    cfg = config_or_exit(config)
    if not cfg.routes and not cfg.mcp_routes:
        fail("no [[gateway.routes]] or [[gateway.mcp]] in the configuration", code=2)
    configure_logging(cfg)
    uvicorn_level = "debug" if cfg.logging.level == "debug" else "warning"
    bind_host = host or cfg.gateway.host
    bind_port = port or cfg.gateway.port
    tls_options = _uvicorn_tls(_tls_files(cfg, tls))
    for warning in route_warnings(cfg.routes, dt.datetime.now(dt.UTC).date()):  # the gateway refuses by UTC date
        console.print(styled(("warning:", "yellow"), f" {warning}"))

    def banner(gw: Any) -> str:
        routes = ", ".join(sorted(r.name for r in cfg.routes))
        return f"tether gateway {cfg.gateway.url} listening on {bind_host}:{bind_port}: {routes}"

    serve_apps(lambda: build_gateway(cfg), banner, host=bind_host, port=bind_port, level=uvicorn_level, graceful=2,
               tls=tls_options)  # fmt: skip


@app.command()
def migrate(config: ConfigOpt = None) -> None:
    """Apply the store's schema migrations (PostgreSQL needs this before serving; SQLite migrates itself)."""
    import asyncio

    from tether.store.open import open_store

    cfg = config_or_exit(config)

    async def run() -> None:
        store = await open_store(cfg, migrate=True)
        await store.aclose()

    with errors_to_exit():
        asyncio.run(run())
    console.print(f"store `{cfg.store}` is at the current schema")


@identity_app.command("issue")
def identity_issue(
    spiffe_id: Annotated[str, typer.Argument(help="e.g. spiffe://tether.local/agent/research")],
    audience: Annotated[str | None, typer.Option(help="default: the issuer (JWT-SVID only)")] = None,
    ttl: Annotated[int | None, typer.Option(help="lifetime in seconds (default 300; 3600 with --x509)")] = None,
    x509: Annotated[bool, typer.Option("--x509", help="an X.509-SVID from the dev CA instead (tether init --tls)")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="with --x509: write svid.pem, svid.key, bundle.pem here")] = None,
    config: ConfigOpt = None,
) -> None:
    """Print a JWT-SVID for SPIFFE_ID signed by the dev trust domain, or write an X.509-SVID (--x509 --out DIR)."""
    cfg = config_or_exit(config)
    lifetime = ttl if ttl is not None else (3600 if x509 else 300)
    if not 0 < lifetime <= cfg.identity.max_lifetime:
        fail(f"--ttl must be between 1 and identity.max_lifetime ({cfg.identity.max_lifetime})", code=2)
    if x509:
        if out is None:
            fail("--x509 needs --out DIR (svid.pem, svid.key, bundle.pem)", code=2)
        if audience is not None:
            fail("--audience is for JWT-SVIDs; an X.509-SVID has no audience", code=2)
        with errors_to_exit():
            ca = dev_ca(cfg)
            try:
                issued = ca.issue_svid(spiffe_id, ttl=lifetime)
            except ValueError as exc:
                fail(str(exc), code=2)
            written = write_x509_svid(out, issued.cert_pem, issued.key_pem, ca.bundle_pem)
        for path in written:
            console.print(styled(("wrote", "green"), f" {path}"))
        return
    if out is not None:
        fail("--out is for --x509; a JWT-SVID is printed", code=2)
    with errors_to_exit():
        domain = dev_domain(cfg)
        try:
            token = domain.issue(spiffe_id, audience=audience or cfg.issuer, ttl=lifetime, now=int(time.time()))
        except ValueError as exc:
            fail(str(exc), code=2)
    typer.echo(token)


@identity_app.command("approver")
def identity_approver(
    email: Annotated[str, typer.Argument(help="the approver, e.g. alice@example.com (principal user:<email>)")],
    group: Annotated[list[str] | None, typer.Option(help="a value of its groups claim (repeatable)")] = None,
    ttl: Annotated[int, typer.Option(help="lifetime in seconds")] = 600,
    config: ConfigOpt = None,
) -> None:
    """Print an approver's ID token from the dev approvers' provider (for `tether approvals` on a laptop)."""
    cfg = config_or_exit(config)
    if not 0 < ttl <= cfg.identity.max_lifetime:
        fail(f"--ttl must be between 1 and identity.max_lifetime ({cfg.identity.max_lifetime})", code=2)
    with errors_to_exit():
        approvers = dev_approvers(cfg)
        try:
            token = approvers.issue(email, audience=cfg.approvals.audience, groups=group or (), ttl=ttl, now=int(time.time()))
        except ValueError as exc:
            fail(str(exc), code=2)
    typer.echo(token)


def write_x509_svid(directory: Path, cert_pem: bytes, key_pem: bytes, bundle_pem: bytes) -> list[Path]:
    """svid.pem (the leaf; the dev CA is the root, so no intermediates), svid.key (0600) and
    bundle.pem, in the layout spiffe-helper writes. Each file is replaced atomically, key first,
    so a reader re-reading them (``tether.agent.x509.FileX509Identity``) never sees half a file."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = []
    for name, data, mode in (("svid.key", key_pem, 0o600), ("svid.pem", cert_pem, 0o644), ("bundle.pem", bundle_pem, 0o644)):
        target = directory / name
        temp = directory / f".{name}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(temp, target)
        written.append(target)
    return written


@app.command()
def revoke(
    agent: Annotated[str | None, typer.Option(help="kill switch: every task and token of this agent")] = None,
    subject: Annotated[str | None, typer.Option(help="kill switch: every task on behalf of this subject")] = None,
    lift: Annotated[bool, typer.Option(help="lift a kill switch instead")] = False,
    url: Annotated[str | None, typer.Option(help="STS URL (default: the issuer)")] = None,
    identity_file: Annotated[Path | None, typer.Option(help="admin JWT-SVID file instead of the dev issuer")] = None,
    config: ConfigOpt = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Offboard a principal: revoke its tasks and tokens and refuse new exchanges until lifted."""
    if (agent is None) == (subject is None):
        fail("give exactly one of --agent or --subject", code=2)
    from tether.store.records import BlockKind

    kind, value = (BlockKind.AGENT, agent) if agent else (BlockKind.SUBJECT, subject)
    cfg = config_or_exit(config)
    with errors_to_exit():
        client = admin_client(cfg, url, identity_file)
        result = client.api("POST", "/principals/unblock" if lift else "/principals/block", json={kind.value: value})
    if json_out:
        print_json(result)
    else:
        print_mapping("kill switch", result)


@token_app.command("inspect")
def token_inspect(token: Annotated[str, typer.Argument(help="a JWT")]) -> None:
    """Decode a JWT's header and claims WITHOUT verifying it (for reading, never for trusting)."""
    from tether.rules.jws import JWSError, b64url_decode, peek_header, strict_json_loads

    try:
        header = peek_header(token.strip(), max_length=16384)
        claims = strict_json_loads(b64url_decode(token.strip().split(".")[1]))
    except JWSError as exc:
        fail(f"not a compact JWT: {exc}")
    print_json({"header": header, "claims": claims, "verified": False})


def main() -> None:
    """Run the command line on asyncio's default event loop policy (uvloop is used only where a
    command asks for it). Nothing can have installed another policy before asyncio is imported."""
    if (loaded := sys.modules.get("asyncio")) is not None:
        loaded.set_event_loop_policy(None)
    app()


if __name__ == "__main__":
    main()
