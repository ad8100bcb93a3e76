"""The PostgreSQL connection pool behind a circuit breaker (``tether.store.circuit``).

Without it, a database refusing connections made every request wait the pool's whole timeout
(5 s) before its 503. Here the first operation that cannot reach the database — a refused or lost
connection, a server shutting down — opens the circuit: the pool is closed (which also fails the
requests already queued for a connection), every operation is refused at once with
``StoreUnavailable`` (503 ``temporarily_unavailable``, ``Retry-After``), and one background task
probes with a fresh connection of its own (short timeout, delay doubling up to 1 s). When the
database answers, a new pool is opened and the circuit closes.

An SQL error is an answer: it never opens the circuit. Pooled connections carry server-side
``lock_timeout`` and ``statement_timeout`` below the client deadline, so a statement stuck behind
another transaction's lock comes back as an SQL error (55P03 / 57014), not as a cut connection.
Load is not an outage either: no pooled connection in time (``PoolTimeout``), an operation
overdue or "too many connections" (53300) fail that request only, and open the circuit only if a
fresh connection of the guard's own then cannot reach the server (a black hole, a refusal).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from tether.metrics import STORE_CIRCUIT_OPEN
from tether.store.circuit import Circuit
from tether.store.errors import StoreUnavailable

__all__ = ["UNAVAILABLE", "GuardSettings", "GuardedPool", "is_connectivity", "is_overload", "session_options", "sever"]

log = logging.getLogger("tether.store")

Conn = psycopg.AsyncConnection[Any]
# every database error is "cannot answer now" (503), never a half-handled 500
UNAVAILABLE = (psycopg.Error, PoolTimeout, OSError)
#: libpq's shortest connect timeout (seconds): without one, a connect to a black hole never ends
CONNECT_TIMEOUT = 2
# SQLSTATEs of a server that is going away (class 08 is the connection's own)
_GOING_AWAY = frozenset({"57P01", "57P02", "57P03"})
#: the server answered "too many connections": full, not gone
TOO_MANY_CONNECTIONS = "53300"


def is_connectivity(exc: BaseException) -> bool:
    """Could the operation not reach the database (vs. the database answered with an error)?

    A client-side error with no SQLSTATE (refused, reset, closed), a timeout, a socket error,
    class 08 or a shutting-down server is; a statement the server refused (a constraint, a
    deadlock, a lock or statement timeout) is not, nor is load (``is_overload``).
    """
    if isinstance(exc, OSError):  # TimeoutError included
        return True
    if not isinstance(exc, psycopg.Error) or is_overload(exc):
        return False
    if exc.sqlstate is None:
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    return exc.sqlstate.startswith("08") or exc.sqlstate in _GOING_AWAY


def is_overload(exc: BaseException) -> bool:
    """No pooled connection in time, or the server has no connection slot left: a busy (or
    flooded) database, which answers those it can serve — never a reason to close the pool."""
    return isinstance(exc, PoolTimeout) or (isinstance(exc, psycopg.Error) and exc.sqlstate == TOO_MANY_CONNECTIONS)


def session_options(dsn: str, deadline: float) -> str:
    """The DSN's ``options`` plus server-side lock and statement timeouts below ``deadline``.

    A statement waiting on a lock that another transaction holds (another replica, an operator's
    session) then ends on the server with an SQL error (55P03 at 80 %, 57014 at 90 % of the
    deadline) before the client cuts the connection — an answer, which fails that request only.
    """
    lock_ms, statement_ms = max(1, int(deadline * 800)), max(1, int(deadline * 900))
    given = str(conninfo_to_dict(dsn).get("options") or "")
    return f"{given} -c lock_timeout={lock_ms} -c statement_timeout={statement_ms}".strip()


@dataclass(frozen=True)
class GuardSettings:
    max_size: int = 10
    #: wait for a pooled connection while the circuit is closed
    acquire: float = 5.0
    #: an operation (connection and statements) still running after this long is cut; the server's
    #: own lock and statement timeouts (``session_options``) end a waiting statement before that
    deadline: float = 5.0
    #: a probe (connect and ``SELECT 1``, then the new pool's first connection) and a health check
    probe_timeout: float = 1.0
    ping_timeout: float = 1.0


class _Overdue:
    """What happens when an operation outlives its deadline: its connection is severed (the read it
    waits on fails at once, with no cancel request sent into a network that does not answer) and,
    for requests, a fresh connection checks whether the database is reachable at all."""

    def __init__(self, check: Callable[[], None] | None) -> None:
        self.check = check
        self.conn: Conn | None = None
        self.fired = False
        #: the operation ended (its connection is going back to the pool): too late to fire
        self.done = False

    def fire(self) -> None:
        if self.done:
            return
        self.fired = True
        if self.conn is not None:
            sever(self.conn)
        if self.check is not None:
            self.check()


def sever(conn: Conn) -> None:
    """Shut the connection's socket down under libpq: whatever waits on it fails now."""
    with contextlib.suppress(OSError, psycopg.Error), socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


