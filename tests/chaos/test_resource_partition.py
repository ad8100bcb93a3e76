"""A resource server cut from the STS by a network partition (issue 14, chaos suite).

tests/resource/test_resource_revocation_feed.py already covers an STS that stops (its
connections close at once) — refused beyond ``stale_after`` on a manual clock and in real
time, recovered after a restart — and tests/scaleout/test_faults.py a store that dies under
the STS. What they leave out is the nastier cut: the link goes silent while every socket
stays open, so nothing tells the resource server its stream is dead. Here a loopback relay
between the resource server and a healthy STS stops moving bytes (both ways, new
connections hang): the resource server must fail closed once it has heard nothing for
``stale_after`` (a silent stream is read with a ``stale_after`` timeout and reconnected),
the STS keeps serving everyone else, a task completed during the cut is refused as
revoked once the link heals, and service resumes by itself. The run ends with
``tether audit verify`` and a positive control.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hopload import audit_verify

from helpers import FEED_SUBSCRIBER, QUIET_MONITOR, SVC_RS, Client, RunningSts, admin_token, create_task, running_sts
from tether.agent.proof import DPoPKey
from tether.bench.partition import Partition, verdict
from tether.resource import ResourceSettings, Verifier
from tether.resource.revocations import RevocationFeed

pytestmark = [pytest.mark.slow]

RS = "http://127.0.0.1:9001"
STALE_AFTER = 2.0
DEADLINE = 30.0


@pytest.fixture
def feed_sts(tmp_path: Path) -> Iterator[RunningSts]:
    with running_sts(tmp_path, extra_toml=FEED_SUBSCRIBER + QUIET_MONITOR) as server:
        yield server


def _hop(sts: RunningSts) -> tuple[str, str, DPoPKey]:
    task = create_task(sts, audiences=[RS], scopes=["wiki:read"])
    agent = Client(sts)
    session = agent.session(task["id"]).json()["access_token"]
    hop = agent.hop(session, RS)
    assert hop.status_code == 200, hop.text
    return str(task["id"]), str(hop.json()["access_token"]), agent.key


def test_resource_server_partitioned_from_the_sts_fails_closed_and_recovers(feed_sts: RunningSts) -> None:
    sts = feed_sts
    _, kept, kept_key = _hop(sts)
    ended_task, ended, ended_key = _hop(sts)
    port = int(sts.url.rsplit(":", 1)[1])
    link = Partition(port)

    async def scenario() -> tuple[str | None, str | None]:
        http = httpx.AsyncClient(trust_env=False, timeout=5.0)
        feed = RevocationFeed(link.url, http, identity=sts.identity(SVC_RS), audience=sts.url, stale_after=STALE_AFTER)
        settings = ResourceSettings(issuer=sts.url, resource=RS, jwks_uri=link.url + "/jwks", stale_after=STALE_AFTER)
        verifier = Verifier(settings, http=http, feed=feed)

        async def outcome(token: str, key: DPoPKey) -> str | None:
            got = await verdict(verifier, RS, token, key)
            return None if got == "accepted" else got

        async def until(token: str, key: DPoPKey, wanted: str | None) -> None:
            deadline = time.monotonic() + DEADLINE
            while (got := await outcome(token, key)) != wanted:
                assert got in (None, "unavailable"), got
                assert time.monotonic() < deadline, f"still {got!r}, waiting for {wanted!r}"
                await asyncio.sleep(0.05)

        feed.start()
        try:
            await feed.wait_synced()
            assert await outcome(kept, kept_key) is None and await outcome(ended, ended_key) is None
            link.cut()
            # the STS itself is fine: the task is completed there while the resource server hears nothing
            client, admin = await asyncio.to_thread(admin_token, sts)
            completed = await asyncio.to_thread(client.api, "POST", f"/tasks/{ended_task}/complete", admin)
            assert completed.status_code == 200, completed.text
            await until(kept, kept_key, "unavailable")  # silent for stale_after: nothing is let through
            assert await outcome(ended, ended_key) == "unavailable"
            link.heal()
            await until(kept, kept_key, None)  # it reconnects by itself ...
            return await outcome(kept, kept_key), await outcome(ended, ended_key)  # ... and got the backlog
        finally:
            await feed.aclose()
            await verifier.aclose()
            await http.aclose()

    try:
        kept_after, ended_after = asyncio.run(scenario())
    finally:
        link.close()
    assert kept_after is None
    assert ended_after == "token has been revoked"
    audit_verify(sts.config)
    _hop(sts)  # positive control at the STS
