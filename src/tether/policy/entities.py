"""Cedar requests and entities built from tether's records — pure, so every decision is reproducible.

Each builder returns a ``PolicyRequest``: the Cedar request (principal, action,
resource, context) and the entities it refers to, following ``tether.cedarschema``.
Entity ids are tether's own strings (SPIFFE IDs, URIs) passed in Cedar's JSON form,
so no id ever needs escaping into policy syntax.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Collection, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tether.model import Task

__all__ = [
    "NS",
    "ExchangeQuestion",
    "PolicyRequest",
    "admin_request",
    "call_request",
    "create_task_request",
    "exchange_request",
    "workload_entity",
]

NS = "Tether"
ADMINS = {"type": f"{NS}::Group", "id": "admins"}


@dataclass(frozen=True)
class PolicyRequest:
    principal: dict[str, str]
    action: str
    resource: dict[str, str]
    context: dict[str, Any]
    entities: list[dict[str, Any]] = field(default_factory=list)

    def cedar(self) -> dict[str, Any]:
        return {
            "principal": self.principal,
            "action": {"type": f"{NS}::Action", "id": self.action},
            "resource": self.resource,
            "context": self.context,
        }

    def describe(self) -> dict[str, Any]:
        return {"principal": self.principal["id"], "action": self.action, "resource": self.resource["id"]}


def _uid(kind: str, value: str) -> dict[str, str]:
    return {"type": f"{NS}::{kind}", "id": value}


@functools.lru_cache(maxsize=1024)
def _ip_text(address: str | None) -> str:
    """The canonical text of a client address (``0.0.0.0`` when unknown); clients repeat, parsing is slow."""
    try:
        return str(ipaddress.ip_address(address or "0.0.0.0"))  # noqa: S104 - "unknown", never bound
    except ValueError:
        return "0.0.0.0"  # noqa: S104


def _ip(address: str | None) -> dict[str, Any]:
    return {"__extn": {"fn": "ip", "arg": _ip_text(address if address is None or len(address) <= 64 else "")}}


def _common(*, now: float, client: str | None, risk: int, key_bound: bool) -> dict[str, Any]:
    seconds = int(now)
    return {
        "client": _ip(client),
        "hour": (seconds // 3600) % 24,
        "weekday": (seconds // 86400 + 3) % 7,
        "risk": max(0, min(100, risk)),
        "key_bound": key_bound,
    }


def workload_entity(principal: str, *, kind: str, domain: str, admins: Collection[str]) -> dict[str, Any]:
    """A workload as its identity proved it: ``kind`` and ``trust_domain`` come from the verified
    identity (carried in tokens as ``ckd``/``ctd``, ``akd``/``atd``), never from the shape of its name."""
    return {
        "uid": _uid("Workload", principal),
        "attrs": {"kind": kind, "trust_domain": domain},
        "parents": [ADMINS] if principal in admins else [],
    }


def service_entity(uri: str, tags: Mapping[str, Collection[str]]) -> dict[str, Any]:
    return {"uid": _uid("Service", uri), "attrs": {"uri": uri, "tags": sorted(tags.get(uri, ()))}, "parents": []}


def task_entity(
    task: Task, *, admins: Collection[str], agent_kind: str, agent_domain: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The task entity and the entities it refers to (its agent, as its identity proved it; its subject)."""
    agent = workload_entity(task.agent, kind=agent_kind, domain=agent_domain, admins=admins)
    users = [{"uid": _uid("User", task.on_behalf_of), "attrs": {}, "parents": []}] if task.on_behalf_of else []
    entity = {
        "uid": _uid("Task", task.id),
        "attrs": {
            "agent": {"__entity": agent["uid"]},
            "purpose": task.purpose or "",
            "audiences": list(task.audiences),
            "scopes": sorted(task.scopes),
            "max_depth": task.max_depth,
            "max_tokens": task.max_tokens,
            "duration": task.expires_at - task.created_at,
            "on_behalf_of": [{"__entity": u["uid"]} for u in users],
        },
        "parents": [],
    }
    return entity, [agent, *users]


