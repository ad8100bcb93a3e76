"""Recovery after an outage trips nothing and waits for nothing (issue 14, item 4).

Real faults on real stores: a private ``redis-server`` killed and started again under a
monitor running its loop over PostgreSQL + Redis (the agents' catch-up after it is not an
``exchange_rate_spike``; a spike with no outage before it, or one lasting past the recovery,
still is); and an STS process killed with SIGKILL while it held the claim on the next
checkpoint (the restarted writer signs at its first tick; another replica, or another
worker on the same data directory, does not steal the live claim).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from services import REDIS_URL, drop_schema, new_schema, require_postgres_and_redis, schema_dsn
from tether.audit.chain import AuditEvent
from tether.audit.checkpoint import CHECKPOINT_KIND
from tether.audit.export import verify_export
from tether.clock import ManualClock
from tether.keys.keyring import KeyRing, SigningKey, generate_key, public_jwk
from tether.monitor.runner import Monitor
from tether.monitor.settings import parse_detectors
from tether.store.protocol import Store
from tether.store.sqlite.store import SqliteStore
from tether.sts.checkpoints import CLAIM_SECONDS, AuditCheckpoints
from tether.web.server import free_port

SRC = Path(__file__).resolve().parents[2] / "src"
ISS = "https://sts.example"
AGENT = "spiffe://tether.local/agent/research"
OTHER = "spiffe://tether.local/agent/other"
WINDOW = 10
SPIKE = {"window": WINDOW, "factor": 5, "min_count": 20, "alpha": 0.5, "warmup": 3, "recovery": 30, "actions": ["alert"]}
BACKENDS = ["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.redis])]


async def eventually(check: Callable[[], Awaitable[bool]], what: str, *, timeout: float = 60.0) -> None:
    """Wait for ``check`` (a generous deadline only against hanging; nothing is timed)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Redis:
    """A private redis-server on a free port, killed and started again on that port."""

    def __init__(self, directory: Path) -> None:
        self.port, self.directory = free_port(), directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--dir", str(self.directory)]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while (
            subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, check=False).stdout.strip()
            != b"PONG"
        ):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


# -- the catch-up after an outage is not a spike ------------------------------------------------------


