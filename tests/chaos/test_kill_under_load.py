"""kill -9 of an STS under hop load (issue 14, chaos suite): no acknowledged token is lost.

A token a client received was committed with its audit record in one transaction before
the answer was sent, so a SIGKILL at any moment may cut requests in flight (the client sees
a dropped connection, nothing was issued or the token is simply never delivered) but never
loses a token the client holds. On SQLite the one STS is killed and restarted on the same
file; on PostgreSQL one of two replicas is killed and the other keeps serving. Afterwards
every token any client received is in the store and in the audit log, ``tether audit verify``
passes, and a positive control is served. (A replica lost between requests is
tests/scaleout/test_replicas.py; a store killed under the STS is tests/scaleout/test_faults.py.)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hopload import WORKERS, HopLoad, audit_records, audit_verify, kill_9, positive_control, restart, sqlite_cluster, with_store
from scalekit import Cluster, cluster

from tether.agent.proof import DPoPKey
from tether.rules.jws import b64url_decode
from tether.store.protocol import Store

pytestmark = [pytest.mark.slow]


def _jti(token: str) -> str:
    return str(json.loads(b64url_decode(token.split(".")[1]))["jti"])


def _missing_from_store(c: Cluster, jtis: set[str]) -> list[str]:
    async def read(store: Store) -> list[str]:
        return [jti for jti in sorted(jtis) if await store.get_token(jti) is None]

    return with_store(c.config, read)


def _kill_under_load(c: Cluster, victim: int) -> tuple[HopLoad, float]:
    """Hop on every replica, SIGKILL replica ``victim`` mid-load; the load keeps running."""
    task = c.task(0, max_tokens=10_000)
    key = DPoPKey()
    session = c.session(task["id"], key)
    load = HopLoad(c, session, key, [r.url for r in c.replicas]).start()
    try:
        load.wait_served(2 * WORKERS)
        kill_9(c.replicas[victim])
    except BaseException:
        load.stop()
        raise
    return load, time.monotonic()


def _no_received_token_lost(c: Cluster, load: HopLoad) -> None:
    answers = load.snapshot()
    assert not [a for a in answers if a.status >= 500], "no 5xx, only answers or dropped connections"
    received = {_jti(a.token) for a in answers if a.token is not None}
    assert len(received) >= 2 * WORKERS
    assert _missing_from_store(c, received) == []
    audited = {r.jti for r in audit_records(c.config) if r.kind == "token.issued"}
    assert received <= audited
    audit_verify(c.config)


def test_kill_9_of_the_sqlite_sts_under_load_loses_no_received_token(tmp_path: Path) -> None:
    with sqlite_cluster(tmp_path) as c:
        load, killed = _kill_under_load(c, 0)
        try:
            load.wait_sent_after(killed, per_worker=1)  # the clients see dropped connections, not answers
            restarting = time.monotonic()
            restart(c, 0)
            load.wait_served(WORKERS, after=time.monotonic())  # the same session is served again
        finally:
            load.stop()
        _no_received_token_lost(c, load)
        down = [a for a in load.snapshot() if killed < a.sent and a.received < restarting]
        assert down and {a.status for a in down} == {0}
        positive_control(c)


@pytest.mark.postgres
@pytest.mark.redis
def test_kill_9_of_one_postgres_replica_under_load_loses_no_received_token(tmp_path: Path) -> None:
    with cluster(tmp_path, replicas=2) as c:
        load, killed = _kill_under_load(c, 0)
        try:
            load.wait_served(WORKERS, after=killed, url=c.replicas[1].url)  # the survivor serves on
        finally:
            load.stop()
        _no_received_token_lost(c, load)
        to_victim = [a for a in load.snapshot() if a.sent > killed and a.url == c.replicas[0].url]
        assert to_victim and {a.status for a in to_victim} == {0}
        positive_control(c, replica=1)
