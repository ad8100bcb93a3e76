"""The MCP gateway's audit records: ``mcp.call``, ``mcp.result``, ``mcp.refused`` and ``mcp.drift``.

``mcp.call`` is written before the upstream is asked (an upstream call the store cannot
record is not made) and names the route, the tool, the RFC 8785 digest of the arguments and
their *shape* (sorted ``name:type`` of the top-level arguments) — never argument values: they
may carry data the agent read, and the digest already lets an investigator match a call to
arguments produced elsewhere. ``mcp.result`` names its ``mcp.call`` by ``seq``. ``mcp.refused``
carries the wire error and the reason (``debug``, never on the wire). ``mcp.drift`` is an
alert (outcome ``alert``): the upstream now describes a pinned tool differently than when it
was reviewed (MCP security best practices, "tool poisoning" / rug pull).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tether.audit.chain import AuditEvent
from tether.errors import OAuthError
from tether.gateway.mcp_routes import McpRoute
from tether.resource.approvals import approval_fields
from tether.resource.principal import Principal
from tether.rules.tool_call import ToolCall
from tether.web.errors import wire_code

__all__ = ["McpCall", "argument_shape", "call_event", "drift_event", "refusal_event", "result_event"]


@dataclass
class McpCall:
    """One admitted ``tools/call``, from its ``mcp.call`` record to its ``mcp.result``."""

    route: McpRoute
    principal: Principal
    call: ToolCall
    started: float
    seq: int = 0


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    return "object"


def argument_shape(arguments: Mapping[str, Any]) -> list[str]:
    """Sorted ``name:type`` (JSON types) of the top-level arguments: what was passed, not its value."""
    return sorted(f"{name[:64]}:{_json_type(value)}" for name, value in arguments.items())


def _base(route: McpRoute, principal: Principal, tool: str) -> dict[str, Any]:
    """With the approval the token was issued under and its ``tctx`` (APR-01), never argument values."""
    return {"route": route.name, "tool": tool, "agent": principal.agent, **approval_fields(principal)}


def call_event(call: McpCall) -> AuditEvent:
    detail = _base(call.route, call.principal, call.call.name)
    detail.update(arguments_digest=call.call.digest, argument_shape=argument_shape(call.call.arguments),
                  decision="allowed")  # fmt: skip
    return AuditEvent(kind="mcp.call", outcome="ok", principal=call.principal.client_id, task=call.principal.task,
                      jti=call.principal.jti, detail=detail)  # fmt: skip


def result_event(call: McpCall, *, outcome: str, ms: float, size: int, scrubbed: int, error: str | None = None) -> AuditEvent:
    """``outcome`` is ``ok`` or ``error`` (the tool reported an error, the upstream failed, the result was refused)."""
    detail = _base(call.route, call.principal, call.call.name)
    detail.update(call=call.seq, result=outcome, bytes=size, scrubbed=scrubbed, ms=round(ms, 2))
    if error is not None:
        detail["reason"] = error[:300]
    return AuditEvent(kind="mcp.result", outcome="ok" if outcome == "ok" else "error", principal=call.principal.client_id,
                      task=call.principal.task, jti=call.principal.jti, detail=detail)  # fmt: skip


def refusal_event(
    route: McpRoute, principal: Principal | None, exc: Exception, *, method: str, tool: str | None, digest: str | None,
    status: int | None, ms: float,
) -> AuditEvent:  # fmt: skip
    """``principal`` is set only once the token was verified: only then is the refusal the task's.

    ``method`` is the HTTP method for a refusal before MCP is spoken (token, route), else the
    JSON-RPC method (``tools/call``); ``status`` is the HTTP status of the former."""
    reason = exc.debug if isinstance(exc, OAuthError) else str(exc)
    detail: dict[str, Any] = {"route": route.name, "method": method, "decision": "refused", "reason": reason[:300],
                              "ms": round(ms, 2)}  # fmt: skip
    if tool is not None:
        detail["tool"] = tool[:128]
    if digest is not None:
        detail["arguments_digest"] = digest
    if status is not None:
        detail["status"] = status
    if principal is not None:
        detail["agent"] = principal.agent
        detail.update(approval_fields(principal))
    if isinstance(exc, OAuthError):  # markers such as replay / cap_hit / drift, for the monitor
        detail.update({k: v for k, v in exc.audit.items() if isinstance(v, bool | int | str)})
    return AuditEvent(kind="mcp.refused", outcome="refused", principal=principal.client_id if principal else None,
                      task=principal.task if principal else None, error=wire_code(exc), detail=detail)  # fmt: skip


def drift_event(route: McpRoute, principal: Principal, tool: str, *, pinned: str | None, current: str | None) -> AuditEvent:
    """The alert that a pinned tool's definition changed upstream (``current`` None: it is gone)."""
    detail: dict[str, Any] = {
        "route": route.name,
        "tool": tool,
        "pinned_digest": pinned,
        "current_digest": current,
        "agent": principal.agent,
        "reason": f"MCP route `{route.name}`: tool `{tool}` " + ("vanished" if current is None else "changed")
        + " upstream since it was pinned; calls to it are refused until it is re-pinned",
    }  # fmt: skip
    return AuditEvent(kind="mcp.drift", outcome="alert", principal=principal.client_id, task=principal.task, detail=detail)