def window_start(clock: ManualClock) -> float:
    """Move the clock to one second into the next window; records appended now share a window."""
    now = clock.now()
    clock.advance((now // WINDOW + 1) * WINDOW + 1 - now)
    return clock.now()


async def issue(store: Store, clock: ManualClock, agent: str, n: int) -> None:
    for _ in range(n):
        event = AuditEvent(kind="token.issued", outcome="ok", principal=agent, task="t1",
                           detail={"aud": "https://wiki.example", "agent": agent, "depth": 0})  # fmt: skip
        await store.append_audit(event, now=clock.now())


async def spikes(store: Store) -> list[str]:
    """The agents an ``exchange_rate_spike`` alert was raised for, in order."""
    records = await store.audit_records(after=0, limit=10_000)
    return [r.detail["agent"] for r in records if r.kind == "alert.raised" and r.detail["detector"] == "exchange_rate_spike"]


@pytest.mark.postgres
@pytest.mark.redis
def test_catch_up_after_a_redis_outage_is_not_a_spike_and_a_spike_still_is(tmp_path: Path) -> None:
    require_postgres_and_redis()
    from tether.store.postgres.store import PostgresRedisStore

    async def main() -> None:
        redis = Redis(tmp_path)
        redis.start()
        schema = new_schema()
        store = await PostgresRedisStore.open(schema_dsn(schema), redis.url, prefix=schema, migrate=True, max_size=4)
        clock = ManualClock()
        mon = Monitor(store, clock, parse_detectors({"exchange_rate_spike": SPIKE}), interval=0.05, risk_ttl=300)
        try:
            await mon.start()

            async def caught_up() -> bool:
                return not await store.audit_records(after=mon.cursor, limit=1)

            for _ in range(4):  # both agents' usual traffic: 4 tokens a window
                window_start(clock)
                await issue(store, clock, AGENT, 4)
                await issue(store, clock, OTHER, 4)
            window_start(clock)  # the positive control: a spike with no outage before it
            await issue(store, clock, AGENT, 4)
            await issue(store, clock, OTHER, 30)
            await eventually(lambda: spikes_are(store, [OTHER]), "the control spike's alert")

            redis.kill()  # the outage: issuance fails closed (503), nothing is audited
            await eventually(lambda: _true(mon.outage_since is not None), "the monitor to see the outage")
            clock.advance(30)
            # the monitor keeps seeing the store fail through the outage (a real one, with no
            # issuance inside the stretch it saw failing, is what holds the detector)
            failing = clock.now()
            await eventually(lambda: _true((mon.last_failure or 0.0) >= failing), "the monitor to see it still down")
            redis.start()
            window_start(clock)  # the agent's deferred work, all at once: 15 times its baseline
            await issue(store, clock, AGENT, 60)
            await eventually(lambda: _true(mon.outage_since is None), "the monitor to see the store back")
            await eventually(caught_up, "the monitor to read the catch-up")
            assert await spikes(store) == [OTHER]

            clock.advance(40)  # past the recovery (30 s): the rate is still 15 times the baseline
            window_start(clock)
            await issue(store, clock, AGENT, 60)
            await eventually(lambda: spikes_are(store, [OTHER, AGENT]), "the persisting spike's alert")
            (alert,) = [r for r in await store.audit_records(after=0, limit=10_000)
                        if r.kind == "alert.raised" and r.detail["agent"] == AGENT]  # fmt: skip
            assert alert.detail["evidence"]["baseline"] == 4.0  # the held windows did not move it
        finally:
            redis.kill()  # first: nothing below may leave the server running
            try:
                await mon.stop()
            finally:
                await store.aclose()
                drop_schema(schema)

    asyncio.run(main())


async def spikes_are(store: Store, agents: list[str]) -> bool:
    return await spikes(store) == agents


async def _true(value: bool) -> bool:
    return value


# -- a restarted STS reclaims the checkpoint claim its dead process held ----------------------------

CLAIMER = """
import asyncio, sys
from pathlib import Path
from tether.sts.checkpoints import CLAIM_SECONDS
from tether.sts.writer import WriterIdentity, claim

async def main() -> None:
    kind, where, redis_url, data_dir, now = sys.argv[1:6]
    if kind == "sqlite":
        from tether.store.sqlite.store import SqliteStore
        store = SqliteStore.open(Path(where))
    else:
        from tether.store.postgres.store import PostgresRedisStore
        schema = where.rsplit("%3D", 1)[1]
        store = await PostgresRedisStore.open(where, redis_url, prefix=schema, max_size=2)
    writer = WriterIdentity(Path(data_dir))  # kept: dropping it would let go of the lock
    holder = writer.holder()
    ok = await claim(store, "audit-checkpoint:after:0", holder=holder, until=int(float(now)) + CLAIM_SECONDS,
                     now=float(now))
    print("claimed" if ok else "refused", holder, flush=True)
    await asyncio.sleep(600)  # killed here, holding the claim and the writer lock

asyncio.run(main())
"""


def signing_key() -> SigningKey:
    private = generate_key("ES256")
    jwk = public_jwk(private, "ES256")
    return SigningKey(kid=jwk["kid"], alg="ES256", private=private, public=type(private).import_key(jwk), jwk=jwk,
                      retired_at=None, not_after=None)  # fmt: skip


@asynccontextmanager
async def chain(kind: str, tmp_path: Path) -> AsyncIterator[tuple[Store, str, str]]:
    """A fresh store, where a child process finds it, and the Redis URL."""
    if kind == "sqlite":
        path = tmp_path / "tether.db"
        lite = SqliteStore.open(path)
        try:
            yield lite, str(path), ""
        finally:
            await lite.aclose()
        return
    from tether.store.postgres.store import PostgresRedisStore

    require_postgres_and_redis()
    schema = new_schema()
    store = await PostgresRedisStore.open(schema_dsn(schema), REDIS_URL, prefix=schema, migrate=True, max_size=4)
    try:
        yield store, schema_dsn(schema), REDIS_URL
    finally:
        await store.aclose()
        drop_schema(schema)


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_restarted_sts_signs_at_once_the_checkpoint_its_killed_process_claimed(kind: str, tmp_path: Path) -> None:
    key = signing_key()
    ring = KeyRing([key])
    mine, theirs = tmp_path / "sts-a", tmp_path / "sts-b"
    now = float(int(time.time()))  # Redis expires the claim in real time

    async def main() -> None:
        async with chain(kind, tmp_path) as (store, where, redis_url):
            for i in range(5):
                await store.append_audit(AuditEvent(kind="token.issued", outcome="ok", jti=f"j{i}"), now=now)
            env = {**os.environ, "PYTHONPATH": str(SRC)}
            child = subprocess.Popen([sys.executable, "-c", CLAIMER, kind, where, redis_url, str(mine), str(now)],
                                     stdout=subprocess.PIPE, env=env)  # fmt: skip
            try:
                assert child.stdout is not None
                line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), timeout=120)
                verdict, holder = line.decode().split()
                assert verdict == "claimed" and holder.startswith("w-")
                # a live claim: another replica and another worker on the same directory both honour it
                replica = AuditCheckpoints(every=5, seconds=3600, data_dir=theirs)
                worker = AuditCheckpoints(every=5, seconds=3600, data_dir=mine)
                for tick in range(1, CLAIM_SECONDS, 7):
                    assert await replica.tick(store, ring, issuer=ISS, now=now + tick) is None
                    assert await worker.tick(store, ring, issuer=ISS, now=now + tick) is None
                assert not worker.writer.locked
            finally:
                child.send_signal(signal.SIGKILL)  # died between claiming and signing
                child.wait(timeout=60)
                if child.stdout is not None:
                    child.stdout.close()
            restarted = AuditCheckpoints(every=5, seconds=3600, data_dir=mine)
            record = await restarted.tick(store, ring, issuer=ISS, now=now + 1)  # its first tick
            assert record is not None and record.kind == CHECKPOINT_KIND and record.detail["seq"] == 5
            assert restarted.writer.holder() == holder
            assert await replica.tick(store, ring, issuer=ISS, now=now + 2) is None  # nothing left to sign
            rows: list[dict[str, Any]] = [r.as_json() for r in await store.audit_records(after=0, limit=100)]
            report = verify_export(rows, keys={key.kid: key.public}, issuer=ISS)
            assert (report.records, report.checkpoints, report.unsigned) == (6, 1, 0)
            restarted.writer.release()

    asyncio.run(main())
