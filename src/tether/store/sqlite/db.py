"""SQLite connections and versioned migrations.

A statement runs inline on the calling thread's own connection with a busy timeout of a few
milliseconds: in WAL mode with ``synchronous=NORMAL`` that is cheaper than a thread hop. When
another process holds the write lock the attempt fails before changing anything and is retried
on a worker thread that may wait. ``PASSIVE`` WAL checkpoints go to that worker every
``_CHECKPOINT_EVERY`` commits, leaving little to copy in the request path. Any sqlite3 failure
is ``StoreUnavailable`` (fail closed).

Group commits (``run_batched``) never wait for the write lock on the event loop: with
``tether serve --workers N`` every worker commits its own batches to one file, and a
``BEGIN IMMEDIATE`` that slept in SQLite's busy handler (1 ms, then 2 ms, ...) stopped every
request of that worker meanwhile. The batch's ``BEGIN`` is tried without waiting; while another
process holds the lock the batch stays open on the loop and is tried again a millisecond
later, the writes that arrive meanwhile join it (one commit for more of them: waiting
becomes batching), and only a batch kept waiting ``_LOOP_WAIT_S`` (a long transaction
elsewhere) moves to the worker thread. Each of these is counted in ``tether_store_lock_waits``
(``/metrics``).

A write waits for the lock ``_WORKER_BUSY_MS`` in all, counted from its first attempt, then
fails closed (``StoreUnavailable``): the one worker thread runs what was moved to it in turn,
and with a wait of its own for each, the writes queued behind a lock held for minutes (an
operator's ``sqlite3`` shell, a stuck process) waited one full wait per write ahead of them,
for hours, while the health check still answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import TypeVar

from prometheus_client import Counter

from tether.metrics import REGISTRY
from tether.store.errors import StoreError, StoreUnavailable

__all__ = ["LOCK_WAITS", "LOCK_WAIT_SECONDS", "SCHEMA_VERSION", "Database", "migrations"]

T = TypeVar("T")
_INLINE_BUSY_MS = 5
_WORKER_BUSY_MS = 10_000
_CHECKPOINT_EVERY = 50
_AUTOCHECKPOINT_PAGES = 4000
#: a group commit finding the write lock held tries again after this long, on the event loop
_RETRY_S = 0.001
#: ... until it has waited this long; then the worker thread waits for the lock instead
_LOOP_WAIT_S = 0.05

#: where a write that found another connection holding the write lock went: ``deferred`` (a
#: group commit tried again later on the event loop, its batch still open), ``moved_batch`` (a
#: group commit kept waiting ``_LOOP_WAIT_S``, to the worker thread), ``moved_statement`` (a
#: single statement, after its inline busy timeout, to the worker thread)
LOCK_WAITS = Counter(
    "tether_store_lock_waits",
    "SQLite writes that found another connection (another process) holding the write lock, by where they went",
    ["outcome"],
    registry=REGISTRY,
)
LOCK_WAIT_SECONDS = Counter(
    "tether_store_lock_wait_seconds",
    "Seconds SQLite group commits waited for the write lock on the event loop (the loop served requests meanwhile)",
    registry=REGISTRY,
)
_DEFERRED = LOCK_WAITS.labels(outcome="deferred")
_MOVED_BATCH = LOCK_WAITS.labels(outcome="moved_batch")
_MOVED_STATEMENT = LOCK_WAITS.labels(outcome="moved_statement")


def migrations() -> list[tuple[int, str]]:
    """The packaged migrations as ``(version, sql)``, in order."""
    folder = resources.files("tether.store.sqlite") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(found)


SCHEMA_VERSION = migrations()[-1][0]


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class Database:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tether-sqlite")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._since_checkpoint = 0
        self._checkpointing = threading.Event()  # a checkpoint is queued or running on the worker

    def _connect(self, busy_ms: int) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=busy_ms / 1000)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={busy_ms}")
            if busy_ms == _INLINE_BUSY_MS:
                conn.execute(f"PRAGMA wal_autocheckpoint={_AUTOCHECKPOINT_PAGES}")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, inline: bool = True) -> T:
        """Run ``fn(connection)`` inline (short statements: cheaper than a thread hop); on a
        lock held by another process, or with ``inline=False`` (scans and bulk work that
        would stall every request in flight), on the worker thread."""
        if inline:
            self._count_inline()
            try:
                return fn(self._connect(_INLINE_BUSY_MS))
            except StoreError:
                raise
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise StoreUnavailable(f"sqlite: {exc}") from exc
                _MOVED_STATEMENT.inc()
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"sqlite: {type(exc).__name__}: {exc}") from exc
        try:
            work = asyncio.get_running_loop().run_in_executor(self._executor, self._call, fn, time.monotonic())
        except RuntimeError as exc:  # submitting to a shut-down executor: the store was closed
            raise StoreUnavailable("sqlite: the store is closed") from exc
        return await work

    async def run_batched(
        self,
        fn: Callable[[sqlite3.Connection], T],
        *,
        kept: Callable[[sqlite3.Connection], object] | None = None,
        refuses_first: bool = False,
    ) -> T:
        """Run ``fn`` inside one transaction shared by every write queued in this loop iteration
        (and, while another process holds the write lock, every write queued until it is free).

        Group commit: concurrent issuances pay for one ``COMMIT`` together. Each write runs
        in its own ``SAVEPOINT``, so a write that refuses (a ``StoreError``) is rolled back
        alone and the others commit; a response is only sent after its batch committed,
        so durability is what it was with one transaction per write.

        ``kept`` runs first and must be one statement (SQLite undoes a failed statement by
        itself, so it needs no savepoint): what it wrote commits with the batch even if ``fn``
        then refuses (a DPoP proof, once checked, stays spent). If ``kept`` refuses, ``fn``
        does not run. ``refuses_first``: ``fn`` refuses only before its first write (its
        checks read, or write nothing when they fail), so it runs without a savepoint too —
        two statements fewer each, a fifth of an issuance's.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        batch: _Batch | None = getattr(self._local, "batch", None)
        if batch is None:
            batch = self._local.batch = []
        batch.append((kept, fn, refuses_first, future))  # type: ignore[arg-type]
        if len(batch) == 1:
            loop.call_soon(self._flush, None)
        return await future

    def _count_inline(self) -> None:
        self._since_checkpoint += 1
        if self._since_checkpoint >= _CHECKPOINT_EVERY and not self._checkpointing.is_set():
            self._since_checkpoint = 0
            self._checkpointing.set()
            try:
                self._executor.submit(self._checkpoint)
            except RuntimeError:  # the store is closing
                self._checkpointing.clear()

    def _checkpoint(self) -> None:
        # best effort: a failed or partial checkpoint is completed by the next one
        try:
            with contextlib.suppress(sqlite3.Error):
                self._connect(_WORKER_BUSY_MS).execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            self._checkpointing.clear()

    def _flush(self, waiting_since: float | None) -> None:
        """Commit the open batch, or leave it open for the writes still arriving while another
        process holds the write lock (``waiting_since``: when this batch first found it held)."""
        batch: _Batch | None = getattr(self._local, "batch", None)
        if not batch:  # the store was closed meanwhile (its batch failed then)
            return
        loop = asyncio.get_running_loop()
        try:
            conn = self._connect(_INLINE_BUSY_MS)
            begun = _begin_now(conn)
        except sqlite3.Error as exc:
            self._local.batch = []
            _fail(batch, StoreUnavailable(f"sqlite: {type(exc).__name__}: {exc}"))
            return
        now = time.monotonic()
        if not begun and (waiting_since is None or now - waiting_since < _LOOP_WAIT_S):
            _DEFERRED.inc()
            loop.call_later(_RETRY_S, self._flush, now if waiting_since is None else waiting_since)
            return
        if waiting_since is not None:
            LOCK_WAIT_SECONDS.inc(now - waiting_since)
        self._local.batch = []
        since = now if waiting_since is None else waiting_since
        if not begun:
            _MOVED_BATCH.inc()
            self._to_worker(batch, since)
            return
        self._count_inline()
        try:
            outcomes = _run_batch(conn, batch, begun=True)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):  # rolled back; a lock lost mid-batch is waited for on the worker
                _fail(batch, StoreUnavailable(f"sqlite: {exc}"))
                return
            _MOVED_BATCH.inc()
            self._to_worker(batch, since)
            return
        except sqlite3.Error as exc:
            _fail(batch, StoreUnavailable(f"sqlite: {type(exc).__name__}: {exc}"))
            return
        except Exception as exc:  # noqa: BLE001 - a write's own error, rolled back with its batch: every caller gets it
            # (raised out of this loop callback, it reached no caller, and the batch's callers waited forever)
            _fail(batch, exc)
            return
        _resolve(batch, outcomes)

    def _to_worker(self, batch: _Batch, since: float) -> None:
        try:
            worker = asyncio.get_running_loop().run_in_executor(self._executor, self._flush_on_worker, batch, since)
        except RuntimeError:  # the store is closed
            _fail(batch, StoreUnavailable("sqlite: the store is closed"))
            return
        worker.add_done_callback(lambda done: _deliver(batch, done))

    def _flush_on_worker(self, batch: _Batch, since: float) -> list[tuple[bool, object]]:
        try:
            conn = self._connect(_WORKER_BUSY_MS)
            with _waiting_from(conn, since):
                return _run_batch(conn, batch)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite: {type(exc).__name__}: {exc}") from exc

    def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return self._executor.submit(self._call, fn, None).result()

    def _call(self, fn: Callable[[sqlite3.Connection], T], since: float | None) -> T:
        """``fn`` on the worker thread; ``since``: when it was handed over (its wait for the lock is counted from then)."""
        try:
            conn = self._connect(_WORKER_BUSY_MS)
            if since is None:
                return fn(conn)
            with _waiting_from(conn, since):
                return fn(conn)
        except StoreError:
            raise
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        pending: _Batch | None = getattr(self._local, "batch", None)
        if pending:  # a group commit still waiting for another process's write lock
            _fail(pending, StoreUnavailable("sqlite: the store is closed"))
        self._executor.shutdown(wait=True)
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()


