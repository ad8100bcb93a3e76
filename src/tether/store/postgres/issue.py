"""Issuance on PostgreSQL in group commits: the issuances a process has queued share one transaction.

Each issuance locks its task's row (the ``max_tokens`` count) and the one ``audit_head`` row
(the hash chain) until its ``COMMIT``, and a ``COMMIT`` waits for the WAL to reach the disk.
With a transaction per issuance, every issuance of a task — and through ``audit_head`` every
issuance of the deployment — queued behind one disk flush and a dozen round trips, each of
them a turn of a busy event loop: about 100 hop exchanges a second on the bench machine
whatever the number of workers or replicas (``tether bench --only scaling``). Here a process
queues its issuances, and one transaction writes all those that arrived while the previous
one ran, in two round trips (psycopg pipeline mode): the locks and the reads, then the writes
and the ``COMMIT``. The locks, the flush and the round trips are paid once per batch, like the
SQLite store's group commit, and a lock is held for one round trip and the flush.

Every issuance keeps the semantics of ``Store.issue_token``: its refusals are decided alone,
in the documented order (spends, parent, blocks, task), and a refused issuance leaves nothing
behind — the identity marks it spent are removed again before the commit. Issuances that
spend the same mark never share a batch (the later one waits for the next), so one of them
wins as it would have on its own. If the database fails, the batch commits nothing and every
caller in it gets ``StoreUnavailable``.

Locks are taken in the store's one order, all in the first round trip: the kill switch's
advisory lock (shared, ``BLOCKS_LOCK``), the tasks' advisory locks (shared, sorted), the spent
marks (sorted), the task rows (sorted as ``block`` sorts them), the parent token rows (shared,
sorted as a revocation locks a lineage), and ``audit_head`` last.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from tether.audit.chain import AuditRecord, link
from tether.model import TaskState
from tether.store.errors import (
    AlreadySpent,
    Blocked,
    CapReached,
    Conflict,
    ParentRevoked,
    StoreUnavailable,
    TaskNotActive,
)
from tether.store.protocol import Issuance
from tether.store.rows import AUDIT_COLUMNS, TASK_COLUMNS, TOKEN_COLUMNS, audit_values, block_names, task_from_row
from tether.store.rows import token_values as _token_values

__all__ = ["BLOCKS_LOCK", "MAX_BATCH", "MAX_BATCH_TASKS", "TASK_LOCKS", "IssueQueue", "task_key"]

Conn = psycopg.AsyncConnection[Any]
Connect = Callable[[], contextlib.AbstractAsyncContextManager[Conn]]

#: the advisory-lock namespace of tasks (the first key of ``pg_advisory_xact_lock(int, int)``)
TASK_LOCKS = 0x7E7E
#: the most issuances one transaction writes; more wait for the next
MAX_BATCH = 256
#: the most tasks one transaction issues for: each takes a shared advisory lock, a slot of
#: PostgreSQL's lock table (``max_locks_per_transaction``, 64 per connection by default, shared
#: by all), so 256 tasks in one batch could leave other transactions "out of shared memory"
MAX_BATCH_TASKS = 64
#: the kill switch's advisory lock (``pg_advisory_xact_lock(int, int)``): a batch holds it shared
#: from before it reads the blocks until its commit, ``Store.block`` exclusive from before it
#: writes its block until its commit. A batch that read the blocks before a block committed
#: then commits before that block looks for the principal's tokens (and they are revoked), and
#: one that waits reads the committed block (and refuses). Without it, a batch could read the
#: blocks just before a block's commit and write its token just after the block had revoked the
#: principal's tokens: a token for a blocked principal, valid until it expires.
BLOCKS_LOCK = (0x7E81, 0)

# column positions in TASK_COLUMNS
_EXPIRES_AT, _MAX_TOKENS, _TOKENS_ISSUED, _STATE = 7, 9, 10, 11


def _insert_rows(table: str, columns: str, types: Sequence[str]) -> str:
    """One ``INSERT`` of many rows, a typed array per column: one message, where ``executemany``
    sends one per row."""
    assert len(types) == len(columns.split(", "))
    return f"INSERT INTO {table} ({columns}) SELECT * FROM unnest({', '.join(f'%s::{t}[]' for t in types)})"


_INSERT_TOKENS = _insert_rows("tokens", TOKEN_COLUMNS, ("text",) * 9 + ("bigint", "bigint", "int", "bigint", "text"))
_INSERT_AUDIT = _insert_rows("audit", AUDIT_COLUMNS, ("bigint", "float8") + ("text",) * 9)


def _columns(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)]


def task_key(task_id: str) -> int:
    """A task's advisory-lock key: 32 bits of SHA-256 (a collision only makes two tasks share a queue)."""
    return int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:4], "big", signed=True)


@dataclass
class _Queued:
    issuance: Issuance
    now: float
    future: asyncio.Future[None]
    fresh: list[str] = field(default_factory=list)  # the marks this issuance spent in its batch


