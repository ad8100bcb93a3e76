"""Revocation wins under load (issue 14 item 1): completing a task, or blocking its agent with the kill
switch, while 16 clients exchange hop tokens for it as fast as the STS serves them.

On PostgreSQL issuance used to lock the parent token row and then the task row, while
completion locked the task and then its tokens: under load the two deadlocked, the
completion answered 503 and the task stayed active. One lock order now serves every path
(the task row, then its tokens, then the audit head), so the completion queues behind the
issuances already holding the task row and then commits. What must hold, on SQLite and on
two PostgreSQL replicas: the completion or block answers 200 (never 503), the task ends
completed or cancelled, every token of the task is revoked in the store and inactive at
every replica, every request sent after the answer is refused, and no token was issued
after the revocation committed (its audit record follows every ``token.issued`` of the
task in the one chain). Each run ends with ``tether audit verify`` and a positive control.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from hopload import (
    WORKERS,
    HopLoad,
    audit_records,
    audit_verify,
    introspect_active,
    positive_control,
    sqlite_cluster,
    with_store,
)
from scalekit import AGENT, Cluster, cluster

from tether.agent.proof import DPoPKey
from tether.rules.jws import b64url_decode
from tether.store.protocol import Store
from tether.store.records import IssuedToken

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def sqlite_sts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with sqlite_cluster(tmp_path_factory.mktemp("chaos-sqlite")) as c:
        yield c


@pytest.fixture(scope="module")
def postgres_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two replicas on a fresh schema and Redis prefix: the load is spread over both."""
    with cluster(tmp_path_factory.mktemp("chaos-pg"), replicas=2) as c:
        yield c


STORES = ["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.redis])]


def _deployment(request: pytest.FixtureRequest, store: str) -> Cluster:
    c: Cluster = request.getfixturevalue("sqlite_sts" if store == "sqlite" else "postgres_pair")
    return c


def _jti(token: str) -> str:
    return str(json.loads(b64url_decode(token.split(".")[1]))["jti"])


def _tokens(c: Cluster, jtis: list[str]) -> list[IssuedToken | None]:
    async def read(store: Store) -> list[IssuedToken | None]:
        return [await store.get_token(jti) for jti in jtis]

    return with_store(c.config, read)


def _revoke_under_load(c: Cluster, action: str) -> None:
    task = c.task(0, max_tokens=10_000)
    key = DPoPKey()
    session = c.session(task["id"], key)
    admin_key, admin = c.admin(0)
    load = HopLoad(c, session, key, [r.url for r in c.replicas]).start()
    try:
        load.wait_served(2 * WORKERS)  # every worker is in its loop: full load
        if action == "complete":
            response = c.api(0, "POST", f"/tasks/{task['id']}/complete", admin, admin_key)
        else:
            response = c.api(0, "POST", "/principals/block", admin, admin_key, json={"agent": AGENT})
        answered = time.monotonic()
        load.wait_sent_after(answered, per_worker=1)
    finally:
        answers = load.stop()

    # the revocation answers 200, not 503, while the load runs
    assert response.status_code == 200, response.text
    served_before = [a for a in answers if a.status == 200 and a.received < answered]
    assert len(served_before) >= WORKERS, "the load was running when the revocation was sent"
    if action == "complete":
        assert response.json()["state"] == "completed"
    else:
        assert task["id"] in response.json()["tasks_cancelled"]
    shown = c.api(1 % len(c.replicas), "GET", f"/tasks/{task['id']}", admin, admin_key)
    assert shown.json()["state"] == ("completed" if action == "complete" else "cancelled")

    # no 5xx under load; every request sent after the answer is refused (invalid_grant)
    assert not [a for a in answers if a.status >= 500 or a.status == 0]
    late = [a for a in answers if a.sent > answered]
    assert late and {(a.status, a.error) for a in late} == {(400, "invalid_grant")}

    # no token issued after the revocation's commit: its record follows every issuance of the task
    records = audit_records(c.config)
    ended_kind = "task.completed" if action == "complete" else "principal.blocked"
    ended = [r for r in records if r.kind == ended_kind and task["id"] in (r.task, *r.detail.get("tasks", ()))]
    assert len(ended) == 1
    issued = [r for r in records if r.kind == "token.issued" and r.task == task["id"]]
    assert issued and max(r.seq for r in issued) < ended[0].seq
    # every token a client received is one of them, and every one of them is revoked in the store
    received = {_jti(a.token) for a in answers if a.token is not None}
    issued_jtis = [str(r.jti) for r in issued]
    assert received <= set(issued_jtis) and _jti(session) in issued_jtis
    stored = _tokens(c, issued_jtis)
    assert all(t is not None and t.revoked_at is not None for t in stored)
    # ... and inactive at every replica (the session and the last tokens served: the store holds the rest)
    last_served = [a.token for a in answers if a.token is not None][-8:]
    for replica in range(len(c.replicas)):
        assert not any(introspect_active(c, replica, token) for token in [session, *last_served])

    audit_verify(c.config)
    if action == "block":
        lifted = c.api(0, "POST", "/principals/unblock", admin, admin_key, json={"agent": AGENT})
        assert lifted.status_code == 200, lifted.text
    positive_control(c, replica=len(c.replicas) - 1)


@pytest.mark.parametrize("store", STORES)
def test_completion_wins_against_16_concurrent_hops(request: pytest.FixtureRequest, store: str) -> None:
    _revoke_under_load(_deployment(request, store), "complete")


@pytest.mark.parametrize("store", STORES)
def test_kill_switch_wins_against_16_concurrent_hops(request: pytest.FixtureRequest, store: str) -> None:
    _revoke_under_load(_deployment(request, store), "block")
