"""What an operator does from the console: end or suspend a task, block or unblock a principal.

Each is an audited admin call (SECURITY WEB-05): the console has checked the session, its CSRF
token and the ``operator`` role; here the Cedar ``admin`` action is asked too, with the human as
the principal (``kind`` ``console``, in the ``admins`` group as an operator), so an organisation's
policy can restrict humans as it restricts admin workloads (hours, addresses, risk). The store
writes are the same as the admin API's (``sts.tasks.move_task``, ``sts.introspection.set_block``);
the audit record names the human and says ``via: console``.
"""

from __future__ import annotations

from typing import Any

from tether.console.web import Human
from tether.errors import InsufficientScope, InvalidRequest, NotFoundError
from tether.model import Task, TaskState
from tether.policy.entities import admin_request
from tether.rules.console_roles import OPERATOR
from tether.store.records import BlockKind
from tether.sts.context import StsContext
from tether.sts.introspection import set_block
from tether.sts.tasks import move_task

__all__ = ["ACTIONS", "block_principal", "end_task"]

#: the task actions an operator may take, by the path word
ACTIONS = {"complete": TaskState.COMPLETED, "cancel": TaskState.CANCELLED, "suspend": TaskState.SUSPENDED}
MAX_PRINCIPAL = 512


def _authorize(ctx: StsContext, human: Human, operation: str, client: str | None) -> None:
    if OPERATOR not in human.roles:
        raise InsufficientScope("only an operator can do this")
    ctx.authorize(
        admin_request(
            caller=human.principal,
            caller_kind="console",
            caller_domain=human.session.via,
            issuer=ctx.settings.issuer,
            operation=operation,
            now=ctx.now(),
            client=client,
            admins=(human.principal,),
            risk=0,
            key_bound=False,
        )
    )


def _detail(human: Human) -> dict[str, Any]:
    return {"via": "console", "login": human.session.via}


async def end_task(ctx: StsContext, human: Human, task_id: str, target: TaskState, *, client: str | None) -> Task:
    """Complete, cancel or suspend a task: every token bound to it is revoked in the same write."""
    _authorize(ctx, human, "tasks.end", client)
    task = await ctx.store.get_task(task_id)
    if task is None:
        raise NotFoundError("task not found")
    return await move_task(ctx, task, target, principal=human.principal, detail=_detail(human))


async def block_principal(
    ctx: StsContext, human: Human, kind: BlockKind, value: str, *, lift: bool, client: str | None
) -> dict[str, Any]:
    """Block (ending its tasks, revoking its tokens) or unblock an agent or subject."""
    if not value or len(value) > MAX_PRINCIPAL or not value.isprintable():
        raise InvalidRequest("name one agent or subject")
    _authorize(ctx, human, "principals.unblock" if lift else "principals.block", client)
    return await set_block(ctx, kind, value, lift=lift, principal=human.principal, detail=_detail(human))