_Step = Callable[[sqlite3.Connection], object]
_Batch = list[tuple[_Step | None, _Step, bool, "asyncio.Future[object]"]]


@contextmanager
def _waiting_from(conn: sqlite3.Connection, since: float) -> Iterator[None]:
    """The worker connection waits for the lock only what is left of ``_WORKER_BUSY_MS`` since
    ``since``: a write's wait is bounded by its own arrival, not by the writes queued on the
    worker before it. With nothing left, a write that finds the lock held fails at once (a read,
    or a write finding it free, still runs)."""
    left = max(0, _WORKER_BUSY_MS - int((time.monotonic() - since) * 1000))
    conn.execute(f"PRAGMA busy_timeout={left}")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA busy_timeout={_WORKER_BUSY_MS}")


def _begin_now(conn: sqlite3.Connection) -> bool:
    """``BEGIN IMMEDIATE`` without waiting: False (and nothing begun) while another connection
    holds the write lock."""
    conn.execute("PRAGMA busy_timeout=0")
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if not _is_busy(exc):
            raise
        return False
    finally:
        conn.execute(f"PRAGMA busy_timeout={_INLINE_BUSY_MS}")
    return True


def _run_batch(conn: sqlite3.Connection, batch: _Batch, *, begun: bool = False) -> list[tuple[bool, object]]:
    """One transaction (already ``begun``, or begun here), one savepoint per step; returns
    ``(ok, value or StoreError)`` per write."""
    outcomes: list[tuple[bool, object]] = []
    with transaction(conn, begun=begun):
        for kept, fn, refuses_first, _ in batch:
            try:
                if kept is not None:
                    kept(conn)
                value = fn(conn) if refuses_first else _savepoint(conn, fn)
            except StoreError as refusal:
                outcomes.append((False, refusal))
            else:
                outcomes.append((True, value))
    return outcomes