class GuardedPool:
    """A psycopg pool that exists only while the circuit is closed."""

    def __init__(self, dsn: str, settings: GuardSettings | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.dsn = dsn
        self.settings = settings or GuardSettings()
        self.circuit = Circuit(clock=clock)
        self._pool: AsyncConnectionPool[Any] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._checker: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def _new_pool(self) -> AsyncConnectionPool[Any]:
        return AsyncConnectionPool(
            self.dsn, min_size=1, max_size=self.settings.max_size, open=False, timeout=self.settings.acquire,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT,
                    "options": session_options(self.dsn, self.settings.deadline)},
        )  # fmt: skip

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        if self._pool is None:
            raise StoreUnavailable("postgresql: unreachable (circuit open)")
        return self._pool

    async def open(self, *, timeout: float) -> None:
        """Open the pool and wait for its first connection (``StoreUnavailable`` if none in ``timeout``)."""
        pool = self._new_pool()
        try:
            await pool.open(wait=True, timeout=timeout)
        except UNAVAILABLE as exc:
            await pool.close()
            raise StoreUnavailable(f"postgresql: {exc}") from exc
        self._pool = pool
        STORE_CIRCUIT_OPEN.set(0)

    def connection(self, *, bounded: bool = True) -> contextlib.AbstractAsyncContextManager[Conn]:
        """A pooled connection, refused at once while the circuit is open.

        A bounded operation (connection and statements) still running after ``deadline`` has its
        connection severed, and the circuit opens if a fresh connection cannot reach the database
        either; ``bounded=False`` is for migrations, which take what they take: a connection of
        their own, without the pool's server-side timeouts.
        """
        seconds = self.settings.deadline if bounded else None
        return self._connection(seconds, acquire=self.settings.acquire, opens=True)

    async def ping(self) -> None:
        """For ``/healthz``: the circuit's state when open, else ``SELECT 1`` within ``ping_timeout``.

        A health check that merely runs late or finds the pool busy answers 503 and changes nothing.
        """
        seconds = self.settings.ping_timeout
        async with self._connection(seconds, acquire=seconds, opens=False) as conn:
            await conn.execute("SELECT 1")

    @contextlib.asynccontextmanager
    async def _connection(self, seconds: float | None, *, acquire: float, opens: bool) -> AsyncIterator[Conn]:
        pool = self._pool
        if pool is None or not self.circuit.allows():
            raise StoreUnavailable("postgresql: unreachable (circuit open); probing in the background")
        overdue = _Overdue(self._check_reachable if opens else None)
        handle = None if seconds is None else asyncio.get_running_loop().call_later(seconds, overdue.fire)
        try:
            async with self._acquire(pool, bounded=seconds is not None, acquire=acquire) as conn:
                overdue.conn = conn
                try:
                    yield conn
                finally:
                    overdue.conn, overdue.done = None, True  # back to the pool: never sever it, nor check
                    if handle is not None:
                        handle.cancel()
        except UNAVAILABLE as exc:
            if overdue.fired or is_overload(exc):
                if opens:  # late or busy, or unreachable? A fresh connection tells (the overdue asked already)
                    self._check_reachable()
            elif is_connectivity(exc):
                self._failed(exc)  # the database could not be reached: open now
            else:
                self.circuit.succeeded()  # the database answered, with an error
            raise StoreUnavailable(f"postgresql: {type(exc).__name__}: {exc}") from exc
        except Exception:
            self.circuit.succeeded()  # the store's own refusal (a conflict, a block): the database answered
            raise
        else:
            self.circuit.succeeded()
        finally:
            if handle is not None:
                handle.cancel()

    @contextlib.asynccontextmanager
    async def _acquire(self, pool: AsyncConnectionPool[Any], *, bounded: bool, acquire: float) -> AsyncIterator[Conn]:
        if bounded:
            async with pool.connection(timeout=acquire) as conn:
                yield conn
            return
        conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
        try:
            yield conn
        finally:
            await conn.close()

    def _check_reachable(self) -> None:
        """Start the one reachability check (if none runs and the circuit is closed)."""
        if not self.circuit.allows() or (self._checker is not None and not self._checker.done()):
            return
        self._checker = asyncio.create_task(self._reachable(), name="tether-postgres-check")

    async def _reachable(self) -> None:
        """A fresh connection and ``SELECT 1``: only if that cannot reach the server does the circuit open."""
        try:
            await self._select_one()
        except Exception as exc:  # noqa: BLE001 - a check must end quietly whatever happened
            if is_connectivity(exc):
                self._failed(exc)
            else:
                log.debug("postgresql busy, not unreachable: %s: %s", type(exc).__name__, exc)

    async def _select_one(self) -> None:
        # connect_timeout bounds the connect (a cancelled connect would leave its socket to the GC)
        conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
        try:
            async with asyncio.timeout(self.settings.probe_timeout):
                await conn.execute("SELECT 1")
        finally:
            await conn.close()

    def _failed(self, exc: BaseException) -> None:
        if not self.circuit.failed():
            return
        log.warning("postgresql unreachable (%s): refusing requests at once, probing in the background", type(exc).__name__)
        STORE_CIRCUIT_OPEN.set(1)
        old, self._pool = self._pool, None
        if old is not None:  # fails the requests queued for a connection now; stops the pool's own reconnects
            self._spawn_close(old)
        if self._prober is None or self._prober.done():
            self._prober = asyncio.create_task(self._probe_until_closed(), name="tether-postgres-probe")

    def _spawn_close(self, pool: AsyncConnectionPool[Any]) -> None:
        task = asyncio.create_task(pool.close(timeout=1.0), name="tether-postgres-pool-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _probe_until_closed(self) -> None:
        """One probe at a time, until one succeeds; failed probes log at debug level only."""
        while True:
            await asyncio.sleep(self.circuit.probe_in())
            if not self.circuit.start_probe():
                continue
            try:
                pool = await self._probe()
            except Exception as exc:  # noqa: BLE001 - the prober must outlive any one failure, or the store stays shut
                self.circuit.probe_failed()
                level = logging.DEBUG if isinstance(exc, UNAVAILABLE) else logging.ERROR
                log.log(level, "postgresql probe failed: %s: %s", type(exc).__name__, exc)
                continue
            self._pool = pool
            failed, seconds = self.circuit.failed_probes, self.circuit.probe_succeeded()
            STORE_CIRCUIT_OPEN.set(0)
            log.warning("postgresql answers again after %.1f s: serving (%d probes had failed)", seconds, failed)
            return

    async def _probe(self) -> AsyncConnectionPool[Any]:
        """Connect and ``SELECT 1`` on a connection of the probe's own, then open a fresh pool."""
        await self._select_one()
        pool = self._new_pool()
        try:
            await pool.open(wait=True, timeout=self.settings.probe_timeout)
        except BaseException:
            await pool.close(timeout=1.0)
            raise
        return pool

    async def aclose(self) -> None:
        for task in (self._prober, self._checker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        for task in list(self._closing):
            with contextlib.suppress(Exception):
                await task
