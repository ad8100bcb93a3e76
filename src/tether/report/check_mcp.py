"""MCP routes: registered and allowlisted, their tool catalogues pinned and intact, no call reaching a drifted tool.

An MCP route hands agents tools, so like a bearer exception it has an owner, a justification
and an expiry, and its ``tools`` allowlist is what bounds the agent's agency (OWASP LLM06
Excessive Agency, Agentic ASI02 Tool Misuse): ``*`` admits whatever the upstream lists. The
pinned catalogue (``tether mcp pin``) is the operator's approval of each tool's definition; a
missing pin serves nothing, a pin file whose MAC fails serves nothing and says someone wrote
the data directory, and ``mcp.drift`` records say the upstream changed an approved tool (a
rug pull, OWASP LLM03 Supply Chain / ASI04).
"""

from __future__ import annotations

from tether.report.model import AuditFacts, Evidence, Item, McpRouteFacts
from tether.report.outcome import Check, Outcome, Problem, control, fmt, iso, judge, unavailable

__all__ = ["MCP_CONTROLS"]

#: this module's controls, in report order (each registered by ``@control`` below)
MCP_CONTROLS: list[Check] = []

SOON_DAYS, NEAR_DAYS, FAR_DAYS = 7, 30, 365


def _none(what: str) -> list[Outcome]:
    return [judge([], f"no MCP routes are configured: {what}", [Item("MCP routes", "0", "tether.toml [[gateway.mcp]]")])]


def _registered(evidence: Evidence, route: McpRouteFacts, vault_names: set[str] | None) -> Outcome:
    days = (route.expires - evidence.today).days
    where = f"tether.toml [[gateway.mcp]] name = {route.name}"
    items = [
        Item("owner", route.owner, where),
        Item("justification", route.justification, where),
        Item("expires", route.expires.isoformat(), where),
        Item("days to expiry", str(days), f"expires - today ({evidence.today.isoformat()}, UTC)"),
        Item("upstream", f"{route.upstream} ({route.transport})", where),
        Item("tools allowlisted", fmt(route.tools), where),
        Item("calls per task", str(route.max_calls_per_task), where),
    ]
    renew = f"Owner {route.owner}: renew the MCP route (new expires date and justification) or retire it."
    problems = []
    if days < 0:
        problems.append(Problem("high", f"MCP route `{route.name}` expired {-days} day(s) ago: the gateway serves"
                                " none of its tools", renew, fail=True))  # fmt: skip
    elif days <= SOON_DAYS:
        problems.append(Problem("high", f"MCP route `{route.name}` (owner {route.owner}) expires in {days} day(s)", renew))
    elif days <= NEAR_DAYS:
        problems.append(Problem("medium", f"MCP route `{route.name}` (owner {route.owner}) expires in {days} days", renew))
    elif days > FAR_DAYS:
        problems.append(Problem("low", f"MCP route `{route.name}` runs for {days} more days without review",
                                f"Owner {route.owner}: set an expiry within a year so the route is reviewed."))  # fmt: skip
    if "*" in route.tools:
        problems.append(
            Problem(
                "medium",
                f"MCP route `{route.name}` allows every tool its upstream lists (`*`)",
                f"List in `tools` only the tools the agents' tasks need (OWASP LLM06 excessive agency); today's "
                f"pinned catalogue: {fmt(route.pins.tools)}.",
            )
        )
    if route.secret:
        state = "not checked: store unreadable" if vault_names is None else (
            "present" if route.secret in vault_names else "missing")  # fmt: skip
        items.append(Item("vault secret", f"{route.secret} ({state})", "store vault_list"))
        if vault_names is not None and route.secret not in vault_names:
            problems.append(Problem("medium", f"vault entry `{route.secret}` for MCP route `{route.name}` does not"
                                    " exist", f"tether vault put {route.secret}.", fail=True))  # fmt: skip
    ok = f"MCP route `{route.name}` (owner {route.owner}) is current ({days} days to expiry) and allowlists its tools"
    return judge(problems, ok, items, subject=route.name)


