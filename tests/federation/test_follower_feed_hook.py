"""The feed hook a follower acts through: an entry counts as applied only once the hook succeeded.

``RevocationFeed.on_revocation`` is awaited before the cursor moves past an entry (the view marks
the entry first, so whatever checks it after the hook's store reads sees it); when it
raises a ``TetherError`` (the store could not answer), the feed reconnects from its cursor and
the STS sends the entry again, so what a federation follower must do for it is never skipped.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fedkit import eventually

from helpers import ADMIN, RunningSts, admin_token, create_task
from tether.resource.revocations import RevocationFeed
from tether.store.errors import StoreUnavailable


def test_fed03_entry_is_delivered_again_after_the_hook_failed(sts: RunningSts) -> None:
    seen: list[str] = []
    failed: list[str] = []

    async def hook(entry: dict[str, Any]) -> None:
        value = str(entry.get("value"))
        if entry.get("kind") == "task" and value not in failed:
            failed.append(value)
            raise StoreUnavailable("the store is away")
        seen.append(value)

    async def scenario() -> None:
        async with httpx.AsyncClient(trust_env=False) as http:
            feed = RevocationFeed(sts.url, http, identity=sts.identity(ADMIN), stale_after=3.0, reconnect_delay=0.05)
            feed.on_revocation = hook
            feed.start()
            try:
                await feed.wait_synced()
                task_id = create_task(sts)["id"]
                client, token = admin_token(sts)
                assert client.api("POST", f"/tasks/{task_id}/complete", token).status_code == 200
                await eventually(lambda: task_id in seen)
                assert failed == [task_id] and task_id in feed.tasks
                assert feed.connects >= 2  # the failure reconnected; the entry came on the new stream
            finally:
                await feed.aclose()

    asyncio.run(scenario())