def _dedupe(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for entity in entities:
        uid = entity["uid"]
        seen.setdefault((uid["type"], uid["id"]), entity)
    return list(seen.values())


@dataclass(frozen=True)
class ExchangeQuestion:
    """Everything an ``exchange`` decision reads: may ``principal`` get a token for ``audience``
    with these scopes and chain?

    ``principal_kind`` and ``agent_kind`` are the kinds of identity those principals proved
    (``tether.model.IdentityKind``), carried in tokens as ``ckd``/``akd``, never guessed.
    """

    kind: str
    principal: str
    principal_kind: str
    audience: str
    task: Task
    scopes: Collection[str]
    actors: tuple[str, ...]
    subject: str
    now: float
    client: str | None
    admins: Collection[str]
    tags: Mapping[str, Collection[str]]
    risk: int = 0
    key_bound: bool = True
    agent_kind: str = "unknown"
    principal_domain: str = ""
    agent_domain: str = ""
    #: how the new token is bound (RFC 9449 ``jkt``, RFC 8705 ``x5t#S256``): "dpop", "mtls" or "dpop+mtls"
    binding: str = "dpop"
    #: the issuer of the federation peer the task's chain came from (a linked task); "" for a local task
    foreign_issuer: str = ""

    def key(self) -> Hashable:
        """Everything ``exchange_request`` reads, as a hashable key.

        Equal keys build equal requests (a property test holds the two together), so a
        decision can be looked up before the entities are built: the STS asks the same
        question for every hop of a task, and building and hashing the entities cost more
        than the cached Cedar decision. Time enters only as whole seconds, as in the request.
        """
        return (
            *(self.kind, self.principal, self.principal_kind, self.audience, self.task),
            *(frozenset(self.scopes), tuple(self.actors), self.subject, int(self.now), self.client),
            *(frozenset(self.admins), tuple(sorted(self.tags.get(self.audience, ()))), self.risk, self.key_bound),
            *(self.agent_kind, self.principal_domain, self.agent_domain, self.binding, self.foreign_issuer),
        )


def exchange_request(q: ExchangeQuestion) -> PolicyRequest:
    """The Cedar ``exchange`` request for ``q``."""
    task = q.task
    task_ent, refs = task_entity(task, admins=q.admins, agent_kind=q.agent_kind, agent_domain=q.agent_domain)
    who = workload_entity(q.principal, kind=q.principal_kind, domain=q.principal_domain, admins=q.admins)
    context = _common(now=q.now, client=q.client, risk=q.risk, key_bound=q.key_bound) | {
        "kind": q.kind,
        "scopes": sorted(q.scopes),
        "depth": len(q.actors),
        "actor": q.actors[0] if q.actors else "",
        "actors": list(q.actors),
        "subject": q.subject,
        "agent": task.agent,
        "task": {"__entity": task_ent["uid"]},
        "task_age": max(0, int(q.now) - task.created_at),
        "purpose": task.purpose or "",
        "binding": q.binding,
        "foreign_issuer": q.foreign_issuer,
    }
    return PolicyRequest(
        principal=who["uid"],
        action="exchange",
        resource=_uid("Service", q.audience),
        context=context,
        entities=_dedupe([who, service_entity(q.audience, q.tags), task_ent, *refs]),
    )


def create_task_request(
    *,
    caller: str,
    caller_kind: str,
    task: Task,
    now: float,
    client: str | None,
    admins: Collection[str],
    risk: int = 0,
    caller_domain: str = "",
    agent_kind: str = "unknown",
    agent_domain: str = "",
) -> PolicyRequest:
    """``create_task``: the agent has proved nothing yet; its kind and trust domain are those of the
    identity source whose namespace holds its name (``rules.namespace``), ``unknown`` if none does."""
    task_ent, refs = task_entity(task, admins=admins, agent_kind=agent_kind, agent_domain=agent_domain)
    who = workload_entity(caller, kind=caller_kind, domain=caller_domain, admins=admins)
    return PolicyRequest(
        principal=who["uid"],
        action="create_task",
        resource=task_ent["uid"],
        context=_common(now=now, client=client, risk=risk, key_bound=True),
        entities=_dedupe([who, task_ent, *refs]),
    )


def admin_request(
    *,
    caller: str,
    caller_kind: str,
    issuer: str,
    operation: str,
    now: float,
    client: str | None,
    admins: Collection[str],
    risk: int = 0,
    key_bound: bool = True,
    caller_domain: str = "",
) -> PolicyRequest:
    who = workload_entity(caller, kind=caller_kind, domain=caller_domain, admins=admins)
    return PolicyRequest(
        principal=who["uid"],
        action="admin",
        resource=_uid("Service", issuer),
        context=_common(now=now, client=client, risk=risk, key_bound=key_bound) | {"operation": operation},
        entities=_dedupe([who, service_entity(issuer, {})]),
    )


def call_request(
    *,
    caller: str,
    service: str,
    method: str,
    path: str,
    scopes: Collection[str],
    actors: tuple[str, ...],
    subject: str,
    agent: str,
    task: str | None,
    purpose: str | None,
    token_age: int,
    now: float,
    client: str | None,
    tags: Mapping[str, Collection[str]],
    risk: int = 0,
    tool: str | None = None,
    caller_kind: str = "unknown",
    caller_domain: str = "",
    arguments: Mapping[str, str] | None = None,
    arguments_digest: str = "",
) -> PolicyRequest:
    """``call``: may the caller (current actor, else the agent) use this route of ``service``?

    For an MCP ``tools/call``, ``tool`` is the tool's name and ``arguments`` its Cedar tags
    (``tether.rules.tool_call.argument_tags``) with ``arguments_digest`` naming them; the
    Arguments entity's id is that digest, so two calls with different arguments never share
    a cached decision."""
    who = workload_entity(caller, kind=caller_kind, domain=caller_domain, admins=())
    svc = service_entity(service, tags)
    route_tool = tool if tool is not None else path.rstrip("/").rsplit("/", 1)[-1]
    route_uid = _uid("Route", f"{method} {path}")
    route: dict[str, Any] = {
        "uid": route_uid,
        "attrs": {"method": method, "path": path, "tool": route_tool},
        "parents": [svc["uid"]],
    }
    args_uid = _uid("Arguments", arguments_digest)
    args: dict[str, Any] = {"uid": args_uid, "attrs": {}, "parents": [], "tags": dict(arguments or {})}
    context = _common(now=now, client=client, risk=risk, key_bound=True) | {
        "method": method,
        "path": path,
        "tool": route_tool,
        "arguments": {"__entity": args_uid},
        "arguments_digest": arguments_digest,
        "scopes": sorted(scopes),
        "depth": len(actors),
        "actor": actors[0] if actors else "",
        "subject": subject,
        "agent": agent,
        "task": task or "",
        "purpose": purpose or "",
        "token_age": max(0, token_age),
    }
    return PolicyRequest(
        principal=who["uid"], action="call", resource=route_uid, context=context, entities=_dedupe([who, svc, route, args])
    )