@control(MCP_CONTROLS, "TOOL-01", "MCP routes are owned, justified, current and allowlist their tools")
def mcp_routes(evidence: Evidence) -> list[Outcome]:
    if not evidence.mcp_routes:
        return _none("agents reach no MCP tools through the gateway")
    vault = None if evidence.store.error else {v.name for v in evidence.store.vault}
    return [_registered(evidence, route, vault) for route in evidence.mcp_routes]


def _pinned(route: McpRouteFacts) -> Outcome:
    pins = route.pins
    where = f"data_dir/mcp-pins/{route.name}.json"
    items = [Item("pin file", pins.state, where)]
    repin = f"Review the upstream's tools, then tether mcp pin {route.name}."
    problems = []
    if pins.state == "valid":
        items += [
            Item("tools pinned", fmt(pins.tools), where),
            Item("pinned", f"{iso(pins.pinned_at or 0)} by {pins.pinned_by}", where),
        ]
        unpinned = sorted(t for t in route.tools if t != "*" and t not in pins.tools)
        if unpinned:
            items.append(Item("allowlisted, not pinned", fmt(unpinned), "tether.toml tools - pinned tools"))
            problems.append(Problem("low", f"MCP route `{route.name}` allowlists tool(s) its pinned catalogue lacks"
                                    f" ({fmt(unpinned)}): they are never served", repin))  # fmt: skip
    elif pins.state == "missing":
        problems.append(Problem("medium", f"MCP route `{route.name}` has no pinned tool catalogue: it serves no tool",
                                repin, fail=True))  # fmt: skip
    elif pins.state == "refused":
        items.append(Item("problem", pins.problem, where))
        problems.append(
            Problem(
                "high",
                f"the pinned catalogue of MCP route `{route.name}` does not verify (edited, copied or made under"
                " another master key): the route serves no tool",
                f"Find out who wrote {where}; then {repin[0].lower()}{repin[1:]}",
                fail=True,
            )
        )
    else:
        items.append(Item("problem", pins.problem, where))
        problems.append(Problem("low", f"the pinned catalogue of MCP route `{route.name}` was not verified:"
                                f" {pins.problem}", "Run the report where the master key can be read."))  # fmt: skip
    ok = f"MCP route `{route.name}` serves a pinned catalogue of {len(pins.tools)} tool(s) whose MAC verifies"
    return judge(problems, ok, items, subject=route.name)


@control(MCP_CONTROLS, "TOOL-02", "MCP tool catalogues are pinned and their pin files verify")
def mcp_pins(evidence: Evidence) -> list[Outcome]:
    if not evidence.mcp_routes:
        return _none("there is no tool catalogue to pin")
    return [_pinned(route) for route in evidence.mcp_routes]


@control(MCP_CONTROLS, "TOOL-03", "No call reached an MCP tool changed since it was pinned")
def mcp_drift(evidence: Evidence) -> list[Outcome]:
    audit = evidence.store.audit
    if audit is None:
        if not evidence.mcp_routes:
            return _none("no tool can drift")
        return [unavailable("the audit log (mcp.drift records)", evidence.store.error, severity="medium")]
    return _drift(evidence, audit)


def _drift(evidence: Evidence, audit: AuditFacts) -> list[Outcome]:
    hours = audit.window_seconds // 3600
    items = [Item("mcp.drift records", str(sum(audit.mcp_drift.values())), f"audit log, last {hours} h")]
    problems = []
    for route, count in sorted(audit.mcp_drift.items()):
        tools = audit.mcp_drift_tools.get(route, ())
        items.append(Item(f"route {route}", f"{count} call(s) reached changed tool(s) {fmt(tools)}", "audit log"))
        problems.append(
            Problem(
                "high",
                f"the upstream of MCP route `{route}` changed {fmt(tools)} since the catalogue was pinned"
                f" ({count} call(s) refused in the last {hours} h)",
                f"Review what changed (tether mcp tools {route}); re-pin only if the change is approved, else"
                " remove the upstream (OWASP LLM03 supply chain).",
            )
        )
    if not evidence.mcp_routes and not problems:
        return _none("no tool can drift")
    return [judge(problems, f"no call reached a drifted MCP tool in the last {hours} h", items)]
