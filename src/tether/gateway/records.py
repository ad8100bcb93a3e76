"""The audit records of an allowed gateway call: ``gateway.call`` before it is made, ``gateway.result`` after.

``gateway.call`` is appended before the upstream is called, and a call the store cannot
record is not made: the gateway answers 503 ``temporarily_unavailable`` and the upstream
never sees it (no decision without a durable record, SECURITY.md §4 "Audit"). It carries
everything known at that point — route, method, path, agent, task and token — which is
what the monitor's ``gateway_unusual`` detector reads.

``gateway.result`` carries what is only known afterwards: the upstream status, bytes each
way, how many echoes of the secret were scrubbed, whether and why the body was cut
(``cut``: ``size``, ``upstream``, ``deadline`` or ``client``) and the duration. It names its
``gateway.call`` record by ``seq``. It is best effort — the call has happened by then — so a
store failure is logged, not answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tether.audit.chain import AuditEvent
from tether.gateway.inflight import Slot
from tether.gateway.proxy import Forwarded
from tether.gateway.routes import GatewayRoute
from tether.resource.principal import Principal

__all__ = ["Call", "call_event", "result_event"]


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
              "decision": "allowed"}  # fmt: skip
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