def _savepoint(conn: sqlite3.Connection, step: _Step) -> object:
    """Run ``step`` in a savepoint: kept if it returns, undone alone if it refuses (``StoreError``)."""
    conn.execute("SAVEPOINT write")
    try:
        value = step(conn)
    except StoreError:
        conn.execute("ROLLBACK TO write")
        conn.execute("RELEASE write")
        raise
    conn.execute("RELEASE write")
    return value


def _resolve(batch: _Batch, outcomes: list[tuple[bool, object]]) -> None:
    for (_, _, _, future), (ok, value) in zip(batch, outcomes, strict=True):
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            assert isinstance(value, BaseException)
            future.set_exception(value)


def _fail(batch: _Batch, exc: BaseException) -> None:
    for _, _, _, future in batch:
        if not future.done():
            future.set_exception(exc)


def _deliver(batch: _Batch, done: asyncio.Future[list[tuple[bool, object]]]) -> None:
    exc = done.exception()
    if exc is not None:
        _fail(batch, exc)
    else:
        _resolve(batch, done.result())


@contextmanager
def transaction(conn: sqlite3.Connection, *, begun: bool = False) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` (unless already ``begun``) … ``COMMIT``; rolled back on any error."""
    if not begun:
        conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def schema_version(conn: sqlite3.Connection) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply every packaged migration newer than the database; returns the versions applied."""
    applied = []
    with transaction(conn):
        current = schema_version(conn)
        for version, sql in migrations():
            if version > current:
                for statement in sql.split(";\n"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                applied.append(version)
    return applied
