"""``tether policy validate|test|explain`` — the same loader and engine the STS uses.

``explain`` and ``test`` also show the ``@approval`` outcome: the approver groups that hold an
allowed request and the policies that named them (``policy.engine.Decision.approval``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tether.cli.common import config_or_exit
from tether.cli.output import console, fail, print_json, print_table, styled

if TYPE_CHECKING:
    from tether.policy.engine import Decision, PolicyEngine
    from tether.policy.loader import PolicyVersion

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, help="Cedar policies: validate, test, explain.")
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="tether.toml (for the default directory)")]
DirOpt = Annotated[Path | None, typer.Option("--dir", help="policy directory (default: policy.dir of the config)")]


def _directory(directory: Path | None, config: Path | None) -> tuple[Path, list[str], str]:
    if directory is not None:
        return directory, [], "enforce"
    cfg = config_or_exit(config)
    return cfg.policy_dir, list(cfg.admin.principals), cfg.policy.mode


def _load(directory: Path) -> PolicyVersion:
    from tether.policy.loader import PolicyLoadError, load_directory

    try:
        return load_directory(directory)
    except PolicyLoadError as exc:
        for problem in exc.problems:
            console.print(styled((str(problem), "red")), soft_wrap=True)
        fail(f"policy set in {directory} is invalid ({len(exc.problems)} problem(s)); the previous set stays in force")


@app.command()
def validate(
    directory: Annotated[Path | None, typer.Argument(help="policy directory")] = None,
    config: ConfigOpt = None,
) -> None:
    """Parse every .cedar file and validate it against the tether schema; exit 1 on any problem."""
    path, _, _ = _directory(directory, config)
    version = _load(path)
    rows = [(p.id, f"{p.file}:{p.line}", p.effect, "shadow" if p.shadow else "enforced") for p in version.policies]
    print_table(f"policy set {version.version} ({path})", ["id", "where", "effect", "mode"], rows)
    console.print(styled(("valid", "green"), f": {len(version.policies)} policies, version {version.version}"))


def _engine(directory: Path | None, config: Path | None) -> tuple[PolicyEngine, list[str]]:
    """The engine over the chosen policy set (exit 1 if it is invalid), and the admin principals."""
    from tether.policy.engine import PolicyEngine

    path, admins, mode = _directory(directory, config)
    logging.getLogger("tether.policy").setLevel(logging.ERROR)  # decisions are printed, not logged
    engine = PolicyEngine(path, mode=mode)
    if engine.current is None:
        _load(path)
    return engine, admins


def _where(engine: PolicyEngine, ids: tuple[str, ...]) -> list[str]:
    assert engine.current is not None
    places = {p.id: f"{p.id} ({p.file}:{p.line})" for p in engine.current.policies}
    return [places.get(i, i) for i in ids]


@app.command("test")
def test_cases(
    cases_file: Annotated[Path, typer.Argument(help="YAML file of cases (request + expected decision)")],
    directory: DirOpt = None,
    config: ConfigOpt = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Run each case against the policy set; exit 1 if any decision differs from the expected one."""
    import yaml

    from tether.policy.cases import CaseError, parse_cases, run_cases

    engine, admins = _engine(directory, config)
    try:
        document = yaml.safe_load(cases_file.read_text(encoding="utf-8"))
        cases = parse_cases(document, admins=admins)
    except (OSError, yaml.YAMLError, CaseError, ValueError) as exc:
        fail(f"{cases_file}: {exc}", code=2)
    results = run_cases(engine, cases)
    failed = [r for r in results if not r.passed]
    if json_out:
        print_json(
            {
                "version": engine.version,
                "passed": len(results) - len(failed),
                "failed": len(failed),
                "cases": [
                    {
                        "name": r.case.name,
                        "passed": r.passed,
                        "expect": "allow" if r.case.expect else "deny",
                        **({} if r.case.approval is None else {"expect_approval": list(r.case.approval)}),
                        **r.decision.audit(),
                    }
                    for r in results
                ],
            }
        )
    else:
        rows = [
            (
                styled(("pass", "green")) if r.passed else styled(("FAIL", "red")),
                r.case.name,
                "allow" if r.case.expect else "deny",
                _decided(r.decision) + _expected_hold(r.case.approval, r.decision),
                ", ".join(_where(engine, r.decision.determining)) or "-",
            )
            for r in results
        ]
        print_table(f"policy {engine.version}: {cases_file}", ["", "case", "expected", "decision", "determining"], rows)
    if failed:
        fail(f"{len(failed)} of {len(results)} cases failed")
    if not json_out:
        console.print(styled((f"all {len(results)} cases passed", "green")))


def _decided(decision: Decision) -> str:
    """``allow``, ``deny``, or ``allow, held for finance`` (an ``@approval`` outcome)."""
    if not decision.allowed:
        return "deny"
    return f"allow, held for {', '.join(decision.approval)}" if decision.approval else "allow"


