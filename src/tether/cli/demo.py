"""``tether demo``: print the scenario's timeline (rich) or its data (``--json``); exit 0 only if every refusal happened."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tether.cli.output import console, fail, print_json, styled

__all__ = ["demo"]


def _describe(detail: dict[str, object]) -> str:
    return "  ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in detail.items())


def demo(
    json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    keep: Annotated[
        Path | None, typer.Option("--dir", help="keep the deployment in DIR (for tether alerts / report / audit / console)")
    ] = None,
) -> None:
    """Run an agent through a task on a local STS, two services and a gateway, then play the attacks."""
    from tether.demo.scenario import run_demo

    if keep is not None and (keep / "tether.toml").exists():
        fail(f"{keep} already holds a deployment; choose an empty directory", code=2)
    if not json_out:
        console.print(
            styled(("tether demo", "bold"), " — STS, two tool services, a gateway and agents on loopback, SQLite store\n")
        )
    result = run_demo(keep.resolve() if keep is not None else None)
    if json_out:
        print_json(result.as_json())
    else:
        table = Table(show_lines=False, title_justify="left")
        for column in ("ms", "", "step", "detail"):
            table.add_column(column, overflow="fold")
        for step in result.steps:
            mark = {True: styled(("✔", "green")), False: styled(("✘", "red")), None: styled("·")}[step.ok]
            table.add_row(f"{step.at_ms:8.1f}", mark, styled((step.kind, "bold"), f" {step.title}"), _describe(step.detail))
        console.print(table)
        refused = sum(1 for k, v in result.checks.items() if k.startswith("refused:") and v)
        total = sum(1 for k in result.checks if k.startswith("refused:"))
        console.print(
            f"\nattacks refused: {refused}/{total}; completion → refusal: "
            + ", ".join(f"{k} {v} ms" for k, v in result.revocation_ms.items())
        )
        console.print(styled(("all checks passed", "bold green")) if result.ok else styled(("some checks failed", "bold red")))
        if keep is not None:
            config = keep / "tether.toml"
            console.print(
                f"\nthe deployment is kept in {keep}; try:\n  tether alerts --config {config}\n"
                f"  tether report --config {config} --format html --out report.html\n"
                f"  tether audit export --config {config} --out audit.jsonl\n"
                f"  tether console --config {config}   (the demo's tasks and their token trees in a browser)"
            )
    raise typer.Exit(0 if result.ok else 1)
