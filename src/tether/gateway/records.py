"""The gateway's audit records: ``gateway.call`` before a call is made, ``gateway.result`` after, ``gateway.refused``.

``gateway.call`` carries everything known before the upstream is called (route, method, path,
agent, task, token), which is what the monitor's ``gateway_unusual`` detector reads.
``gateway.result`` names its call record by ``seq`` and adds what is known only afterwards:
status, bytes each way, scrubbed echoes of the secret, whether and why the body was cut
(``size``, ``upstream``, ``deadline`` or ``client``) and the duration. ``gateway.refused``
carries the wire error, the reason (``debug``, never on the wire) and the refusal's markers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tether.audit.chain import AuditEvent
from tether.errors import OAuthError
from tether.gateway.inflight import Slot
from tether.gateway.proxy import Forwarded
from tether.gateway.routes import GatewayRoute
from tether.resource.approvals import approval_fields
from tether.resource.principal import Principal
from tether.web.errors import wire_code

__all__ = ["Call", "call_event", "refusal_event", "result_event"]


@dataclass
class Call:
    """One admitted call, from its slot and ``gateway.call`` record to its result."""

    route: GatewayRoute
    principal: Principal
    method: str
    path: str
    started: float
    slot: Slot
    seq: int = 0


def call_event(call: Call) -> AuditEvent:
    detail = {"route": call.route.name, "method": call.method, "path": call.path[:200], "agent": call.principal.agent,
              "decision": "allowed", **approval_fields(call.principal)}  # fmt: skip
    return AuditEvent(kind="gateway.call", outcome="ok", principal=call.principal.client_id, task=call.principal.task,
                      jti=call.principal.jti, detail=detail)  # fmt: skip


def result_event(call: Call, forwarded: Forwarded, ms: float) -> AuditEvent:
    detail: dict[str, Any] = {
        "route": call.route.name,
        "method": call.method,
        "path": call.path[:200],
        "agent": call.principal.agent,
        "call": call.seq,
        "status": forwarded.status,
        "bytes_in": forwarded.bytes_in,
        "bytes_out": forwarded.bytes_out,
        "scrubbed": forwarded.scrubbed,
        "truncated": forwarded.truncated,
        "ms": round(ms, 2),
    }
    if forwarded.cut is not None:
        detail["cut"] = forwarded.cut
    return AuditEvent(kind="gateway.result", outcome="ok", principal=call.principal.client_id, task=call.principal.task,
                      jti=call.principal.jti, detail=detail)  # fmt: skip


def refusal_event(
    route: GatewayRoute, principal: Principal | None, exc: Exception, *, method: str, path: str, status: int, ms: float
) -> AuditEvent:
    """``principal`` is set only once the token was verified: only then is the refusal the task's."""
    reason = exc.debug if isinstance(exc, OAuthError) else str(exc)
    detail: dict[str, Any] = {
        "route": route.name,
        "method": method,
        "path": path[:200],
        "status": status,
        "decision": "refused",
        "reason": reason[:300],
        "ms": round(ms, 2),
    }
    if principal is not None:
        detail["agent"] = principal.agent
        detail.update(approval_fields(principal))
    if isinstance(exc, OAuthError):  # markers such as replay / cap_hit, for the monitor
        detail.update({k: v for k, v in exc.audit.items() if isinstance(v, bool | int | str)})
    return AuditEvent(kind="gateway.refused", outcome="refused", principal=principal.client_id if principal else None,
                      task=principal.task if principal else None, error=wire_code(exc), detail=detail)  # fmt: skip
