"""Issue 6 fault tests: a Redis and a PostgreSQL of the test's own, killed mid-run.

Fail closed: with either store unreachable, exchanges are refused with 503
``temporarily_unavailable`` (and ``Retry-After``), never a token issued on stale state.
A resource server keeps verifying from its cached keys until its revocation view is
older than its bound, then refuses too. When the store comes back, everything resumes
by itself — no restart.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from scalekit import ADMIN, Cluster, cluster, postgres_server, redis_server, wait_until

from services import drop_schema, new_schema, require_postgres_and_redis, schema_dsn
from tether.agent.identity import DevIdentity
from tether.agent.proof import DPoPKey
from tether.clock import ManualClock
from tether.errors import TemporarilyUnavailable
from tether.resource import ResourceSettings, Verifier

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def _assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "temporarily_unavailable"
    assert response.headers.get("retry-after") == "1"


def _hop_ok(c: Cluster, session: str, key: DPoPKey) -> bool:
    try:
        return c.post_token(0, c.hop_form(session), key).status_code == 200
    except httpx.TransportError:
        return False


def test_redis_down_refuses_exchanges_with_503_and_recovers(tmp_path: Path) -> None:
    require_postgres_and_redis()
    schema = new_schema()
    try:
        with redis_server(tmp_path) as redis, cluster(tmp_path / "d", replicas=1, dsn=schema_dsn(schema),
                                                      redis_url=redis.url) as c:  # fmt: skip
            task = c.task()
            key = DPoPKey()
            session = c.session(task["id"], key)
            assert _hop_ok(c, session, key)
            redis.kill()
            _assert_unavailable(c.post_token(0, c.hop_form(session), key))
            health = c.replicas[0].url + "/healthz"  # its outcome is reused for a second: wait for the change
            wait_until(lambda: c.http.get(health).status_code == 503, timeout=10, what="/healthz to report the outage")
            _assert_unavailable(c.http.get(health))
            redis.start()  # same port: the replica reconnects on its own
            wait_until(lambda: _hop_ok(c, session, key), timeout=20, what="exchanges to resume after redis returns")
            wait_until(lambda: c.http.get(health).status_code == 200, timeout=10, what="/healthz to report the recovery")
    finally:
        drop_schema(schema)


def test_postgres_down_fails_closed_everywhere_and_recovers(tmp_path: Path) -> None:
    require_postgres_and_redis()
    with postgres_server() as pg, cluster(tmp_path, replicas=1, dsn=pg.dsn) as c:
        task = c.task(audiences=["https://tool.example"])
        key = DPoPKey()
        session = c.session(task["id"], key)
        hop = c.post_token(0, c.hop_form(session), key).json()["access_token"]
        clock = ManualClock()

        async def scenario() -> None:
            settings = ResourceSettings(issuer=c.replicas[0].url, resource="https://tool.example", stale_after=3.0)
            verifier = Verifier(settings, clock=clock, identity=DevIdentity(c.domain, ADMIN))
            await verifier.start()

            async def call() -> object:
                proof = key.proof("GET", "https://tool.example/x", access_token=hop, now=clock.now())
                return await verifier.verify(method="GET", path="/x", headers={"authorization": f"DPoP {hop}", "dpop": proof})

            try:
                assert verifier.feed is not None
                await verifier.feed.wait_synced()
                assert (await call()) is not None
                pg.kill()
                # exchanges at the STS during the outage are refused with 503, never served from stale state
                _assert_unavailable(await asyncio.to_thread(c.post_token, 0, c.hop_form(session), key))
                assert (await call()) is not None, "cached keys and a fresh view keep verification working"
                clock.advance(4.0)  # the resource server has not heard from the STS for longer than its bound
                with pytest.raises(TemporarilyUnavailable):
                    await call()
                pg.start()
                deadline = asyncio.get_running_loop().time() + 30
                while True:
                    try:
                        await call()
                        break
                    except TemporarilyUnavailable:
                        if asyncio.get_running_loop().time() > deadline:
                            raise
                        await asyncio.sleep(0.1)
            finally:
                await verifier.aclose()

        asyncio.run(scenario())
        wait_until(lambda: _hop_ok(c, session, key), timeout=30, what="exchanges to resume after postgres returns")
