"""Whether the MCP gateway admits a ``tools/call`` or lists a tool: pure functions of what they are given.

The gateway asks them in this order for a call: route expiry, the route's allowlist, the
pinned catalogue (a tool absent from the pins is refused), the scope convention
(``tool:<name>``, RFC 6750 §3.1 ``insufficient_scope`` naming the scope), (the Cedar ``call``
policy,) rate and per-task cap, and — once the agent session's upstream has listed its
tools — drift from the pinned definition. ``tools/list`` shows only what a call would
pass these checks for (MCP security best practices: a client should not be offered a tool
it may not use). Each refusal is typed with its wire code.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from typing import Any

from mcp.shared.inbound import validate_mcp_param_headers

from tether.errors import AccessDenied, InsufficientScope, InvalidRequest, TemporarilyUnavailable, TooManyRequests
from tether.gateway.mcp_routes import McpRoute
from tether.rules.tool_call import ToolCall, json_text_argument, json_text_refusal, missing_tool_scope

__all__ = [
    "HeaderMismatch",
    "JsonTextArgument",
    "NotPinned",
    "check_allowed",
    "check_cap",
    "check_drift",
    "check_json_text",
    "check_open",
    "check_param_headers",
    "check_pinned",
    "check_rate",
    "check_scope",
    "visible",
]


class NotPinned(TemporarilyUnavailable):
    """The route has no usable pinned catalogue: it serves nothing until an operator pins it.

    Marked ``blameless``: the operator's doing, never counted toward the task's refusal burst."""

    def __init__(self, description: str, *, debug: str | None = None) -> None:
        super().__init__(description, debug=debug)
        self.audit["blameless"] = True


def check_open(route: McpRoute, today: dt.date) -> None:
    """An MCP route ends on its expiry date, like an HTTP route's bearer exception."""
    if route.expired(today):
        raise AccessDenied(f"MCP route `{route.name}` expired on {route.expires}")


def check_allowed(route: McpRoute, tool: str) -> None:
    if not route.allows(tool):
        refusal = AccessDenied(f"tool `{tool[:128]}` is not in the route's allowlist")
        refusal.audit["not_allowlisted"] = True
        raise refusal


def check_pinned(route: McpRoute, pins: Mapping[str, str], tool: str) -> str:
    """The pinned digest of ``tool``; a tool nobody reviewed is refused."""
    pinned = pins.get(tool)
    if pinned is None:
        refusal = AccessDenied(f"tool `{tool[:128]}` is not in the route's pinned catalogue")
        refusal.audit["not_pinned"] = True
        raise refusal
    return pinned


def check_scope(route: McpRoute, scopes: Collection[str], tool: str) -> None:
    """The scope convention: with a prefix, the token must hold ``<prefix><tool>``."""
    if not route.scope_prefix:
        return
    missing = missing_tool_scope(scopes, tool, route.scope_prefix)
    if missing is not None:
        raise InsufficientScope(f"the token lacks the scope `{missing}`", scope=missing)


def check_drift(route: McpRoute, tool: str, pinned: str, current: str | None) -> None:
    """The upstream's current definition of ``tool`` (its digest; None when it no longer lists
    it) must be the pinned one: a changed description or schema is refused until re-pinned."""
    if current != pinned:
        what = "no longer offered by" if current is None else "changed by"
        refusal = AccessDenied(f"tool `{tool}` was {what} the upstream since it was pinned; refused until re-pinned")
        refusal.audit.update(drift=True, blameless=True)  # the upstream changed, not the agent's doing
        raise refusal


class HeaderMismatch(InvalidRequest):
    """An ``Mcp-Param-*`` header disagrees with the argument it mirrors (MCP 2026-07-28 Streamable HTTP)."""


class JsonTextArgument(InvalidRequest):
    """An argument is a string holding a JSON object or array where the tool's schema does not
    declare a string: the upstream may decode it, so policy could not judge it (MCP-15)."""


def check_json_text(definition: Mapping[str, Any], call: ToolCall) -> None:
    """Refuse ``tether.rules.tool_call.json_text_argument``'s ambiguous arguments, judged against the
    input schema the caller's upstream listed (no schema: every such argument is refused)."""
    schema = definition.get("inputSchema")
    name = json_text_argument(call.arguments, schema if isinstance(schema, Mapping) else None)
    if name is not None:
        raise JsonTextArgument(json_text_refusal(name))


def check_param_headers(definition: Mapping[str, Any], call: ToolCall, headers: Mapping[str, str]) -> None:
    """The ``Mcp-Param-*`` headers of a call must agree with its arguments, as the tool's (pinned)
    input schema declares them (``x-mcp-header``): an intermediary may route on a header, so a
    header saying one thing while the body says another is refused (SECURITY MCP-11). The SDK
    leaves this to the gateway here, which alone knows the caller's upstream's schema."""
    schema = definition.get("inputSchema")
    if not isinstance(schema, Mapping):
        return
    rejection = validate_mcp_param_headers(schema, call.arguments, headers)
    if rejection is not None:
        raise HeaderMismatch(rejection.message)


def check_rate(route: McpRoute, this_second: int) -> None:
    """``this_second`` counts the task's calls on the route in the current second, this one included."""
    if this_second > route.max_calls_per_second:
        raise TooManyRequests("tool call rate limit exceeded", retry_after=1)


def check_cap(route: McpRoute, total: int) -> None:
    """``total`` counts every tool call of the task on the route, this one included; a hit is
    marked ``cap_hit`` (and may suspend the task, as an HTTP route's cap)."""
    if total > route.max_calls_per_task:
        refusal = TooManyRequests(f"task reached the route's cap of {route.max_calls_per_task} tool calls")
        refusal.audit["cap_hit"] = True
        raise refusal


def visible(route: McpRoute, pins: Mapping[str, str], scopes: Collection[str], tool: str, current: str) -> bool:
    """Whether ``tools/list`` may show ``tool`` (Cedar is asked separately): allowlisted,
    pinned with exactly its ``current`` digest, and granted by the scope convention."""
    if not route.allows(tool) or pins.get(tool) != current:
        return False
    return not route.scope_prefix or missing_tool_scope(scopes, tool, route.scope_prefix) is None
