"""What an MCP server says its tools are, reduced to digests, and how that moved since it was pinned — pure.

A "rug pull" is an MCP server that changes a tool after it was approved: same name, new
description (the text the model reads, where instructions can be injected) or new input
schema (arguments it did not take before). The MCP specification warns that tool
descriptions and annotations are untrusted unless they come from a trusted server
(MCP 2025-06-18 "Tools" §Security Considerations; OWASP LLM03 supply chain). tether pins
a digest of every security-relevant part of each tool definition when the operator approves
the catalogue, and a tool whose current definition digests differently is not the tool that
was approved.

The digest is SHA-256 (base64url, as ``tether.rules.tool_call.digest``) over the RFC 8785
canonical JSON of ``{name, title, description, inputSchema, outputSchema, annotations}`` as
the server lists it (absent keys omitted, so a server that adds a key changes the digest).
``icons`` and ``_meta`` are left out: they are presentation and transport detail that a
server may legitimately vary, and the model does not act on them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tether.rules.tool_call import canonical_json, digest

__all__ = ["DIGESTED_KEYS", "Drift", "drift", "pinned_view", "tool_digest"]

#: the parts of an MCP ``Tool`` definition that decide what a model is told and what it may send
DIGESTED_KEYS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
#: never equal to a real digest (base64url has no ``!``): a definition that cannot be digested drifts
_UNDIGESTIBLE = "!undigestible"


def pinned_view(tool: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a tool definition its pin covers: all the gateway passes on to an agent, so a
    change in anything else (``_meta``, ``icons``, ``execution``) cannot reach it unseen."""
    return {key: tool[key] for key in DIGESTED_KEYS if key in tool}


def tool_digest(tool: Mapping[str, Any]) -> str:
    """The digest of one tool definition (the JSON a ``tools/list`` result carries for it).

    Raises ``ValueError`` (``ToolCallError``) if the definition is not JSON or nests deeper than
    the canonicalizer allows."""
    return digest(canonical_json(pinned_view(tool)))


def _digest_or_sentinel(tool: Mapping[str, Any]) -> str:
    try:
        return tool_digest(tool)
    except ValueError:
        return _UNDIGESTIBLE


@dataclass(frozen=True)
class Drift:
    """How a server's current tools differ from the pinned catalogue (each tuple sorted)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


def drift(pinned: Mapping[str, str], current: Sequence[Mapping[str, Any]]) -> Drift:
    """Compare pinned ``name -> digest`` with the current tool definitions.

    A name listed twice by the server counts as changed (if pinned) or added: which of the two
    definitions a client would get is the server's choice, so neither is the approved one. A
    definition that cannot be digested never matches its pin. Entries without a string name are
    not tools a client could call and are ignored."""
    seen: dict[str, str] = {}
    doubled: set[str] = set()
    for tool in current:
        name = tool.get("name")
        if not isinstance(name, str):
            continue
        if name in seen:
            doubled.add(name)
        seen[name] = _digest_or_sentinel(tool)
    added = sorted(name for name in seen if name not in pinned)
    removed = sorted(name for name in pinned if name not in seen)
    changed = sorted(name for name in seen if name in pinned and (name in doubled or seen[name] != pinned[name]))
    return Drift(added=tuple(added), removed=tuple(removed), changed=tuple(changed))
