"""The PostgreSQL store behind its circuit breaker, with the database taken away by a TCP proxy.

A real store (fresh schema) reaches the shared PostgreSQL through ``tests/faults.py``'s proxy:
refusing connections opens the circuit on the first failure and every later operation is refused
with ``StoreUnavailable`` without touching the network; SQL errors (a constraint, a cancelled
statement, a deadlock) are answers and leave it closed; a black-holed connection is severed at
the deadline; when the proxy forwards again the store serves by itself, through a new pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from faults import TcpProxy, tcp_proxy
from services import PG_HOST, PG_PORT, REDIS_URL, drop_schema, new_schema, require_postgres_and_redis, schema_dsn
from tether.audit.chain import AuditEvent
from tether.model import Task
from tether.store.circuit import CircuitState
from tether.store.errors import StoreUnavailable
from tether.store.postgres.guard import GuardSettings, is_connectivity, is_overload
from tether.store.postgres.store import PostgresRedisStore

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

EVENT = AuditEvent(kind="test", outcome="ok")


def _task(task_id: str | None = None) -> Task:
    now = int(time.time())
    return Task(id=task_id or "tsk_" + secrets.token_hex(6), agent="spiffe://t/agent", audiences=("https://a.example",),
                scopes=frozenset({"read"}), created_at=now, expires_at=now + 900, max_depth=3, max_tokens=10)  # fmt: skip


@contextlib.asynccontextmanager
async def _store(proxy: TcpProxy, settings: GuardSettings | None = None) -> AsyncIterator[PostgresRedisStore]:
    schema = new_schema()
    store = await PostgresRedisStore.open(
        schema_dsn(schema, port=proxy.port), REDIS_URL, prefix=schema, migrate=True, guard=settings
    )
    try:
        yield store
    finally:
        await store.aclose()
        drop_schema(schema)


async def _eventually(check: Callable[[], Awaitable[bool]], *, timeout: float = 20.0) -> None:
    """Generous: only so that a broken recovery fails instead of hanging."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "the store did not serve again"
        await asyncio.sleep(0.05)


async def _opened(store: PostgresRedisStore) -> bool:
    return store.guard.circuit.state is not CircuitState.CLOSED


async def _serves(store: PostgresRedisStore) -> bool:
    try:
        await store.get_task("tsk_none")
    except StoreUnavailable:
        return False
    return True


def _run(body: Callable[[TcpProxy], Coroutine[None, None, None]]) -> None:
    require_postgres_and_redis()
    with tcp_proxy((PG_HOST, PG_PORT)) as proxy:
        asyncio.run(body(proxy))


def test_refused_connections_open_the_circuit_and_it_closes_by_itself(tmp_path: Path) -> None:
    async def body(proxy: TcpProxy) -> None:
        async with _store(proxy) as store:
            task = _task()
            await store.create_task(task, EVENT)
            await store.ping()
            assert store.guard.circuit.state is CircuitState.CLOSED
            proxy.refuse()
            with pytest.raises(StoreUnavailable):
                await store.get_task(task.id)  # the pooled connection was cut: the first failure
            assert store.guard.circuit.state is not CircuitState.CLOSED
            refused = 0
            for _ in range(50):
                with pytest.raises(StoreUnavailable, match="circuit open"):
                    await store.get_task(task.id)
                refused += 1
            with pytest.raises(StoreUnavailable, match="circuit open"):
                await store.ping()
            with pytest.raises(StoreUnavailable):
                await store.create_task(_task(), EVENT)
            assert refused == 50
            assert store.guard.circuit.openings == 1
            proxy.forward()
            await _eventually(lambda: _serves(store))
            assert store.guard.circuit.state is CircuitState.CLOSED
            got = await store.get_task(task.id)
            assert got is not None and got.id == task.id
            await store.ping()

    _run(body)


def test_sql_errors_are_answers_and_never_open_the_circuit(tmp_path: Path) -> None:
    """A duplicate key, a statement the server cancelled and a deadlock: 503 for that call, circuit closed."""

    async def body(proxy: TcpProxy) -> None:
        async with _store(proxy) as store:
            task = _task()
            await store.create_task(task, EVENT)
            with pytest.raises(StoreUnavailable, match="UniqueViolation"):
                await store.create_task(task, EVENT)
            with pytest.raises(StoreUnavailable, match="QueryCanceled"):
                async with store.guard.connection() as conn, conn.transaction():
                    await conn.execute("SET LOCAL statement_timeout = 20")
                    await conn.execute("SELECT pg_sleep(2)")
            with pytest.raises(StoreUnavailable, match="DivisionByZero"):
                async with store.guard.connection() as conn:
                    await conn.execute("SELECT 1 / 0")
            assert await _deadlock(store) == "DeadlockDetected"
            assert store.guard.circuit.state is CircuitState.CLOSED
            assert store.guard.circuit.openings == 0
            assert await store.get_task(task.id) is not None, "and the store serves on"

    _run(body)


