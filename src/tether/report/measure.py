"""``tether report --measure``: time one revocation from the STS to a feed subscriber.

A real subscriber (``tether.resource.revocations.RevocationFeed``, as a resource server
runs it) connects to ``/revocations/stream`` with the admin's workload identity (admins
may follow the feed); the admin client creates
a short probe task and cancels it; the lag is the time from sending the cancel to the
subscriber holding the task id. It measures the deployment as it runs now — store,
publish path and network — and leaves one cancelled task (purpose says why) behind.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from tether.client import StsClient, StsError
from tether.config import Config
from tether.report.model import LagFacts
from tether.resource.revocations import RevocationFeed

__all__ = ["PROBE_PURPOSE", "measure_revocation_lag"]

PROBE_PURPOSE = "tether report: revocation lag probe"


def _probe_agent(config: Config) -> str:
    admin = config.admin.principals[0]
    return admin.rstrip("/") + "/report-probe" if admin.startswith("spiffe://") else "spiffe://tether.local/report-probe"


async def measure_revocation_lag(config: Config, client: StsClient, *, timeout: float = 10.0) -> LagFacts:
    """The seconds from cancelling a probe task to a feed subscriber seeing it, or why it could not be measured."""
    stale_after = float(config.gateway.stale_after)
    base = client.url  # the STS the admin client talks to (``--url``, default the issuer)
    async with httpx.AsyncClient(trust_env=False) as http:
        try:
            (await http.get(base + "/healthz", timeout=min(timeout, 3.0))).raise_for_status()
        except httpx.HTTPError as exc:
            return LagFacts(None, f"the STS at {base} does not answer: {exc}")
        feed = RevocationFeed(base, http, identity=client.identity, audience=config.issuer, stale_after=stale_after)
        feed.start()
        try:
            await feed.wait_synced(timeout)
            task = await asyncio.to_thread(
                client.create_task,
                agent=_probe_agent(config),
                audiences=[config.issuer + "/report-probe"],
                scopes=["report:probe"],
                purpose=PROBE_PURPOSE,
                max_duration=60,
                max_tokens=1,
            )
            task_id = str(task["id"])
            start = time.monotonic()
            await asyncio.to_thread(client.api, "POST", f"/tasks/{task_id}/cancel")
            while task_id not in feed.tasks:
                if time.monotonic() - start > timeout:
                    return LagFacts(None, f"the cancelled probe task was not on the feed within {timeout:g}s")
                await asyncio.sleep(0.005)
            return LagFacts(time.monotonic() - start)
        except TimeoutError:
            return LagFacts(None, f"the revocation feed at {feed.source.name} did not answer within {timeout:g}s")
        except StsError as exc:
            return LagFacts(None, f"the STS refused the probe: {exc.error}: {exc.description}")
        except httpx.HTTPError as exc:
            return LagFacts(None, f"cannot reach the STS: {exc}")
        finally:
            await feed.aclose()
