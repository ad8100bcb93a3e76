"""``tether task create|show|list|complete|cancel`` — over HTTP, as the local admin workload."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from tether.cli.common import admin_client, config_or_exit, errors_to_exit
from tether.cli.output import print_json, print_mapping, print_table

if TYPE_CHECKING:
    from tether.client import StsClient

__all__ = ["app"]

T = TypeVar("T")

app = typer.Typer(no_args_is_help=True, help="Create and end tasks (the unit every token is bound to).")

UrlOpt = Annotated[str | None, typer.Option(help="STS URL (default: the issuer)")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="tether.toml")]
IdentityOpt = Annotated[Path | None, typer.Option(help="admin JWT-SVID file instead of the dev issuer")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


def _admin(config: Path | None, url: str | None, identity_file: Path | None, call: Callable[[StsClient], T]) -> T:
    """``call`` on an admin client of the STS, its refusals turned into a clean exit."""
    cfg = config_or_exit(config)
    with errors_to_exit():
        return call(admin_client(cfg, url, identity_file))


def _show(task: dict[str, Any], json_out: bool) -> None:
    if json_out:
        print_json(task)
    else:
        print_mapping(f"task {task['id']}", task)


@app.command()
def create(
    agent: Annotated[str, typer.Option(help="the agent's principal, e.g. spiffe://tether.local/agent")],
    audience: Annotated[list[str], typer.Option(help="an allowed audience (repeatable)")],
    scope: Annotated[list[str], typer.Option(help="a maximum scope (repeatable)")],
    purpose: Annotated[str | None, typer.Option(help="why the task exists (goes into purp)")] = None,
    max_duration: Annotated[int | None, typer.Option(help="hard cap in seconds")] = None,
    max_depth: Annotated[int | None, typer.Option(help="longest act chain")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="most tokens derived from the task")] = None,
    on_behalf_of: Annotated[str | None, typer.Option(help="the subject the agent acts for, e.g. user:alice")] = None,
    url: UrlOpt = None,
    config: ConfigOpt = None,
    identity_file: IdentityOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a task and print it."""
    limits = {"max_duration": max_duration, "max_depth": max_depth, "max_tokens": max_tokens}
    ask = {"agent": agent, "audiences": audience, "scopes": scope, "purpose": purpose, "on_behalf_of": on_behalf_of}
    _show(_admin(config, url, identity_file, lambda sts: sts.create_task(**ask, **limits)), json_out)


@app.command()
def show(
    task_id: str, url: UrlOpt = None, config: ConfigOpt = None, identity_file: IdentityOpt = None, json_out: JsonOpt = False
) -> None:
    """Show one task."""
    _show(_admin(config, url, identity_file, lambda sts: sts.api("GET", f"/tasks/{task_id}")), json_out)


@app.command("list")
def list_(
    state: Annotated[str | None, typer.Option(help="active, completed, cancelled, expired or suspended")] = None,
    agent: Annotated[str | None, typer.Option(help="only this agent's tasks")] = None,
    url: UrlOpt = None,
    config: ConfigOpt = None,
    identity_file: IdentityOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List tasks, newest first."""
    params = {k: v for k, v in {"state": state, "agent": agent}.items() if v}
    body = _admin(config, url, identity_file, lambda sts: sts.api("GET", "/tasks", params=params))
    if json_out:
        print_json(body)
        return
    rows = [
        (t["id"], t["agent"], t["state"], " ".join(t["scopes"]), t["tokens_issued"], t["expires_at"]) for t in body["tasks"]
    ]
    print_table("tasks", ["id", "agent", "state", "scopes", "tokens", "expires_at"], rows)


def _end(action: str, task_id: str, url: str | None, config: Path | None, identity_file: Path | None, json_out: bool) -> None:
    _show(_admin(config, url, identity_file, lambda sts: sts.api("POST", f"/tasks/{task_id}/{action}")), json_out)


@app.command()
def complete(
    task_id: str, url: UrlOpt = None, config: ConfigOpt = None, identity_file: IdentityOpt = None, json_out: JsonOpt = False
) -> None:
    """Complete a task: every token bound to it is revoked at once."""
    _end("complete", task_id, url, config, identity_file, json_out)


@app.command()
def cancel(
    task_id: str, url: UrlOpt = None, config: ConfigOpt = None, identity_file: IdentityOpt = None, json_out: JsonOpt = False
) -> None:
    """Cancel a task: every token bound to it is revoked at once."""
    _end("cancel", task_id, url, config, identity_file, json_out)
