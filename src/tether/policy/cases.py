"""Policy test cases: a request in tether's terms and the decision it must get.

Used by ``tether policy test CASES.yaml`` (a CI gate) and ``tether policy explain``. A case
names an action, a principal, a resource and the context that matters
(``policy/starter/cases.yaml`` has examples); the rest gets neutral defaults, and the request
is built by the builders the STS and resource SDK use, so a case decides as the live request
would. A ``call`` case may name a ``tool`` and its ``arguments`` (seen by Cedar as the
resource SDK shows them: ``rules.tool_call.argument_tags``). A case may also expect the
approver groups that hold it (``approval: [finance]``; ``approval: []`` = not held), the
``@approval`` outcome of ``policy.engine.Decision``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tether.model import Task
from tether.policy.engine import Decision, PolicyEngine
from tether.policy.entities import (
    ExchangeQuestion,
    PolicyRequest,
    admin_request,
    call_request,
    create_task_request,
    exchange_request,
)
from tether.rules.principal import spiffe_trust_domain
from tether.rules.tool_call import ToolCallError, argument_tags, parse_tool_call

__all__ = ["CaseError", "CaseResult", "PolicyCase", "build_request", "parse_cases", "run_cases"]

ACTIONS = ("exchange", "create_task", "admin", "call")
_FIELDS = {
    "name", "action", "principal", "resource", "expect", "shadow", "scopes", "depth", "actors", "kind", "subject",
    "tags", "task", "method", "path", "tool", "operation", "risk", "client", "time", "key_bound", "admins", "issuer",
    "principal_kind", "agent_kind", "principal_trust_domain", "agent_trust_domain", "binding", "arguments", "approval",
}  # fmt: skip
_KINDS = ("spiffe", "oidc", "client", "federated", "unknown")
_NOON = 1_767_268_800  # 2026-01-01T12:00:00Z, a Thursday: the default decision time


class CaseError(ValueError):
    """A case file that cannot be understood (named by case index and field)."""


@dataclass(frozen=True)
class PolicyCase:
    name: str
    request: PolicyRequest
    expect: bool
    shadow: bool | None
    #: the approver groups the case expects to hold it (sorted; ``()``: not held), ``None``: not checked
    approval: tuple[str, ...] | None = None


@dataclass(frozen=True)
class CaseResult:
    case: PolicyCase
    decision: Decision

    @property
    def passed(self) -> bool:
        if self.decision.allowed != self.case.expect:
            return False
        if self.case.approval is not None and self.decision.approval != self.case.approval:
            return False
        return self.case.shadow is None or self.decision.shadow_allowed == self.case.shadow


def _strs(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CaseError(f"{where}: must be a string or a list of strings")
    return value


def _int(data: Mapping[str, Any], key: str, where: str, default: int) -> int:
    """An integer field; absent means ``default``, anything but an integer (``null`` too) is an error."""
    if key not in data:
        return default
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise CaseError(f"{where}.{key}: must be an integer")
    return value


def _decision(value: Any, where: str) -> bool:
    if value not in ("allow", "deny"):
        raise CaseError(f"{where}: must be `allow` or `deny`")
    return bool(value == "allow")


def _task(raw: Any, principal: str, resource: str, scopes: list[str], now: int, where: str) -> Task:
    data = raw if isinstance(raw, dict) else {}
    if raw is not None and not isinstance(raw, dict):
        raise CaseError(f"{where}.task: must be a mapping")
    age = _int(data, "age", f"{where}.task", 60)
    return Task(
        id=str(data.get("id", "tsk_case")),
        agent=str(data.get("agent", principal)),
        audiences=tuple(_strs(data.get("audiences", [resource]), f"{where}.task.audiences")),
        scopes=frozenset(_strs(data.get("scopes", scopes), f"{where}.task.scopes")),
        created_at=now - age,
        expires_at=now - age + _int(data, "duration", f"{where}.task", 900),
        max_depth=_int(data, "max_depth", f"{where}.task", 3),
        max_tokens=_int(data, "max_tokens", f"{where}.task", 100),
        on_behalf_of=data.get("on_behalf_of"),
        purpose=data.get("purpose"),
    )


def build_request(raw: Mapping[str, Any], *, where: str = "case", admins: Sequence[str] = ()) -> PolicyRequest:
    """Build the Cedar request a case describes (raises ``CaseError``)."""
    unknown = set(raw) - _FIELDS
    if unknown:
        raise CaseError(f"{where}: unknown field `{sorted(unknown)[0]}`")
    action = raw.get("action")
    if action not in ACTIONS:
        raise CaseError(f"{where}.action: must be one of {', '.join(ACTIONS)}")
    principal, resource = raw.get("principal"), raw.get("resource", "https://service.example")
    if not isinstance(principal, str) or not isinstance(resource, str):
        raise CaseError(f"{where}: `principal` and `resource` must be strings")
    now = _int(raw, "time", where, _NOON)
    scopes = _strs(raw.get("scopes"), f"{where}.scopes")
    actors = tuple(_strs(raw.get("actors"), f"{where}.actors"))
    tags_raw = raw.get("tags") or {}
    if not isinstance(tags_raw, dict):
        raise CaseError(f"{where}.tags: must map a resource to its tags")
    tags = {str(k): _strs(v, f"{where}.tags") for k, v in tags_raw.items()}
    admin_ids = [*admins, *_strs(raw.get("admins"), f"{where}.admins")]
    risk, client = _int(raw, "risk", where, 0), str(raw.get("client", "127.0.0.1"))
    task = _task(raw.get("task"), principal, resource, scopes, now, where)
    kind = _kind(raw, "principal_kind", where, principal)
    agent_kind = _kind(raw, "agent_kind", where, task.agent)
    domain, agent_domain = _domain(raw, "principal_trust_domain", principal), _domain(raw, "agent_trust_domain", task.agent)
    if action == "exchange":
        if "depth" in raw and not actors:
            actors = tuple(f"spiffe://case/actor{i}" for i in range(_int(raw, "depth", where, 0)))
        return exchange_request(ExchangeQuestion(
            kind=str(raw.get("kind", "delegation" if actors else "hop")), principal=principal, principal_kind=kind,
            audience=resource, task=task, scopes=scopes or sorted(task.scopes), actors=actors,
            subject=str(raw.get("subject", task.on_behalf_of or task.agent)), now=now, client=client,
            admins=admin_ids, tags=tags, risk=risk, key_bound=bool(raw.get("key_bound", True)), agent_kind=agent_kind,
            principal_domain=domain, agent_domain=agent_domain, binding=_binding(raw, where),
        ))  # fmt: skip
    if action == "create_task":
        return create_task_request(caller=principal, caller_kind=kind, task=task, now=now, client=client,
                                   admins=admin_ids, risk=risk, caller_domain=domain)  # fmt: skip
    if action == "admin":
        return admin_request(caller=principal, caller_kind=kind, issuer=str(raw.get("issuer", resource)),
                             operation=str(raw.get("operation", "tasks.read")), now=now, client=client, admins=admin_ids,
                             risk=risk, caller_domain=domain)  # fmt: skip
    tool = str(raw["tool"]) if "tool" in raw else None
    arguments, arguments_digest = _arguments(raw, tool, where)
    return call_request(
        caller=principal, service=resource, method=str(raw.get("method", "GET")), path=str(raw.get("path", "/")),
        scopes=scopes, actors=actors, subject=str(raw.get("subject", principal)), agent=task.agent, task=task.id,
        purpose=task.purpose, token_age=0, now=now, client=client, tags=tags, risk=risk,
        tool=tool, caller_kind=kind, caller_domain=domain, arguments=arguments, arguments_digest=arguments_digest,
    )  # fmt: skip


def _arguments(raw: Mapping[str, Any], tool: str | None, where: str) -> tuple[dict[str, str] | None, str]:
    """A ``call`` case's tool arguments as Cedar tags and their digest, checked as a ``tools/call``'s are."""
    if "arguments" not in raw:
        return None, ""
    if tool is None:
        raise CaseError(f"{where}.arguments: needs `tool` (arguments belong to an MCP tool call)")
    try:
        call = parse_tool_call({"name": tool, "arguments": raw["arguments"]})
    except ToolCallError as exc:
        raise CaseError(f"{where}.arguments: {exc}") from None
    return argument_tags(call.arguments), call.digest


def _groups(value: Any, where: str) -> tuple[str, ...] | None:
    """``approval:``: the approver groups expected to hold the case (a name or a list; ``[]``: not held)."""
    if value is None:
        return None
    return tuple(sorted(set(_strs(value, where))))


def _domain(raw: Mapping[str, Any], key: str, principal: str) -> str:
    """The identity source a case's principal proved (Cedar's ``trust_domain``); a SPIFFE ID's trust domain by default."""
    value = raw.get(key)
    return value if isinstance(value, str) else spiffe_trust_domain(principal) or ""