async def _deadlock(store: PostgresRedisStore) -> str:
    """Two transactions that lock two task rows in opposite orders: PostgreSQL kills one."""
    first, second = _task(), _task()
    await store.create_task(first, EVENT)
    await store.create_task(second, EVENT)
    both = asyncio.Barrier(2)

    async def lock(a: str, b: str) -> None:
        async with store.guard.connection() as conn, conn.transaction():
            await conn.execute("SELECT 1 FROM tasks WHERE id = %s FOR UPDATE", (a,))
            await both.wait()
            await conn.execute("SELECT 1 FROM tasks WHERE id = %s FOR UPDATE", (b,))

    results = await asyncio.gather(lock(first.id, second.id), lock(second.id, first.id), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], StoreUnavailable), results
    return type(errors[0].__cause__).__name__


def test_connectivity_is_told_from_answers() -> None:
    """The classification itself, on real exceptions of the driver."""
    assert is_connectivity(psycopg.OperationalError("connection failed: Connection refused"))
    assert is_connectivity(TimeoutError())
    assert is_connectivity(ConnectionResetError())
    assert is_connectivity(psycopg.errors.AdminShutdown())
    assert not is_connectivity(psycopg.errors.UniqueViolation())
    assert not is_connectivity(psycopg.errors.DeadlockDetected()), "an OperationalError by class, but an answer"
    assert not is_connectivity(psycopg.errors.QueryCanceled())
    assert not is_connectivity(psycopg.errors.LockNotAvailable())
    assert not is_connectivity(psycopg.ProgrammingError("the query has 1 placeholder but 2 parameters were passed"))
    assert not is_connectivity(ValueError())
    assert not is_connectivity(PoolTimeout("couldn't get a connection after 5.00 sec")), "a busy pool is load"
    assert not is_connectivity(psycopg.errors.TooManyConnections()), "a full server answered"
    assert is_overload(PoolTimeout()) and is_overload(psycopg.errors.TooManyConnections())
    assert not is_overload(psycopg.OperationalError("connection failed: Connection refused"))


def test_a_black_holed_database_is_cut_at_the_deadline_and_recovers(tmp_path: Path) -> None:
    """Nothing answers: the hung operation is severed at its deadline (it would wait forever, and a
    cancel request would go into the same black hole), the circuit opens, the next ones are refused
    at once; forwarding again, it serves."""

    async def body(proxy: TcpProxy) -> None:
        async with _store(proxy, GuardSettings(deadline=0.5)) as store:
            await store.create_task(_task(), EVENT)
            proxy.blackhole()
            with pytest.raises(StoreUnavailable):  # not a TimeoutError: severed, it failed by itself
                await asyncio.wait_for(store.get_task("tsk_none"), timeout=10.0)
            await _eventually(lambda: _opened(store))  # once a fresh connection cannot get through either
            with pytest.raises(StoreUnavailable, match="circuit open"):
                await store.get_task("tsk_none")
            proxy.forward()
            await _eventually(lambda: _serves(store))

    _run(body)


def test_a_health_check_is_bounded_even_on_a_black_hole(tmp_path: Path) -> None:
    """``/healthz`` asks the store's ping: with nothing answering it gives up within its bound,
    and a late health check alone does not open the circuit (a busy database is not a dead one)."""

    async def body(proxy: TcpProxy) -> None:
        async with _store(proxy, GuardSettings(deadline=30.0, ping_timeout=0.3)) as store:
            await store.ping()
            proxy.blackhole()
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(store.ping(), timeout=4.0)
            assert store.guard.circuit.state is CircuitState.CLOSED
            proxy.forward()
            await _eventually(lambda: _pings(store))

    _run(body)


async def _pings(store: PostgresRedisStore) -> bool:
    try:
        await store.ping()
    except StoreUnavailable:
        return False
    return True


def test_a_health_check_on_a_busy_pool_does_not_open_the_circuit(tmp_path: Path) -> None:
    """Every connection in use: ``/healthz`` gives up within its bound (503) and the circuit stays
    closed, since the database answers; once the connection is back the health check passes."""

    async def body(proxy: TcpProxy) -> None:
        async with _store(proxy, GuardSettings(max_size=1, ping_timeout=0.2)) as store:
            release = asyncio.Event()
            holder = await _hold_the_only_connection(store, release)
            with pytest.raises(StoreUnavailable, match="PoolTimeout"):
                await store.ping()
            assert store.guard.circuit.state is CircuitState.CLOSED
            release.set()
            await holder
            await store.ping()

    _run(body)


