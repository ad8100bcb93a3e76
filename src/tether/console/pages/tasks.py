"""``/tasks`` (filtered, keyset-paged list), ``/tasks/{id}`` (fields, lineage tree, audit trail) and
the task actions behind a confirmation step (``/tasks/{id}/{action}/confirm`` → POST).

The list is one indexed query per page (``Store.list_tasks`` with ``after``: keyset pagination,
so page 200 costs what page 1 costs). Filters come from the query string and are checked here:
a bad value is a 400 page, never a 500 (ASVS V5 input validation). Everything from the store is
attacker-chosen text (agent ids, purposes) and is rendered autoescaped (WEB-03). The actions go
through ``console.actions.end_task`` (Cedar ``admin`` check, audited as the human): a GET only
shows what will happen; the POST carries the session's CSRF token (WEB-02) and needs the operator
role (WEB-05, enforced by ``page("act")`` and again in ``actions``).
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from tether.console import lineage
from tether.console.actions import ACTIONS, end_task
from tether.console.pages.fmt import FORMATS
from tether.console.web import Human, client_address, config, context, page, render
from tether.errors import InvalidRequest, NotFoundError
from tether.model import Task, TaskState
from tether.web.forms import Form

__all__ = ["ROUTES", "TREE_LIMIT", "TaskFilters", "load_task", "parse_filters"]

#: the most token rows one task page draws (a task's ``max_tokens`` is normally far below this)
TREE_LIMIT = 1000
#: audit records shown under the tree
TRAIL = 50
_MAX_TEXT = 512
_MAX_ID = 200

#: what each action does, in the words the confirmation page uses
EFFECTS = {
    "complete": "The task is marked completed.",
    "cancel": "The task is marked cancelled.",
    "suspend": "The task is suspended.",
}


class TaskFilters:
    """The list's filters from a query string, checked (a bad value raises ``InvalidRequest``: a 400 page)."""

    __slots__ = ("after", "agent", "audience", "state")

    def __init__(self, state: TaskState | None, agent: str | None, audience: str | None, after: str | None) -> None:
        self.state, self.agent, self.audience, self.after = state, agent, audience, after

    def query(self, *, after: str | None = None) -> str:
        """The query string for these filters (and a page position)."""
        values = {"state": self.state.value if self.state else "", "agent": self.agent or "",
                  "audience": self.audience or "", "after": after or ""}  # fmt: skip
        return urlencode({k: v for k, v in values.items() if v})


def _text(params: dict[str, str], name: str, limit: int) -> str | None:
    value = params.get(name, "").strip()
    if not value:
        return None
    if len(value) > limit or not value.isprintable():
        raise InvalidRequest(f"the {name} filter must be printable text of at most {limit} characters")
    return value


def parse_filters(params: dict[str, str]) -> TaskFilters:
    """``state`` (one of the task states), ``agent``, ``audience`` (exact), ``after`` (a task id)."""
    raw_state = params.get("state", "").strip()
    try:
        state = TaskState(raw_state) if raw_state else None
    except ValueError:
        raise InvalidRequest("the state filter must be one of " + ", ".join(s.value for s in TaskState)) from None
    return TaskFilters(state, _text(params, "agent", _MAX_TEXT), _text(params, "audience", 2048),
                       _text(params, "after", _MAX_ID))  # fmt: skip


def _task_id(request: Request) -> str:
    task_id = str(request.path_params["task_id"])
    if not task_id or len(task_id) > _MAX_ID or not task_id.isprintable():
        raise NotFoundError("task not found")
    return task_id


@page("view")
async def task_list(request: Request, human: Human, form: Form | None) -> Response:
    """GET ``/tasks?state=&agent=&audience=&after=``: one page, newest first, with a "Next" link."""
    ctx, cfg = context(request), config(request)
    filters = parse_filters(dict(request.query_params))
    size = cfg.console.page_size
    now = ctx.now()
    rows = await ctx.store.list_tasks(state=filters.state, agent=filters.agent, audience=filters.audience,
                                      after=filters.after, now=now, limit=size + 1)  # fmt: skip
    more = len(rows) > size
    rows = rows[:size]
    next_query = filters.query(after=rows[-1].id) if more and rows else None
    return render(request, "tasks.html", {
        **FORMATS, "title": "Tasks", "tasks": rows, "filters": filters, "states": [s.value for s in TaskState],
        "next_query": next_query, "first_query": filters.query() if filters.after else None, "now": now,
    }, human=human)  # fmt: skip


async def load_task(request: Request) -> Task:
    """The task named in the path (``NotFoundError``, a 404 page, when there is none)."""
    task = await context(request).store.get_task(_task_id(request))
    if task is None:
        raise NotFoundError("task not found")
    return task


@page("view")
async def task_page(request: Request, human: Human, form: Form | None) -> Response:
    """GET ``/tasks/{id}``: the task's fields, its lineage tree and its audit trail."""
    ctx = context(request)
    task = await load_task(request)
    now = ctx.now()
    tokens = await ctx.store.task_tokens(task.id, limit=TREE_LIMIT)
    forest = lineage.build_forest(tokens, now=now)
    summary = lineage.summarize(forest)
    trail = await ctx.store.search_audit(task=task.id, limit=TRAIL)
    state = task.effective_state(now).value
    return render(request, "task.html", {
        **FORMATS, "title": f"Task {task.id}", "task": task, "state": state, "steps": list(lineage.walk(forest)),
        "summary": summary, "truncated": len(tokens) >= TREE_LIMIT, "trail": trail.records, "now": now,
        "actions": list(ACTIONS) if human.may("act") and state == TaskState.ACTIVE.value else [],
        "audit_query": urlencode({"task": task.id}),
    }, human=human)  # fmt: skip


def _action(request: Request) -> str:
    action = str(request.path_params["action"])
    if action not in ACTIONS:
        raise NotFoundError("no such action")
    return action


@page("act")
async def confirm_action(request: Request, human: Human, form: Form | None) -> Response:
    """GET ``/tasks/{id}/{action}/confirm``: what will happen, and the POST form that does it."""
    action = _action(request)
    task = await load_task(request)
    back = f"/tasks/{quote(task.id, safe='')}"
    return render(request, "confirm.html", {
        **FORMATS, "title": f"{action.capitalize()} task", "action": f"{back}/{action}", "verb": action.capitalize(),
        "what": f"task {task.id} of {task.agent}", "effects": [EFFECTS[action],
            "Every token derived from this task is revoked at once, everywhere the revocation feed reaches."],
        "fields": [], "back": back,
    }, human=human)  # fmt: skip


@page("act")
async def do_action(request: Request, human: Human, form: Form | None) -> Response:
    """POST ``/tasks/{id}/{action}``: ``actions.end_task`` (audited as the human), then back to the task."""
    action = _action(request)
    task_id = _task_id(request)
    await end_task(context(request), human, task_id, ACTIONS[action], client=client_address(request))
    return RedirectResponse(f"/tasks/{quote(task_id, safe='')}", status_code=303)


ROUTES: list[BaseRoute] = [
    Route("/tasks", task_list, methods=["GET"]),
    Route("/tasks/{task_id}", task_page, methods=["GET"]),
    Route("/tasks/{task_id}/{action}/confirm", confirm_action, methods=["GET"]),
    Route("/tasks/{task_id}/{action}", do_action, methods=["POST"]),
]