def _kind(raw: Mapping[str, Any], key: str, where: str, principal: str) -> str:
    """A case states the kind of identity a principal proved; a SPIFFE ID defaults to ``spiffe``.

    At run time the kind comes from the verified identity (carried in tokens as ``ckd``/``akd``);
    a test case has no identity, so it says so, and only a SPIFFE ID has an obvious default.
    """
    value = raw.get(key, "spiffe" if principal.startswith("spiffe://") else None)
    if value not in _KINDS:
        raise CaseError(f"{where}.{key}: must be one of {', '.join(_KINDS)} (needed for a principal that is not a SPIFFE ID)")
    return str(value)


_BINDINGS = ("dpop", "mtls", "dpop+mtls")


def _binding(raw: Mapping[str, Any], where: str) -> str:
    """How the token of an ``exchange`` case is bound (``context.binding``); DPoP unless the case says."""
    value = raw.get("binding", "dpop")
    if value not in _BINDINGS:
        raise CaseError(f"{where}.binding: must be one of {', '.join(_BINDINGS)}")
    return str(value)


def parse_cases(document: Any, *, admins: Sequence[str] = ()) -> list[PolicyCase]:
    """Cases from a parsed YAML document: a list, or a mapping with a ``cases`` list."""
    items = document.get("cases") if isinstance(document, dict) else document
    if not isinstance(items, list) or not items:
        raise CaseError("the file must hold a non-empty list of cases (or `cases:` with one)")
    cases = []
    for index, raw in enumerate(items):
        where = f"cases[{index}]"
        if not isinstance(raw, dict):
            raise CaseError(f"{where}: must be a mapping")
        name = str(raw.get("name", where))
        shadow = raw.get("shadow")
        cases.append(
            PolicyCase(
                name=name,
                request=build_request(raw, where=f"{where} ({name})", admins=admins),
                expect=_decision(raw.get("expect"), f"{where}.expect"),
                shadow=None if shadow is None else _decision(shadow, f"{where}.shadow"),
                approval=_groups(raw.get("approval"), f"{where}.approval"),
            )
        )
    return cases


def run_cases(engine: PolicyEngine, cases: Sequence[PolicyCase]) -> list[CaseResult]:
    return [CaseResult(case, engine.authorize(case.request)) for case in cases]
