"""``create_app``: the STS as a Starlette ASGI app, plus its background upkeep.

The lifespan reloads the keyring every few seconds (a rotation made elsewhere is picked up),
expires tasks past their hard cap, purges marks and feed entries that can no longer matter and
signs audit checkpoints when due: best-effort upkeep, since every request checks expiry itself.
``GET /metrics`` needs no authentication (scrapers do not speak DPoP; its labels are bounded
sets, never ids) and bypasses the admission limit, since overload is when an operator needs
it. One ``FeedHub`` per process serves the revocation streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tether.background import FailureStreak
from tether.federation.published import SIGNING_BUNDLE_PATH, SVID_BUNDLE_PATH, SigningBundle, SvidBundle
from tether.metrics import CONTENT_TYPE, exposition
from tether.store.errors import StoreUnavailable
from tether.sts.context import StsContext
from tether.sts.feed import FeedHub, FeedSettings
from tether.sts.holds import sweep_approvals
from tether.sts.routes.approval_link import approval_link_endpoint
from tether.sts.routes.approvals import (
    approval_decide_endpoint,
    approval_endpoint,
    approval_events_endpoint,
    approvals_endpoint,
)
from tether.sts.routes.discovery import health_endpoint, jwks_endpoint, metadata_endpoint
from tether.sts.routes.feed import policies_endpoint, revocations_endpoint, revocations_stream_endpoint
from tether.sts.routes.settings import settings_endpoint
from tether.sts.routes.spiffe import signing_bundle_endpoint, svid_bundle_endpoint
from tether.sts.routes.tasks import block_endpoint, task_endpoint, task_transition_endpoint, tasks_endpoint
from tether.sts.routes.token import introspect_endpoint, revoke_endpoint, token_endpoint
from tether.web.admission import AdmissionLimit
from tether.web.direct_route import DirectRoute
from tether.web.errors import handle_http, handle_unexpected
from tether.web.forms import MAX_BODY

if TYPE_CHECKING:
    from tether.config import Config

__all__ = ["create_app"]

log = logging.getLogger("tether.sts")


async def _every(seconds: float, job: Callable[[], Awaitable[object]]) -> None:
    name = getattr(job, "__name__", "job")
    # one line when the store goes away and one when it is back, not one per run
    unavailable = FailureStreak(log, f"upkeep skipped ({name})", f"upkeep job {name}", base=seconds, cap=seconds)
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()
        except StoreUnavailable as exc:
            unavailable.failed(exc)
            continue
        except Exception as exc:  # noqa: BLE001 - an upkeep job must outlive any one failure
            log.error("upkeep job %s failed: %s", name, type(exc).__name__)
        unavailable.succeeded()


async def metrics_endpoint(request: Request) -> Response:
    """The process's metrics in the Prometheus text format."""
    return Response(exposition(), media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})


class Runtime(Protocol):
    """What the app needs from its owner (``tether.sts.bootstrap.Sts``)."""

    @property
    def config(self) -> Config: ...

    @property
    def ctx(self) -> StsContext: ...

    async def start(self) -> StsContext: ...

    async def stop(self) -> None: ...

    async def reload_keys(self) -> None: ...

    async def record_policy(self) -> None: ...

    async def checkpoint_audit(self) -> None: ...


def create_app(runtime: Runtime, *, upkeep: bool = True, max_inflight: int = 64) -> Starlette:
    async def expire() -> None:
        ctx = runtime.ctx
        await ctx.store.expire_tasks(now=ctx.now())
        await sweep_approvals(ctx.store, now=ctx.now())

    async def purge() -> None:
        ctx = runtime.ctx
        await ctx.store.purge_expired(now=ctx.now())

    async def count_refusals() -> None:
        ctx = runtime.ctx
        assert ctx.anonymous is not None
        await ctx.anonymous.flush(ctx.now())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.ctx = ctx = await runtime.start()

        def policy_version() -> str | None:
            ctx.policy.refresh()  # so an idle STS still announces a policy set changed on disk
            return ctx.policy.version

        feed = FeedHub(ctx.store, ctx.clock, FeedSettings.from_config(runtime.config), policy_version=policy_version)
        await feed.start()
        app.state.feed = feed
        periodic = (
            (5, runtime.reload_keys),
            (5, runtime.record_policy),
            (15, expire),
            (60, purge),
            (1, runtime.checkpoint_audit),
            (5, count_refusals),
        )
        jobs = [asyncio.create_task(_every(seconds, job)) for seconds, job in periodic] if upkeep else []
        try:
            yield
        finally:
            for job in jobs:
                job.cancel()
            await feed.aclose()
            await runtime.stop()

    routes = [
        Route("/token", token_endpoint, methods=["POST"]),
        Route("/introspect", introspect_endpoint, methods=["POST"]),
        Route("/revoke", revoke_endpoint, methods=["POST"]),
        Route("/jwks", jwks_endpoint, methods=["GET"]),
        Route(SVID_BUNDLE_PATH, svid_bundle_endpoint, methods=["GET"]),
        Route(SIGNING_BUNDLE_PATH, signing_bundle_endpoint, methods=["GET"]),
        Route("/.well-known/oauth-authorization-server", metadata_endpoint, methods=["GET"]),
        Route("/healthz", health_endpoint, methods=["GET"]),
        # GET too, to be refused with invalid_client and the way in: never a 405 nor the data
        Route("/revocations", revocations_endpoint, methods=["GET", "POST"]),
        Route("/revocations/stream", revocations_stream_endpoint, methods=["GET", "POST"]),
        Route("/policies", policies_endpoint, methods=["GET", "POST"]),
        Route("/tasks", tasks_endpoint, methods=["GET", "POST"]),
        Route("/tasks/{task_id}", task_endpoint, methods=["GET"]),
        Route("/tasks/{task_id}/{action:str}", task_transition_endpoint, methods=["POST"]),
        Route("/principals/{action:str}", block_endpoint, methods=["POST"]),
        Route("/settings", settings_endpoint, methods=["GET"]),
        # the approvers' API; the link routes first (`link` is not an approval id)
        Route("/approvals", approvals_endpoint, methods=["GET"]),
        Route("/approvals/link/{token}", approval_link_endpoint, methods=["GET", "POST"]),
        Route("/approvals/{approval_id}", approval_endpoint, methods=["GET"]),
        Route("/approvals/{approval_id}/events", approval_events_endpoint, methods=["GET"]),
        Route("/approvals/{approval_id}/{action:str}", approval_decide_endpoint, methods=["POST"]),
    ]
    if runtime.config.metrics.enabled:
        routes.append(Route("/metrics", metrics_endpoint, methods=["GET"]))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(
                AdmissionLimit,
                limit=max_inflight,
                exempt=frozenset({"/healthz", "/metrics"}),
                streams=frozenset({"/revocations/stream"}),
                stream_suffixes=("/events",),
                prebuffer=MAX_BODY,  # every body the STS reads is a form or JSON of at most this much
            ),
            Middleware(DirectRoute, path="/token", method="POST", endpoint=token_endpoint, on_http_error=handle_http),
        ],
        exception_handlers={HTTPException: handle_http, Exception: handle_unexpected},
    )
    app.state.svid_bundle = SvidBundle.from_config(runtime.config)
    app.state.signing_bundle = SigningBundle()
    return app
