"""The approval webhook (``[approvals] webhook_url``): each new held request, with one-time links, POSTed as JSON.

``{"type": "approval.requested", "approval": <as_json>, "links": {"<principal>": {"approve": URL,
"deny": URL}}}``: one pair per listed member of the named groups who may decide it (and, for
``subject``, the task's user; ``sts.approvals.link_recipients``), each link signed, bound to the
approval and the approver, single-use and valid for ``[approvals] link_ttl`` seconds (APR-04).

The token response never waits for it: ``__call__`` (the STS context's ``on_hold``) only builds
the payload and enqueues it; ``monitor.webhook.WebhookSender`` delivers from a bounded queue
with retries and exponential backoff. Its log lines name only the receiver's scheme and host;
neither the payload nor the links (capabilities) are ever logged.
"""

from __future__ import annotations

import logging
from typing import Any

from tether.model import Approval, Task
from tether.monitor.webhook import WebhookSender
from tether.sts.approvals import mint_links
from tether.sts.context import StsContext

__all__ = ["EVENT_TYPE", "ApprovalWebhook"]

log = logging.getLogger("tether.sts")

EVENT_TYPE = "approval.requested"
#: delivery attempts after the first
RETRIES = 3


class ApprovalWebhook:
    """``ctx.on_hold``: announce a held request to the approvers' channel, off the request path."""

    def __init__(self, ctx: StsContext, sender: WebhookSender) -> None:
        self.ctx = ctx
        self.sender = sender

    @classmethod
    def for_context(cls, ctx: StsContext) -> ApprovalWebhook:
        settings = ctx.settings.approvals
        return cls(ctx, WebhookSender(settings.webhook_url, timeout=float(settings.webhook_timeout), retries=RETRIES))

    @property
    def base(self) -> str:
        """Where the links point: ``[approvals] public_url``, else the issuer."""
        return self.ctx.settings.approvals.public_url or self.ctx.settings.issuer

    def start(self) -> None:
        self.sender.start()

    async def stop(self) -> None:
        await self.sender.stop()

    def payload(self, approval: Approval, task: Task) -> dict[str, Any]:
        now = self.ctx.now()
        return {
            "type": EVENT_TYPE,
            "approval": approval.as_json(now),
            "links": mint_links(self.ctx, approval, task, base=self.base, now=now),
        }

    def __call__(self, approval: Approval, task: Task) -> None:
        """Queue the announcement (never blocks; a full queue drops it with a logged error)."""
        if not self.sender.submit(self.payload(approval, task)):
            log.error("approval webhook: announcement of %s dropped (queue full)", approval.id)
