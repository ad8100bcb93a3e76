"""Task use cases: create, read, list, complete or cancel.

Only an admin token creates and lists tasks. A task's own session token (``txn`` is the task,
audience the issuer) may read and end that task, so an agent can close what it was given.
Ending a task revokes every token bound to it in the same write.
"""

from __future__ import annotations

import secrets
from typing import Any

from tether.audit.chain import AuditEvent
from tether.errors import AccessDenied, InsufficientScope, InvalidRequest, NotFoundError
from tether.metrics import REVOCATIONS
from tether.model import AccessToken, Task, TaskState
from tether.policy.entities import create_task_request
from tether.rules.namespace import source_of
from tether.rules.task import TaskRequest, build_task, check_transition
from tether.store.errors import Blocked, NotFound, TaskNotActive
from tether.sts.auth import is_admin, require_admin
from tether.sts.context import StsContext

__all__ = ["create_task", "end_task", "get_task", "list_tasks", "move_task", "parse_task_request"]

_FIELDS = {"agent", "audiences", "scopes", "purpose", "on_behalf_of", "max_duration", "max_depth", "max_tokens"}


def _optional_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"`{name}` must be an integer")
    return value


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"`{name}` must be a string")
    return value


def _str_list(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"`{name}` must be a list of strings")
    return value


def parse_task_request(body: dict[str, Any]) -> TaskRequest:
    unknown = set(body) - _FIELDS
    if unknown:
        raise InvalidRequest(f"unknown field `{sorted(unknown)[0]}`")
    agent = _optional_str(body, "agent")
    if agent is None:
        raise InvalidRequest("`agent` is required")
    return TaskRequest(
        agent=agent,
        audiences=_str_list(body, "audiences"),
        scopes=_str_list(body, "scopes"),
        purpose=_optional_str(body, "purpose"),
        on_behalf_of=_optional_str(body, "on_behalf_of"),
        max_duration=_optional_int(body, "max_duration"),
        max_depth=_optional_int(body, "max_depth"),
        max_tokens=_optional_int(body, "max_tokens"),
    )


async def create_task(ctx: StsContext, caller: AccessToken, request: TaskRequest, *, client: str | None = None) -> Task:
    require_admin(ctx, caller)
    now = int(ctx.now())
    task = build_task(
        request,
        task_id="tsk_" + secrets.token_urlsafe(16),
        issuer=ctx.settings.issuer,
        limits=ctx.settings.task_limits,
        now=now,
        created_by=caller.sub,
    )
    agent = source_of(task.agent, ctx.settings.namespaces)  # the source that owns the agent's name
    decision = ctx.authorize(
        create_task_request(
            caller=caller.sub,
            caller_kind=caller.client_kind,
            caller_domain=caller.client_domain,
            task=task,
            now=now,
            client=client,
            admins=ctx.settings.admin_principals,
            risk=ctx.risk(caller.sub),
            agent_kind=agent.kind if agent is not None else "unknown",
            agent_domain=agent.trust_domain if agent is not None else "",
        )
    )
    event = AuditEvent(
        kind="task.created",
        outcome="ok",
        principal=caller.sub,
        task=task.id,
        detail={
            "agent": task.agent,
            "on_behalf_of": task.on_behalf_of,
            "audiences": list(task.audiences),
            "scopes": sorted(task.scopes),
            "expires_at": task.expires_at,
            "max_depth": task.max_depth,
            "max_tokens": task.max_tokens,
            "policy": decision.audit(),
        },
    )
    try:
        await ctx.store.create_task(task, event)
    except Blocked as exc:
        raise AccessDenied("principal is blocked") from exc
    return task


async def _visible(ctx: StsContext, caller: AccessToken, task_id: str, *, operation: str, client: str | None) -> Task:
    """The caller's own task (its session token), or any task for an admin the policy allows."""
    task = await ctx.store.get_task(task_id)
    if task is None or not (is_admin(ctx, caller) or caller.txn == task.id):
        raise NotFoundError("task not found")
    if caller.txn != task.id:
        require_admin(ctx, caller, operation=operation, client=client)
    return task


async def get_task(ctx: StsContext, caller: AccessToken, task_id: str, *, client: str | None = None) -> Task:
    return await _visible(ctx, caller, task_id, operation="tasks.read", client=client)


async def list_tasks(
    ctx: StsContext, caller: AccessToken, *, state: str | None, agent: str | None, limit: int, client: str | None = None
) -> list[Task]:
    require_admin(ctx, caller, operation="tasks.read", client=client)
    try:
        wanted = TaskState(state) if state else None
    except ValueError as exc:
        raise InvalidRequest(f"`state` must be one of {', '.join(s.value for s in TaskState)}") from exc
    return await ctx.store.list_tasks(state=wanted, agent=agent, now=ctx.now(), limit=limit)


async def end_task(ctx: StsContext, caller: AccessToken, task_id: str, target: TaskState, *, client: str | None = None) -> Task:
    task = await _visible(ctx, caller, task_id, operation="tasks.end", client=client)
    if target is TaskState.SUSPENDED and not is_admin(ctx, caller):
        raise InsufficientScope("only an admin can suspend a task")
    return await move_task(ctx, task, target, principal=caller.sub)


async def move_task(
    ctx: StsContext, task: Task, target: TaskState, *, principal: str, detail: dict[str, Any] | None = None
) -> Task:
    """End (or suspend) ``task`` for an authorized ``principal``: revoke its tokens, audit it with ``detail``."""
    now = ctx.now()
    check_transition(task, target, now)
    event = AuditEvent(kind=f"task.{target.value}", outcome="ok", principal=principal, task=task.id, detail=detail or {})
    try:
        ended = await ctx.store.end_task(task.id, target, now=now, audit=event)
    except NotFound as exc:
        raise NotFoundError("task not found") from exc
    except TaskNotActive as exc:
        raise InvalidRequest(f"task is already {exc}") from exc
    REVOCATIONS.labels(kind="task").inc()  # the task's feed entry is committed
    return ended
