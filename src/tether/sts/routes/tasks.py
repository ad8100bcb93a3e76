"""The task API (``/tasks…``) and the kill switch (``/principals/block``), DPoP-authenticated."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tether.errors import InvalidRequest, NotFoundError
from tether.model import AccessToken, TaskState
from tether.store.records import BlockKind
from tether.sts.auth import require_admin
from tether.sts.introspection import block
from tether.sts.routes.common import authenticate_token, client_address, context, endpoint, nonce_headers
from tether.sts.tasks import create_task, end_task, get_task, list_tasks, parse_task_request
from tether.web.errors import NO_STORE
from tether.web.forms import read_json

__all__ = ["block_endpoint", "task_endpoint", "task_transition_endpoint", "tasks_endpoint"]


async def _caller(request: Request) -> AccessToken:
    ctx = context(request)
    url = ctx.settings.issuer + request.url.path
    return await authenticate_token(request, method=request.method, url=url)


def _json(body: object, request: Request, status: int = 200) -> Response:
    return JSONResponse(body, status_code=status, headers={**NO_STORE, **nonce_headers(context(request))})


@endpoint(resource=True, audit_kind="task.refused")
async def tasks_endpoint(request: Request) -> Response:
    ctx = context(request)
    caller = await _caller(request)
    if request.method == "POST":
        task = await create_task(ctx, caller, parse_task_request(await read_json(request)), client=client_address(request))
        return _json(task.as_json(ctx.now()), request, status=201)
    limit_raw = request.query_params.get("limit", "100")
    if not (limit_raw.isascii() and limit_raw.isdigit()) or not 1 <= int(limit_raw) <= 1000:  # isdigit alone takes "²"
        raise InvalidRequest("`limit` must be an integer from 1 to 1000")
    tasks = await list_tasks(
        ctx,
        caller,
        state=request.query_params.get("state"),
        agent=request.query_params.get("agent"),
        limit=int(limit_raw),
        client=client_address(request),
    )
    now = ctx.now()
    return _json({"tasks": [t.as_json(now) for t in tasks]}, request)


@endpoint(resource=True, audit_kind="task.refused")
async def task_endpoint(request: Request) -> Response:
    ctx = context(request)
    caller = await _caller(request)
    task = await get_task(ctx, caller, request.path_params["task_id"], client=client_address(request))
    return _json(task.as_json(ctx.now()), request)


_TRANSITIONS = {"complete": TaskState.COMPLETED, "cancel": TaskState.CANCELLED, "suspend": TaskState.SUSPENDED}


@endpoint(resource=True, audit_kind="task.refused")
async def task_transition_endpoint(request: Request) -> Response:
    ctx = context(request)
    caller = await _caller(request)
    target = _TRANSITIONS.get(request.path_params["action"])
    if target is None:
        raise NotFoundError("no such task action")
    task = await end_task(ctx, caller, request.path_params["task_id"], target, client=client_address(request))
    return _json(task.as_json(ctx.now()), request)


@endpoint(resource=True, audit_kind="principal.refused")
async def block_endpoint(request: Request) -> Response:
    ctx = context(request)
    caller = await _caller(request)
    if request.path_params["action"] not in ("block", "unblock"):
        raise NotFoundError("no such action")
    require_admin(ctx, caller)
    body = await read_json(request)
    kinds = [k for k in BlockKind if k.value in body]
    if len(kinds) != 1 or set(body) != {kinds[0].value} or not isinstance(body[kinds[0].value], str):
        raise InvalidRequest("body must name exactly one of `agent` or `subject`")
    kind = kinds[0]
    lift = request.path_params["action"] == "unblock"
    return _json(await block(ctx, caller, kind, body[kind.value], lift=lift, client=client_address(request)), request)
