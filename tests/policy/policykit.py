"""Shared pieces for the policy unit and engine tests: directories, policy texts, requests.

Everything is real: the starter set is installed by the same function ``tether init``
uses, policies are parsed and validated by cedarpy against ``tether.cedarschema``, and
requests come from the builders the STS and the resource SDK call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tether.model import Task
from tether.policy.entities import (
    ExchangeQuestion,
    PolicyRequest,
    admin_request,
    call_request,
    create_task_request,
    exchange_request,
)
from tether.provision import install_starter_policies
from tether.rules.principal import spiffe_trust_domain

__all__ = [
    "ADMIN",
    "AGENT",
    "NOON",
    "PAY",
    "STARTER_IDS",
    "SVC_B",
    "SVC_C",
    "WIKI",
    "admin",
    "call",
    "create",
    "exchange",
    "starter_dir",
    "task",
    "write",
]

ADMIN = "spiffe://tether.local/admin"
AGENT = "spiffe://tether.local/agent/research"
SVC_B = "spiffe://tether.local/svc/b"
SVC_C = "spiffe://tether.local/svc/c"
WIKI = "https://wiki.example"
PAY = "https://pay.example"
NOON = 1_767_268_800  # 2026-01-01T12:00:00Z, a Thursday

STARTER_IDS = {
    "exchange-key-bound": ("00-defaults.cedar", "permit", False),
    "admins-create-tasks": ("00-defaults.cedar", "permit", False),
    "admins-administer": ("00-defaults.cedar", "permit", False),
    "call-key-bound": ("00-defaults.cedar", "permit", False),
    "max-delegation-depth": ("00-defaults.cedar", "forbid", False),
    "deny-high-risk": ("00-defaults.cedar", "forbid", False),
    "no-admin-agents": ("00-defaults.cedar", "forbid", False),
    "research-agent-wiki-read-only": ("10-examples.cedar", "forbid", False),
    "payments-max-depth-2": ("10-examples.cedar", "forbid", False),
    "payments-office-hours": ("10-examples.cedar", "forbid", True),
}


def starter_dir(tmp_path: Path, name: str = "policies") -> Path:
    """The starter set, installed the way ``tether init`` installs it."""
    directory = tmp_path / name
    install_starter_policies(directory)
    return directory


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def task(**fields: Any) -> Task:
    values: dict[str, Any] = {
        "id": "tsk_test",
        "agent": AGENT,
        "audiences": (WIKI, PAY),
        "scopes": frozenset({"wiki:read", "wiki:write"}),
        "created_at": NOON - 60,
        "expires_at": NOON + 840,
        "max_depth": 3,
        "max_tokens": 100,
        "on_behalf_of": None,
        "purpose": "summarise the design doc",
    }
    values.update(fields)
    return Task(**values)


def exchange(
    *,
    kind: str = "hop",
    principal: str = AGENT,
    audience: str = WIKI,
    actors: tuple[str, ...] = (),
    scopes: tuple[str, ...] = ("wiki:read",),
    tags: dict[str, list[str]] | None = None,
    risk: int = 0,
    key_bound: bool = True,
    now: float = NOON,
    client: str | None = "127.0.0.1",
    the_task: Task | None = None,
    binding: str = "dpop",
) -> PolicyRequest:
    the_task = the_task or task()
    return exchange_request(
        ExchangeQuestion(
            kind=kind,
            principal=principal,
            principal_kind="spiffe",
            audience=audience,
            task=the_task,
            scopes=scopes,
            actors=actors,
            subject=the_task.on_behalf_of or the_task.agent,
            now=now,
            client=client,
            admins=[ADMIN],
            tags=tags or {},
            risk=risk,
            key_bound=key_bound,
            binding=binding,
        )
    )


def create(*, caller: str = ADMIN, the_task: Task | None = None, risk: int = 0) -> PolicyRequest:
    """As the STS builds it: the agent's kind and trust domain from the source that owns its name."""
    the_task = the_task or task()
    return create_task_request(
        caller=caller,
        caller_kind="spiffe",
        caller_domain="tether.local",
        task=the_task,
        now=NOON,
        client="127.0.0.1",
        admins=[ADMIN],
        risk=risk,
        agent_kind="spiffe",
        agent_domain=spiffe_trust_domain(the_task.agent) or "",
    )


def admin(*, caller: str = ADMIN, operation: str = "tasks.read", risk: int = 0) -> PolicyRequest:
    return admin_request(
        caller=caller,
        caller_kind="spiffe",
        issuer="http://127.0.0.1:8443",
        operation=operation,
        now=NOON,
        client="127.0.0.1",
        admins=[ADMIN],
        risk=risk,
    )


def call(
    *,
    caller: str = AGENT,
    service: str = WIKI,
    method: str = "GET",
    path: str = "/pages/design",
    actors: tuple[str, ...] = (),
    scopes: tuple[str, ...] = ("wiki:read",),
    tags: dict[str, list[str]] | None = None,
    tool: str | None = None,
) -> PolicyRequest:
    return call_request(
        caller=caller,
        service=service,
        method=method,
        path=path,
        scopes=scopes,
        actors=actors,
        subject=AGENT,
        agent=AGENT,
        task="tsk_test",
        purpose="summarise the design doc",
        token_age=5,
        now=NOON,
        client="127.0.0.1",
        tags=tags or {},
        tool=tool,
    )
