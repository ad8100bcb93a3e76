"""The PostgreSQL connection pool behind a circuit breaker (``tether.store.circuit``).

Without it, a database refusing connections made every request wait the pool's whole timeout
(5 s) before its 503. Here the first connectivity failure — a refused or lost connection, no
pooled connection in time, an operation overdue — opens the circuit: the pool is closed (which
also fails the requests already queued for a connection), every operation is refused at once
with ``StoreUnavailable`` (503 ``temporarily_unavailable``, ``Retry-After``), and one background
task probes with a fresh connection of its own (short timeout, delay doubling up to 1 s). When
the database answers, a new pool is opened and the circuit closes. An SQL error is an answer:
it never opens the circuit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from tether.metrics import STORE_CIRCUIT_OPEN
from tether.store.circuit import Circuit, CircuitSettings
from tether.store.errors import StoreUnavailable

__all__ = ["UNAVAILABLE", "GuardSettings", "GuardedPool", "is_connectivity", "sever"]

log = logging.getLogger("tether.store")

Conn = psycopg.AsyncConnection[Any]
# every database error is "cannot answer now" (503), never a half-handled 500
UNAVAILABLE = (psycopg.Error, PoolTimeout, OSError)
#: libpq's shortest connect timeout (seconds): without one, a connect to a black hole never ends
CONNECT_TIMEOUT = 2
# SQLSTATEs of a server that is going away or takes no connections (class 08 is the connection's own)
_GOING_AWAY = frozenset({"57P01", "57P02", "57P03", "53300"})


def is_connectivity(exc: BaseException) -> bool:
    """Could the operation not reach the database (vs. the database answered with an error)?

    A client-side error with no SQLSTATE (refused, reset, closed, pool timeout), a timeout,
    a socket error, class 08 or a shutting-down server is; a statement the server refused
    (a constraint, a deadlock, a syntax error) is not.
    """
    if isinstance(exc, OSError):  # TimeoutError included
        return True
    if not isinstance(exc, psycopg.Error):
        return False
    if exc.sqlstate is None:
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    return exc.sqlstate.startswith("08") or exc.sqlstate in _GOING_AWAY


@dataclass(frozen=True)
class GuardSettings:
    max_size: int = 10
    #: wait for a pooled connection while the circuit is closed
    acquire: float = 5.0
    #: an operation (connection and statements) still running after this long counts as unreachable
    deadline: float = 5.0
    #: a probe (connect and ``SELECT 1``, then the new pool's first connection) and a health check
    probe_timeout: float = 1.0
    ping_timeout: float = 1.0
    circuit: CircuitSettings = field(default_factory=CircuitSettings)


class _Overdue:
    """What happens when an operation outlives its deadline: its connection is severed (the read it
    waits on fails at once, with no cancel request sent into a network that does not answer) and,
    for requests, the circuit opens."""

    def __init__(self, failed: Callable[[BaseException], None] | None) -> None:
        self.failed = failed
        self.conn: Conn | None = None
        self.fired = False

    def fire(self) -> None:
        self.fired = True
        if self.conn is not None:
            sever(self.conn)
        if self.failed is not None:
            self.failed(TimeoutError("operation overdue"))


def sever(conn: Conn) -> None:
    """Shut the connection's socket down under libpq: whatever waits on it fails now."""
    with contextlib.suppress(OSError, psycopg.Error), socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


class GuardedPool:
    """A psycopg pool that exists only while the circuit is closed."""

    def __init__(self, dsn: str, settings: GuardSettings | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.dsn = dsn
        self.settings = settings or GuardSettings()
        self.circuit = Circuit(self.settings.circuit, clock=clock)
        self._pool: AsyncConnectionPool[Any] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def _new_pool(self) -> AsyncConnectionPool[Any]:
        return AsyncConnectionPool(
            self.dsn, min_size=1, max_size=self.settings.max_size, open=False, timeout=self.settings.acquire,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT},
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
        connection severed and opens the circuit at once, so that other requests stop waiting;
        ``bounded=False`` is for migrations, which take what they take.
        """
        seconds = self.settings.deadline if bounded else None
        return self._connection(seconds, acquire=self.settings.acquire, opens=True)

    async def ping(self) -> None:
        """For ``/healthz``: the circuit's state when open, else ``SELECT 1`` within ``ping_timeout``.

        A health check that merely runs late on a busy database answers 503 but does not open the circuit.
        """
        seconds = self.settings.ping_timeout
        async with self._connection(seconds, acquire=seconds, opens=False) as conn:
            await conn.execute("SELECT 1")

    @contextlib.asynccontextmanager
    async def _connection(self, seconds: float | None, *, acquire: float, opens: bool) -> AsyncIterator[Conn]:
        pool = self._pool
        if pool is None or not self.circuit.allows():
            raise StoreUnavailable("postgresql: unreachable (circuit open); probing in the background")
        overdue = _Overdue(self._failed if opens else None)
        handle = None if seconds is None else asyncio.get_running_loop().call_later(seconds, overdue.fire)
        try:
            async with pool.connection(timeout=acquire) as conn:
                overdue.conn = conn
                try:
                    yield conn
                finally:
                    overdue.conn = None  # back to the pool: never sever it from here on
        except UNAVAILABLE as exc:
            if not is_connectivity(exc):
                self.circuit.succeeded()  # the database answered, with an error
            elif opens or not (overdue.fired or isinstance(exc, PoolTimeout)):
                self._failed(exc)  # a late health check is not a dead database; a refused connection is
            raise StoreUnavailable(f"postgresql: {type(exc).__name__}: {exc}") from exc
        except Exception:
            self.circuit.succeeded()  # the store's own refusal (a conflict, a block): the database answered
            raise
        else:
            self.circuit.succeeded()
        finally:
            if handle is not None:
                handle.cancel()

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
        timeout = self.settings.probe_timeout
        # connect_timeout bounds the connect (a cancelled connect would leave its socket to the GC)
        conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
        try:
            async with asyncio.timeout(timeout):
                await conn.execute("SELECT 1")
        finally:
            await conn.close()
        pool = self._new_pool()
        try:
            await pool.open(wait=True, timeout=timeout)
        except BaseException:
            await pool.close(timeout=1.0)
            raise
        return pool

    async def aclose(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        for task in list(self._closing):
            with contextlib.suppress(Exception):
                await task
