"""``create_app``: the STS as a Starlette ASGI app, plus its background upkeep.

The lifespan reloads the keyring from the store every few seconds (so a rotation made
by the CLI or another replica is picked up) and marks tasks past their hard cap
expired. Both are best-effort upkeep: correctness never depends on them, because
expiry is also checked on every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

from tether.keys.keyring import load_keyring
from tether.store.errors import StoreUnavailable
from tether.sts.context import StsContext
from tether.sts.routes.discovery import (
    health_endpoint,
    jwks_endpoint,
    metadata_endpoint,
    policies_endpoint,
    revocations_endpoint,
    revocations_stream_endpoint,
)
from tether.sts.routes.tasks import block_endpoint, task_endpoint, task_transition_endpoint, tasks_endpoint
from tether.sts.routes.token import introspect_endpoint, revoke_endpoint, token_endpoint
from tether.web.errors import handle_http, handle_unexpected

__all__ = ["create_app"]

log = logging.getLogger("tether.sts")


async def _every(seconds: float, job: Callable[[], Awaitable[object]]) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()
        except StoreUnavailable as exc:
            log.warning("upkeep skipped: %s", exc)


def create_app(
    ctx: StsContext,
    *,
    master_key: bytes | None = None,
    upkeep: bool = True,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> Starlette:
    async def reload_keys() -> None:
        if master_key is not None:
            ctx.keyring = await load_keyring(ctx.store, master_key, now=ctx.now())

    async def expire() -> None:
        await ctx.store.expire_tasks(now=ctx.now())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        jobs = [asyncio.create_task(_every(5, reload_keys)), asyncio.create_task(_every(15, expire))] if upkeep else []
        try:
            yield
        finally:
            for job in jobs:
                job.cancel()
            if on_shutdown is not None:
                await on_shutdown()

    routes = [
        Route("/token", token_endpoint, methods=["POST"]),
        Route("/introspect", introspect_endpoint, methods=["POST"]),
        Route("/revoke", revoke_endpoint, methods=["POST"]),
        Route("/jwks", jwks_endpoint, methods=["GET"]),
        Route("/.well-known/oauth-authorization-server", metadata_endpoint, methods=["GET"]),
        Route("/healthz", health_endpoint, methods=["GET"]),
        Route("/revocations", revocations_endpoint, methods=["GET"]),
        Route("/revocations/stream", revocations_stream_endpoint, methods=["GET"]),
        Route("/policies", policies_endpoint, methods=["GET"]),
        Route("/tasks", tasks_endpoint, methods=["GET", "POST"]),
        Route("/tasks/{task_id}", task_endpoint, methods=["GET"]),
        Route("/tasks/{task_id}/{action:str}", task_transition_endpoint, methods=["POST"]),
        Route("/principals/{action:str}", block_endpoint, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: handle_http, Exception: handle_unexpected},
    )
    app.state.ctx = ctx
    return app