def _expected_hold(expected: tuple[str, ...] | None, decision: Decision) -> str:
    """What a case expected of the hold, shown only when the decision differs from it."""
    if expected is None or expected == decision.approval:
        return ""
    return f" (expected {'held for ' + ', '.join(expected) if expected else 'not held'})"


def _explain_output(engine: PolicyEngine, decision: Decision) -> dict[str, Any]:
    out = decision.audit()
    out["determining"] = _where(engine, decision.determining)
    if "shadow" in out:
        out["shadow"]["determining"] = _where(engine, decision.shadow_determining)
    if decision.approval:
        out["approval"] = list(decision.approval)
        out["approval_policies"] = _where(engine, decision.approval_policies)
        out["approval_creator"] = decision.creator_may_approve
    return out


def _tool_arguments(tool: str | None, arguments: list[str] | None) -> dict[str, Any]:
    """``--tool`` and ``--argument k=v`` as a ``call`` case's ``tool`` and ``arguments`` (values are strings,
    as Cedar sees every argument: ``rules.tool_call.argument_tags``)."""
    if not arguments:
        return {} if tool is None else {"tool": tool}
    if tool is None:
        fail("--argument needs --tool (arguments belong to an MCP tool call)", code=2)
    parsed: dict[str, str] = {}
    for item in arguments:
        name, sep, value = item.partition("=")
        if not sep or not name:
            fail(f"--argument `{item[:80]}`: expected NAME=VALUE", code=2)
        if name in parsed:
            fail(f"--argument `{name[:80]}` is given twice", code=2)
        parsed[name] = value
    return {"tool": tool, "arguments": parsed}


@app.command()
def explain(
    action: Annotated[str, typer.Option(help="exchange, create_task, admin or call")],
    principal: Annotated[str, typer.Option(help="the requesting workload")],
    principal_kind: Annotated[
        str | None, typer.Option(help="spiffe, oidc or client: the kind of identity it proved (SPIFFE ID default: spiffe)")
    ] = None,
    resource: Annotated[
        str, typer.Option(help="audience (exchange), service (call) or the issuer")
    ] = "https://service.example",
    scope: Annotated[list[str] | None, typer.Option(help="requested scope (repeatable)")] = None,
    depth: Annotated[int | None, typer.Option(help="act chain length")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="a tag of the resource (repeatable)")] = None,
    method: Annotated[str, typer.Option(help="HTTP method (call)")] = "GET",
    path: Annotated[str, typer.Option(help="request path (call)")] = "/",
    operation: Annotated[str, typer.Option(help="admin operation")] = "tasks.read",
    tool: Annotated[str | None, typer.Option(help="MCP tool name (call)")] = None,
    argument: Annotated[
        list[str] | None, typer.Option(help="a tool argument NAME=VALUE (call, repeatable; needs --tool)")
    ] = None,
    risk: Annotated[int, typer.Option(help="risk score 0-100")] = 0,
    directory: DirOpt = None,
    config: ConfigOpt = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Decide one request and show the determining policies, errors, the shadow decision and any approval hold."""
    from tether.policy.cases import CaseError, build_request

    engine, admins = _engine(directory, config)
    raw: dict[str, Any] = {"action": action, "principal": principal, "resource": resource, "method": method,
                           "path": path, "operation": operation, "risk": risk, "scopes": scope or [],
                           "tags": {resource: tag or []}}  # fmt: skip
    if depth is not None:
        raw["depth"] = depth
    if principal_kind is not None:
        raw["principal_kind"] = principal_kind
    if action == "call":
        raw.update(_tool_arguments(tool, argument))
    elif tool is not None or argument:
        fail("--tool and --argument apply to --action call", code=2)
    try:
        decision = engine.authorize(build_request(raw, where="request", admins=admins))
    except (CaseError, ValueError) as exc:
        fail(str(exc), code=2)
    out = _explain_output(engine, decision)
    if json_out:
        print_json(out)
        return
    colour = "green" if decision.allowed else "red"
    console.print(
        styled("decision: ", (str(out["decision"]), colour), f" (policy set {decision.version}, mode {decision.mode})")
    )
    console.print("determining: " + (", ".join(out["determining"]) or "none (default deny)"))
    if decision.approval:
        creator = "; the task's creator may approve" if decision.creator_may_approve else ""
        policies = ", ".join(out["approval_policies"])
        line = f"{', '.join(decision.approval)} ({policies}){creator}"
        console.print(styled(("held for approval by: ", "yellow"), line), soft_wrap=True)
    for error in decision.errors:
        console.print(styled(("error:", "red"), f" {error}"))
    if "shadow" in out:
        console.print(f"shadow decision: {out['shadow']['decision']} — " + (", ".join(out["shadow"]["determining"]) or "none"))