class IssueQueue:
    """A process's issuances, written in group commits over connections from ``connect``."""

    def __init__(
        self,
        connect: Connect,
        *,
        limit: int = MAX_BATCH,
        committed: Callable[[Sequence[AuditRecord]], None] = lambda records: None,
    ) -> None:
        self._connect = connect
        self._limit = limit
        self._committed = committed  # told each batch's audit records once it committed
        self._queue: list[_Queued] = []
        self._draining: asyncio.Task[None] | None = None

    async def issue(self, issuance: Issuance, *, now: float) -> None:
        """Queue ``issuance`` and wait until its batch committed (or refused it)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.append(_Queued(issuance, now, future))
        if self._draining is None:  # starts next turn of the loop: the issuances queued in this one join
            self._draining = loop.create_task(self._drain(), name="tether-postgres-issue")
        await future

    async def aclose(self) -> None:
        """Stop writing: the issuances still queued are refused with ``StoreUnavailable``."""
        draining, self._draining = self._draining, None
        if draining is not None:
            draining.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await draining
        queued, self._queue = self._queue, []
        _fail(queued, StoreUnavailable("postgresql: the store is closed"))

    async def _drain(self) -> None:
        batch: list[_Queued] = []
        try:
            while self._queue:
                batch = self._take()
                try:
                    await self._commit(batch)
                except Exception as exc:  # noqa: BLE001 - every caller of the batch gets its failure
                    _fail(batch, exc)
        except asyncio.CancelledError:
            _fail(batch, StoreUnavailable("postgresql: the store is closed"))
            raise
        finally:
            if self._draining is asyncio.current_task():
                self._draining = None

    def _take(self) -> list[_Queued]:
        """The next batch: in arrival order, up to the limit and ``MAX_BATCH_TASKS`` tasks, never
        two issuances spending one mark."""
        batch: list[_Queued] = []
        later: list[_Queued] = []
        marks: set[str] = set()
        tasks: set[str] = set()
        for queued in self._queue:
            if queued.future.done():  # its caller is gone: nothing to issue to
                continue
            keys = {key for key, _ in queued.issuance.spends}
            task = queued.issuance.token.task_id
            new_task = task is not None and task not in tasks
            if len(batch) >= self._limit or not marks.isdisjoint(keys) or (new_task and len(tasks) >= MAX_BATCH_TASKS):
                later.append(queued)
                continue
            marks |= keys
            if task is not None:
                tasks.add(task)
            batch.append(queued)
        self._queue = later
        return batch

    async def _commit(self, batch: list[_Queued]) -> None:
        async with self._connect() as conn:
            try:
                refusals, records = await _write(conn, batch)
            except Exception:
                with contextlib.suppress(psycopg.Error):
                    await conn.execute("ROLLBACK")
                raise
        self._committed(records)
        for queued in batch:
            if queued.future.done():
                continue
            refusal = refusals.get(id(queued))
            if refusal is None:
                queued.future.set_result(None)
            else:
                queued.future.set_exception(refusal)


async def _write(conn: Conn, batch: list[_Queued]) -> tuple[dict[int, Conflict], list[AuditRecord]]:
    """One transaction for ``batch``; returns each refused issuance's refusal (by ``id``) and the
    audit records it committed."""
    tasks = sorted({t for q in batch if (t := q.issuance.token.task_id) is not None})
    parents = sorted({p for q in batch if (p := q.issuance.token.parent_jti) is not None})
    # in one order in every process: two batches inserting the same marks in arrival order each
    # waited for the other's uncommitted mark, and PostgreSQL ended one of them as a deadlock
    spends = dict(sorted({key: until for q in batch for key, until in q.issuance.spends}.items()))
    names = sorted({n for q in batch for n in _names(q.issuance)})
    # a mark counts as expired against the batch's earliest clock: never freed early
    earliest = int(min(q.now for q in batch))
    async with conn.pipeline() as pipeline:
        await conn.execute("BEGIN")
        await conn.execute("SELECT pg_advisory_xact_lock_shared(%s, %s)", BLOCKS_LOCK)
        if tasks:
            await conn.execute(
                "SELECT count(pg_advisory_xact_lock_shared(%s, k)) FROM (SELECT unnest(%s::int[]) AS k ORDER BY 1) AS keys",
                (TASK_LOCKS, sorted({task_key(t) for t in tasks})),
            )
        spent = None
        if spends:
            spent = await conn.execute(
                "INSERT INTO spent (key, until) SELECT * FROM unnest(%s::text[], %s::bigint[])"
                " ON CONFLICT (key) DO UPDATE SET until = excluded.until WHERE spent.until <= %s RETURNING key",
                (list(spends), list(spends.values()), earliest),
            )
        task_rows = None
        if tasks:
            task_rows = await conn.execute(
                f'SELECT {TASK_COLUMNS} FROM tasks WHERE id = ANY(%s) ORDER BY id COLLATE "C" FOR NO KEY UPDATE', (tasks,)
            )
        parent_rows = None
        if parents:
            parent_rows = await conn.execute(
                'SELECT jti, revoked_at FROM tokens WHERE jti = ANY(%s) ORDER BY jti COLLATE "C" FOR SHARE', (parents,)
            )
        blocked_rows = None
        if names:
            blocked_rows = await conn.execute("SELECT DISTINCT value FROM blocks WHERE value = ANY(%s)", (names,))
        head = await conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")  # the last lock
        await pipeline.sync()
        fresh = {r[0] for r in await spent.fetchall()} if spent else set()
        rows = {r[0]: r for r in await task_rows.fetchall()} if task_rows else {}
        revoked = {r[0]: r[1] for r in await parent_rows.fetchall()} if parent_rows else {}
        blocked = {r[0] for r in await blocked_rows.fetchall()} if blocked_rows else set()
        chain = await head.fetchone()
        assert chain is not None

        refusals, accepted, counts = _decide(batch, fresh, rows, revoked, blocked)
        undo = [key for q in batch if id(q) in refusals for key in q.fresh]
        if undo:
            await conn.execute("DELETE FROM spent WHERE key = ANY(%s)", (undo,))
        if counts:
            await conn.execute(
                "UPDATE tasks SET tokens_issued = tokens_issued + c.n FROM unnest(%s::text[], %s::int[]) AS c(id, n)"
                " WHERE tasks.id = c.id",
                (list(counts), list(counts.values())),
            )
        records: list[AuditRecord] = []
        if accepted:
            seq, prev = int(chain[0]), str(chain[1])
            for q in accepted:
                seq += 1
                records.append(record := link(q.issuance.audit, seq=seq, ts=q.now, prev=prev))
                prev = record.hash
            await conn.execute(_INSERT_TOKENS, _columns([_token_values(q.issuance.token) for q in accepted]))
            await conn.execute(_INSERT_AUDIT, _columns([audit_values(r) for r in records]))
            await conn.execute("UPDATE audit_head SET seq = %s, hash = %s WHERE id = 1", (seq, prev))
        await conn.execute("COMMIT")
    return refusals, records


def _fail(batch: Sequence[_Queued], exc: BaseException) -> None:
    """Each waiting caller gets its own exception object (one instance raised in many tasks would
    collect all their tracebacks)."""
    for queued in batch:
        if queued.future.done():
            continue
        if isinstance(exc, StoreUnavailable):
            own = StoreUnavailable(str(exc))
            own.__cause__ = exc
            queued.future.set_exception(own)
        else:
            queued.future.set_exception(exc)


def _names(issuance: Issuance) -> list[str]:
    return block_names(issuance.principals, (issuance.token.sub, issuance.token.client_id))


def _decide(
    batch: Sequence[_Queued],
    fresh: set[str],
    rows: dict[str, Any],
    revoked: dict[str, Any],
    blocked: set[str],
) -> tuple[dict[int, Conflict], list[_Queued], dict[str, int]]:
    """Each issuance's fate, in arrival order: its refusal (``Store.issue_token``'s order) or
    accepted; and how many tokens each task gains."""
    refusals: dict[int, Conflict] = {}
    accepted: list[_Queued] = []
    counts: dict[str, int] = {}
    for q in batch:
        token = q.issuance.token
        seen: set[str] = set()
        refusal: Conflict | None = None
        for key, _ in q.issuance.spends:
            if key in seen or key not in fresh:
                refusal = refusal or AlreadySpent(key)
                continue
            seen.add(key)
            q.fresh.append(key)  # spent here: removed again if this issuance is refused
        parent = token.parent_jti
        if refusal is None and parent is not None and (parent not in revoked or revoked[parent] is not None):
            refusal = ParentRevoked(parent)
        if refusal is None and any(name in blocked for name in _names(q.issuance)):
            refusal = Blocked(token.sub)
        if refusal is None and token.task_id is not None:
            refusal = _task_refusal(rows.get(token.task_id), token.task_id, counts.get(token.task_id, 0), q.now)
        if refusal is not None:
            refusals[id(q)] = refusal
            continue
        accepted.append(q)
        if token.task_id is not None:
            counts[token.task_id] = counts.get(token.task_id, 0) + 1
    return refusals, accepted, counts


def _task_refusal(row: Sequence[Any] | None, task_id: str, taken: int, now: float) -> Conflict | None:
    """Why one more token on this task would be refused (``None``: it is active and below
    ``max_tokens`` with the ``taken`` tokens this batch already counted on it)."""
    if row is not None and row[_STATE] == "active" and row[_EXPIRES_AT] > int(now):
        return None if row[_TOKENS_ISSUED] + taken < row[_MAX_TOKENS] else CapReached(task_id)
    if row is None:
        return TaskNotActive("unknown")
    state = task_from_row(row).effective_state(now)
    return TaskNotActive(state.value) if state is not TaskState.ACTIVE else CapReached(task_id)
