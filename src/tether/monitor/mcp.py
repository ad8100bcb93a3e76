"""The MCP detectors: unusual tool use per agent and route, and calls that hit a drifted tool (pure).

``mcp_unusual`` reads the gateway's ``mcp.call`` records (detail: ``route``, ``tool``,
``arguments_digest``, ``argument_shape`` = the sorted ``name:type`` list of the top-level
arguments). Once an agent has ``learn`` calls on a route, a call of a tool it never called
there is a finding (OWASP LLM06 excessive agency / Agentic "tool misuse": an agent steered by
injected content reaching for a tool its task never needed); once it has called a tool
``shape_learn`` times, a call with an argument shape never seen for that tool is one too (a
parameter its normal use never sets, such as an ``also`` or an ``overwrite``). Shapes, not
values, are compared: the values are the agent's data and are not in the audit record.

``mcp_drift`` reads ``mcp.drift``, which the gateway writes when a call reaches a tool whose
current definition no longer matches the pinned catalogue (``tether.mcp.pins``): the
upstream changed a tool after it was approved, a "rug pull" (OWASP LLM03 supply chain). The
gateway has already refused the call; every such record is an alert, one per route and
minute, since the operator must re-pin or remove the upstream.

State is bounded as in ``tether.monitor.detectors``: an LRU of ``MAX_AGENTS`` (agent, route)
pairs, ``_MAX_SET`` tools per pair and shapes per tool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tether.lru import LruCache
from tether.monitor.base import DEDUPE_SECONDS, MAX_AGENTS, DetectorBase, agent_of
from tether.monitor.events import Event, Finding
from tether.monitor.settings import DetectorSettings

__all__ = ["McpDrift", "McpUnusual", "argument_shape"]

_MAX_SET = 256
_MAX_SHAPE = 300


def argument_shape(value: object) -> str | None:
    """The record's ``argument_shape`` as one comparable string (``a:string,b:number``), or None."""
    if not isinstance(value, Sequence) or isinstance(value, str):
        return None
    parts = [v for v in value if isinstance(v, str)]
    if len(parts) != len(value):
        return None
    return ",".join(sorted(parts))[:_MAX_SHAPE]


@dataclass
class _Tool:
    count: int = 0
    shapes: set[str] = field(default_factory=set)


@dataclass
class _Route:
    count: int = 0
    tools: dict[str, _Tool] = field(default_factory=dict)


class McpUnusual(DetectorBase):
    """A tool the agent never called on the route, or an argument shape never seen for the tool."""

    def __init__(self, settings: DetectorSettings) -> None:
        super().__init__(settings)
        self.learn = settings.param("learn")
        self.shape_learn = settings.param("shape_learn")
        self.routes: LruCache[tuple[str, str], _Route] = LruCache(MAX_AGENTS)

    def observe(self, event: Event) -> list[Finding]:
        agent, route, tool = agent_of(event), event.text("route"), event.text("tool")
        if event.kind != "mcp.call" or agent is None or route is None or tool is None:
            return []
        tool = tool[:200]
        shape = argument_shape(event.detail.get("argument_shape"))
        state = self.routes.setdefault((agent, route), _Route)
        known = state.tools.get(tool)
        unusual: list[str] = []
        if state.count >= self.learn and known is None:
            unusual.append(f"first call of tool `{tool}`")
        elif known is not None and shape is not None and known.count >= self.shape_learn and shape not in known.shapes:
            unusual.append(f"tool `{tool}` called with arguments ({shape or 'none'}) never seen in {known.count} calls")
        out: list[Finding] = []
        if unusual:
            out.append(
                self._finding(
                    event,
                    agent=agent,
                    every=DEDUPE_SECONDS,
                    reason=f"MCP route `{route}`: {unusual[0]}; the agent's history there is {state.count} calls",
                    route=route,
                    tool=tool,
                    argument_shape=shape,
                    arguments_digest=event.text("arguments_digest"),
                    known_tools=sorted(state.tools)[:20],
                    known_shapes=sorted(known.shapes)[:20] if known else [],
                    history=state.count,
                    seqs=[event.seq],
                )
            )
        if known is None and len(state.tools) < _MAX_SET:
            known = state.tools[tool] = _Tool()
        if known is not None:
            if shape is not None and len(known.shapes) < _MAX_SET:
                known.shapes.add(shape)
            known.count += 1
        state.count += 1
        return out


class McpDrift(DetectorBase):
    """Every ``mcp.drift`` record: a call reached a tool that changed since its catalogue was pinned."""

    def observe(self, event: Event) -> list[Finding]:
        route = event.text("route")
        if event.kind != "mcp.drift" or route is None:
            return []
        tool = event.text("tool")
        pinned, current = event.text("pinned_digest"), event.text("current_digest")
        if tool and pinned and current is None:
            what = f"tool `{tool[:200]}` is gone upstream"
        else:
            what = f"tool `{tool[:200]}` differs from" if tool else "the catalogue differs from"
            what += " the pinned catalogue"
        return [
            self._finding(
                event,
                agent=agent_of(event),
                every=DEDUPE_SECONDS,
                subject=f"mcp-route:{route}",
                reason=f"MCP route `{route}`: {what} (review it, then re-pin or remove the upstream)",
                route=route,
                tool=tool,
                pinned_digest=pinned,
                current_digest=current,
                seqs=[event.seq],
            )
        ]