async def _hold_the_only_connection(store: PostgresRedisStore, release: asyncio.Event) -> asyncio.Task[None]:
    """A task holding a pooled connection (used once) until ``release`` is set; returns once it holds it."""
    held = asyncio.Event()

    async def hold() -> None:
        async with store.guard.connection() as conn:
            await conn.execute("SELECT 1")
            held.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await held.wait()
    return holder


async def _settled(store: PostgresRedisStore) -> None:
    """Wait for the reachability check a late or starved operation started, if any (bounded)."""
    checker = store.guard._checker
    if checker is not None:
        await asyncio.wait_for(asyncio.shield(checker), timeout=20.0)


def test_a_lock_held_past_the_deadline_is_an_sql_error_not_an_outage(tmp_path: Path) -> None:
    """Another replica's (or an operator's) transaction holds ``audit_head`` longer than the client
    deadline: the server ends the waiting statement itself (``lock_timeout``, 55P03) — a 503 for that
    request, the circuit stays closed, nothing is left waiting on the server — and once the lock is
    released the same store appends again (positive control)."""

    async def body(proxy: TcpProxy) -> None:
        async with _store(proxy, GuardSettings(deadline=1.0)) as store:
            await store.append_audit(EVENT, now=time.time())
            async with await psycopg.AsyncConnection.connect(store.guard.dsn) as blocker:
                await blocker.execute("SELECT * FROM audit_head FOR UPDATE")
                with pytest.raises(StoreUnavailable, match="LockNotAvailable"):
                    await asyncio.wait_for(store.append_audit(EVENT, now=time.time()), timeout=10.0)
                await _settled(store)
                assert store.guard.circuit.state is CircuitState.CLOSED
                assert store.guard.circuit.openings == 0
                cur = await blocker.execute(
                    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                    " WHERE c.relname = 'audit_head' AND NOT l.granted"
                )
                assert await cur.fetchone() == (0,), "a statement still waits on the server"
                await blocker.rollback()
            await store.append_audit(EVENT, now=time.time())

    _run(body)


def test_an_overdue_operation_on_a_live_database_does_not_open_the_circuit(tmp_path: Path) -> None:
    """Each statement under the server's limits, the operation as a whole past the deadline: it is cut
    (503), but a fresh connection reaches the database, so the circuit stays closed and serves on."""

    async def body(proxy: TcpProxy) -> None:
        async with _store(proxy, GuardSettings(deadline=1.0)) as store:
            with pytest.raises(StoreUnavailable):
                async with store.guard.connection() as conn:
                    for _ in range(3):
                        await conn.execute("SELECT pg_sleep(0.5)")
            await _settled(store)
            assert store.guard.circuit.state is CircuitState.CLOSED
            assert store.guard.circuit.openings == 0
            assert await _serves(store)

    _run(body)


def test_a_starved_pool_fails_the_request_but_does_not_open_the_circuit(tmp_path: Path) -> None:
    """No pooled connection in time (load, or a flood holding them): that request gets 503, but the
    database answers a fresh connection, so the pool of healthy connections is not closed; once the
    connection is back, requests are served (positive control)."""

    async def body(proxy: TcpProxy) -> None:
        async with _store(proxy, GuardSettings(max_size=1, acquire=0.2)) as store:
            release = asyncio.Event()
            holder = await _hold_the_only_connection(store, release)
            pool = store.pool
            with pytest.raises(StoreUnavailable, match="PoolTimeout"):
                await store.get_task("tsk_none")
            await _settled(store)
            assert store.guard.circuit.state is CircuitState.CLOSED
            assert store.guard.circuit.openings == 0
            release.set()
            await holder
            assert store.pool is pool, "the pool was closed and replaced"
            assert await _serves(store)

    _run(body)


def test_a_starved_pool_on_a_dead_database_does_open_the_circuit(tmp_path: Path) -> None:
    """The same starved pool while the database refuses connections: the fresh connection cannot get
    through either, so the circuit opens and later requests are refused at once."""

    async def body(proxy: TcpProxy) -> None:
        async with _store(proxy, GuardSettings(max_size=1, acquire=0.2)) as store:
            release = asyncio.Event()
            holder = await _hold_the_only_connection(store, release)
            proxy.refuse()  # also cuts the held connection, unused until released
            with pytest.raises(StoreUnavailable):
                await store.get_task("tsk_none")
            await _eventually(lambda: _opened(store))
            release.set()
            with contextlib.suppress(StoreUnavailable):
                await holder
            with pytest.raises(StoreUnavailable, match="circuit open"):
                await store.get_task("tsk_none")

    _run(body)
