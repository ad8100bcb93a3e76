"""``PostgresRedisStore``: durable state in PostgreSQL, fast expiring state in Redis, for many replicas.

PostgreSQL holds tasks, token lineage, the revocation feed, blocks, single-use marks, signing
keys and the audit chain; Redis holds the DPoP replay cache and announces revocations. Each
security-critical step is one transaction whose row locks make it correct across replicas:
the task row caps ``max_tokens``, ``revocation_head`` numbers the feed in commit order and
``audit_head`` serialises the one chain. One lock order everywhere (``revocation_head``, the
kill switch's advisory lock, task rows, token rows, ``audit_head``), so replicas queue instead of
deadlocking. Database failures
raise ``StoreUnavailable`` (503, fail closed); connections come through ``GuardedPool``, whose
circuit refuses at once while the database is unreachable instead of waiting on a dead pool.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from typing import Any, TypeVar

import psycopg
from psycopg import sql as pgsql
from psycopg_pool import AsyncConnectionPool

from tether.audit.chain import AuditEvent, AuditRecord, link
from tether.model import Approval, ApprovalStatus, Task, TaskState
from tether.rules.replay_epoch import ReplayEpoch
from tether.store import links
from tether.store.errors import (
    Blocked,
    CapReached,
    Conflict,
    NotFound,
    PredatesReplayCache,
    Replayed,
    StoreUnavailable,
    TaskNotActive,
)
from tether.store.notify import Notifier
from tether.store.postgres.guard import GuardedPool, GuardSettings
from tether.store.postgres.issue import BLOCKS_LOCK as _BLOCKS_LOCK
from tether.store.postgres.issue import TASK_LOCKS as _TASK_LOCKS
from tether.store.postgres.issue import IssueQueue
from tether.store.postgres.issue import task_key as _task_key
from tether.store.protocol import Issuance, Store
from tether.store.recent import RecentAudit
from tether.store.records import (
    AgentHolding,
    AuditMark,
    AuditPage,
    Block,
    BlockKind,
    FederationLink,
    IssuedToken,
    LookupResult,
    Revocation,
    RevocationKind,
    StoredKey,
    VaultEntry,
)
from tether.store.redis.cache import RedisCache
from tether.store.rows import (
    ALERT_KIND,
    APPROVAL_COLUMNS,
    APPROVAL_RETENTION,
    AUDIT_COLUMNS,
    AUDIT_COUNTS,
    AUDIT_ENDS,
    AUDIT_MARK_COLUMNS,
    COUNT_TASKS,
    KEY_COLUMNS,
    TASK_COLUMNS,
    TOKEN_COLUMNS,
    VAULT_COLUMNS,
    AuditWindow,
    approval_decision,
    approval_from_row,
    approval_values,
    approvals_query,
    audit_counts_from_rows,
    audit_from_row,
    audit_mark_from_row,
    audit_search,
    audit_values,
    block_names,
    blocks_from_rows,
    check_decision,
    check_held,
    check_page,
    counts_floor,
    holdings_query,
    key_from_row,
    resealed_audit,
    revocation_from_row,
    task_counts,
    task_from_row,
    task_values,
    tasks_query,
    token_from_row,
    vault_from_row,
)

__all__ = ["SCHEMA_VERSION", "PostgresRedisStore", "migrations"]

T = TypeVar("T")

log = logging.getLogger("tether.store")


def migrations() -> list[tuple[int, str]]:
    folder = resources.files("tether.store.postgres") / "migrations"
    found = [(int(e.name.split("_", 1)[0]), e.read_text(encoding="utf-8")) for e in folder.iterdir() if e.name.endswith(".sql")]
    return sorted(found)


SCHEMA_VERSION = migrations()[-1][0]
Conn = psycopg.AsyncConnection[Any]


def _marks(n: int) -> str:
    return ", ".join(["%s"] * n)


async def _append(conn: Conn, event: AuditEvent, now: float) -> AuditRecord:
    cur = await conn.execute("UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash")
    row = await cur.fetchone()
    assert row is not None
    record = link(event, seq=int(row[0]), ts=now, prev=str(row[1]))
    await conn.execute(f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES ({_marks(11)})", audit_values(record))
    await conn.execute("UPDATE audit_head SET hash = %s WHERE id = 1", (record.hash,))
    return record


class _Feed:
    """Entries one transaction publishes; holding one means the transaction holds the feed's head row.

    The head is locked before any other row (``_lock_feed``) and numbered once, at the
    end (``publish``), so entries take their ``seq`` in commit order and publishers queue
    on one lock instead of deadlocking on each other's token and task rows.
    """

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, int]] = []

    def add(self, kind: RevocationKind, value: str, exp: int) -> None:
        self.entries.append((kind.value, value, exp))

    async def publish(self, conn: Conn, now: float) -> None:
        if not self.entries:
            return
        kinds, values, exps = (list(column) for column in zip(*self.entries, strict=True))
        await conn.execute(
            "WITH head AS (UPDATE revocation_head SET seq = seq + %(n)s WHERE id = 1 RETURNING seq)"
            " INSERT INTO revocations (seq, kind, value, exp, at)"
            " SELECT head.seq - %(n)s + e.ord, e.kind, e.value, e.exp, %(at)s FROM head,"
            " unnest(%(kinds)s::text[], %(values)s::text[], %(exps)s::bigint[]) WITH ORDINALITY AS e(kind, value, exp, ord)",
            {"n": len(self.entries), "at": now, "kinds": kinds, "values": values, "exps": exps},
        )
        self.entries = []


def _json_number(key: str) -> str:
    """``detail.key`` as a number when it is one (NULL otherwise: never a cast error)."""
    field = f"(detail::jsonb -> '{key}')"
    return f"(CASE WHEN jsonb_typeof({field}) = 'number' THEN ({field})::text::float8 END)"


async def _lock_feed(conn: Conn) -> _Feed:
    """Lock the feed's head for the rest of the transaction: the first lock of every publisher."""
    await conn.execute("SELECT seq FROM revocation_head WHERE id = 1 FOR UPDATE")
    return _Feed()


async def _spend(conn: Conn, key: str, until: int, now: float) -> bool:
    cur = await conn.execute(
        "INSERT INTO spent (key, until) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET until = excluded.until"
        " WHERE spent.until <= %s",
        (key, until, int(now)),
    )
    return cur.rowcount == 1


_TREE = (
    "WITH RECURSIVE tree(jti) AS (SELECT jti FROM tokens WHERE jti = ANY(%s)"
    " UNION SELECT t.jti FROM tokens t JOIN tree ON t.parent_jti = tree.jti) SELECT jti FROM tree"
)
_LOCK_TOKENS = 'SELECT jti FROM tokens WHERE jti = ANY(%s) ORDER BY jti COLLATE "C" FOR UPDATE'


async def _revoke_jtis(conn: Conn, feed: _Feed, roots: Sequence[str], now: float) -> list[str]:
    """Lock the lineage under ``roots`` until it stops growing, then revoke it and publish each token.

    Each round locks the tokens found in the order a group commit locks the parents it issues
    from (``jti`` in code-point order, ``postgres.issue``): locking the root first and its
    descendants next, a revocation waited for a batch holding a child while the batch waited for
    the root, and PostgreSQL ended one of them as a deadlock. An issuance under a locked token
    waits for this transaction and then finds its parent revoked; one committed before the lock
    was granted is found by the next round's read."""
    tree: set[str] = set()
    while True:
        cur = await conn.execute(_TREE, (list(roots),))
        frontier = sorted({r[0] for r in await cur.fetchall()} - tree)
        if not frontier:
            break
        await conn.execute(_LOCK_TOKENS, (frontier,))
        tree.update(frontier)
    cur = await conn.execute(
        "UPDATE tokens SET revoked_at = %s WHERE jti = ANY(%s) AND revoked_at IS NULL RETURNING jti, exp",
        (int(now), list(tree)),
    )
    revoked = sorted(await cur.fetchall())
    for jti, exp in revoked:
        if exp > now:
            feed.add(RevocationKind.TOKEN, jti, int(exp))
    return [r[0] for r in revoked]


async def _end_task(conn: Conn, feed: _Feed, task: Task, state: TaskState, now: float) -> None:
    await conn.execute("UPDATE tasks SET state = %s, ended_at = %s WHERE id = %s", (state.value, int(now), task.id))
    await conn.execute("UPDATE tokens SET revoked_at = %s WHERE task_id = %s AND revoked_at IS NULL", (int(now), task.id))
    feed.add(RevocationKind.TASK, task.id, task.expires_at)


#: the advisory-lock namespace of a task's approvals: holds on one task queue on it, so the
#: idempotent look-up, the ``max_pending`` count and the insert are one step across replicas
_APPROVAL_LOCKS = 0x7E7F


#: the most tasks one revocation takes advisory locks for: each takes a slot of PostgreSQL's
#: shared lock table (about 64 per connection), so a block of a principal with thousands of
#: tasks relies on the task rows' locks alone (correct, only not queued fairly)
_MAX_TASK_LOCKS = 64


async def _end_tasks(conn: Conn, task_ids: Sequence[str]) -> None:
    """Revocation's exclusive hold on each task's advisory lock, in one statement and one order.

    Issuance holds it shared (``IssueQueue``): issuances never wait for each other on it, and
    PostgreSQL queues a lock request behind an earlier conflicting waiter, so a completion waits
    only for the issuances already in flight, never for the ones that keep arriving (row locks
    do not queue fairly: under a steady stream of hops a completion waiting on the task row
    alone could wait seconds). Correctness rests on the task row's lock; this lock buys fairness."""
    keys = sorted({_task_key(t) for t in task_ids})
    if 0 < len(keys) <= _MAX_TASK_LOCKS:
        await conn.execute(
            "SELECT count(pg_advisory_xact_lock(%s, k)) FROM (SELECT unnest(%s::int[]) AS k ORDER BY 1) AS keys",
            (_TASK_LOCKS, keys),
        )


async def _create_search_schema(conn: Conn) -> None:
    """``tether migrate`` into the first schema of ``search_path`` (e.g. ``options=-csearch_path=tether``)."""
    row = await (await conn.execute("SELECT current_setting('search_path')")).fetchone()
    first = str(row[0]).split(",")[0].strip().strip('"') if row else ""
    if first and first != "$user":
        await conn.execute(pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(pgsql.Identifier(first)))


async def _is_blocked(conn: Conn, *groups: Iterable[str | None]) -> bool:
    unique = block_names(*groups)
    if not unique:
        return False
    cur = await conn.execute("SELECT 1 FROM blocks WHERE value = ANY(%s) LIMIT 1", (unique,))
    return await cur.fetchone() is not None


#: ``block_names(principals, task_principals(task))`` blocked? — with the task's principals read in SQL
_BLOCKED_LOOKUP = (
    "SELECT 1 FROM blocks WHERE value <> '' AND (value = ANY(%s) OR value IN"
    " (SELECT agent FROM tasks WHERE id = %s UNION ALL SELECT on_behalf_of FROM tasks WHERE id = %s)) LIMIT 1"
)

#: exactly ``audience`` among a task's audiences (JSON text): jsonb containment compares whole
#: array elements, so "https://a" never matches "https://ab"
_HAS_AUDIENCE = "a.audiences::jsonb @> jsonb_build_array({mark}::text)"
_COUNT_TASKS = COUNT_TASKS.format(mark="%s")
_HOLDINGS = holdings_query(mark="%s", ordered='t.agent COLLATE "C"')
_AUDIT_COUNTS = AUDIT_COUNTS.format(mark="%s")
_ACTIVE_LINKED = links.ACTIVE_LINKED.format(mark="%s")
_INSERT_LINK = links.INSERT_LINK.format(mark="%s")

#: the advisory-lock namespace of linked tasks: ``link_task`` for one (peer, foreign task, agent)
#: queues on it, so replicas look up and open the linked task as one step
_LINK_LOCKS = 0x7E80


async def _one(conn: Conn, sql: str) -> tuple[Any, ...]:
    """The one row of an aggregate ``SELECT``."""
    row = await (await conn.execute(sql.encode())).fetchone()
    assert row is not None
    return tuple(row)


class PostgresRedisStore(Store):
    def __init__(self, guard: GuardedPool, cache: RedisCache) -> None:
        self.guard = guard
        self.cache = cache
        self._notifier = Notifier()
        self.recent = RecentAudit()
        self._issues = IssueQueue(self._conn, committed=self.recent.add)

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        """The current pool (a new one after each outage); ``StoreUnavailable`` while the circuit is open."""
        return self.guard.pool

    @classmethod
    async def open(cls, dsn: str, redis_url: str, *, prefix: str = "tether", migrate: bool = False,
                   max_size: int = 10, guard: GuardSettings | None = None) -> PostgresRedisStore:  # fmt: skip
        pool = GuardedPool(dsn, guard or GuardSettings(max_size=max_size))
        await pool.open(timeout=10.0)
        store = cls(pool, RedisCache.from_url(redis_url, prefix=prefix))
        try:
            created = await store._check_schema(migrate)
            await store.cache.ping()
            if created:
                await store.cache.begin_empty()
            warning = await store.cache.check_eviction()
            if warning is not None:
                log.warning("%s", warning)
        except BaseException:
            await store.aclose()
            raise
        return store

    async def _check_schema(self, migrate: bool) -> bool:
        """Check (and with ``migrate`` bring up) the schema; True when it was created from nothing."""
        async with self._conn(unbounded=True) as conn, conn.transaction():  # a migration takes what it takes
            await conn.execute("SELECT pg_advisory_xact_lock(8700)")
            if migrate:
                await _create_search_schema(conn)
                await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            exists = await (await conn.execute("SELECT to_regclass('schema_version') IS NOT NULL")).fetchone()
            current = 0
            created = False
            if exists and exists[0]:
                row = await (await conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")).fetchone()
                current = int(row[0]) if row else 0
            if migrate:
                created = current == 0
                for version, sql in migrations():
                    if version > current:
                        await conn.execute(sql.encode())
                        await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
                        current = version
            if current != SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"database schema v{current} does not match v{SCHEMA_VERSION}: run `tether migrate` before serving"
                )
            return created

    def _conn(self, *, unbounded: bool = False) -> contextlib.AbstractAsyncContextManager[Conn]:
        """A connection through the circuit: ``StoreUnavailable`` at once while the database is unreachable.

        Each operation is bounded (an overdue one opens the circuit); ``unbounded`` is for migrations.
        """
        return self.guard.connection(bounded=not unbounded)

    async def ping(self) -> None:
        """Bounded: answered from the circuit while it is open, else ``SELECT 1`` within a second."""
        await self.guard.ping()
        await self.cache.ping()

    async def aclose(self) -> None:
        await self._issues.aclose()
        await self.cache.aclose()
        await self.guard.aclose()

    async def _revoked(self) -> None:
        self._notifier.notify()
        await self.cache.publish_revocation()

    # -- signing keys -------------------------------------------------------------
    async def signing_keys(self, *, now: float) -> list[StoredKey]:
        async with self._conn() as conn:
            cur = await conn.execute(
                f"SELECT {KEY_COLUMNS} FROM signing_keys WHERE not_after IS NULL OR not_after > %s"
                " ORDER BY created_at DESC, ordinal DESC",
                (int(now),),
            )
            return [key_from_row(r) for r in await cur.fetchall()]

    async def add_signing_key(self, key: StoredKey, *, retired: Sequence[StoredKey]) -> None:
        async with self._conn() as conn, conn.transaction():
            await conn.execute("LOCK TABLE signing_keys IN EXCLUSIVE MODE")
            for old in retired:
                cur = await conn.execute(
                    "UPDATE signing_keys SET retired_at = %s, not_after = %s, sealed_private = %s"
                    " WHERE kid = %s AND retired_at IS NULL",
                    (old.retired_at, old.not_after, old.sealed_private, old.kid),
                )
                if cur.rowcount != 1:
                    raise Conflict(f"signing key {old.kid} is not current")
            if await (await conn.execute("SELECT 1 FROM signing_keys WHERE retired_at IS NULL")).fetchone() is not None:
                raise Conflict("another signing key became current")
            await conn.execute(
                "INSERT INTO signing_keys (kid, alg, public_jwk, sealed_private, created_at) VALUES (%s, %s, %s, %s, %s)",
                (key.kid, key.alg, json.dumps(key.public_jwk), key.sealed_private, key.created_at),
            )

    # -- tasks --------------------------------------------------------------------
    async def create_task(self, task: Task, audit: AuditEvent) -> None:
        async with self._conn() as conn, conn.transaction():
            if await _is_blocked(conn, (task.agent, task.on_behalf_of)):
                raise Blocked(task.agent)
            await conn.execute(f"INSERT INTO tasks ({TASK_COLUMNS}) VALUES ({_marks(14)})", task_values(task))
            await _append(conn, audit, task.created_at)

    async def get_task(self, task_id: str) -> Task | None:
        async with self._conn() as conn:
            row = await (await conn.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = %s", (task_id,))).fetchone()
            return task_from_row(row) if row else None

    async def list_tasks(
        self,
        *,
        state: TaskState | None,
        agent: str | None,
        now: float,
        limit: int,
        audience: str | None = None,
        after: str | None = None,
    ) -> list[Task]:
        """Newest first, ties by id in code-point order (the index ``tasks_newest`` of migration 0009)."""
        sql, args = tasks_query(
            state=state, agent=agent, audience=audience, after=after, now=now, mark="%s", ordered='id COLLATE "C"',
            has_audience=_HAS_AUDIENCE,
        )  # fmt: skip
        async with self._conn() as conn:
            cur = await conn.execute(sql, (*args, limit))
            return [task_from_row(r) for r in await cur.fetchall()]

    async def count_tasks(self, *, now: float) -> dict[TaskState, int]:
        async with self._conn() as conn:
            cur = await conn.execute(_COUNT_TASKS, (int(now),))
            return task_counts(await cur.fetchall())

    async def task_tokens(self, task_id: str, *, limit: int) -> list[IssuedToken]:
        async with self._conn() as conn:
            cur = await conn.execute(
                f'SELECT {TOKEN_COLUMNS} FROM tokens WHERE task_id = %s ORDER BY iat, jti COLLATE "C" LIMIT %s',
                (task_id, limit),
            )
            return [token_from_row(r) for r in await cur.fetchall()]

    async def agent_holdings(self, *, now: float, limit: int) -> list[AgentHolding]:
        async with self._conn() as conn:
            cur = await conn.execute(_HOLDINGS, (int(now), int(now), limit))
            return [AgentHolding(agent=str(r[0]), tasks=int(r[1]), tokens=int(r[2])) for r in await cur.fetchall()]

    async def end_task(self, task_id: str, state: TaskState, *, now: float, audit: AuditEvent) -> Task:
        async with self._conn() as conn, conn.transaction():
            feed = await _lock_feed(conn)
            await _end_tasks(conn, [task_id])
            row = await (
                await conn.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = %s FOR UPDATE", (task_id,))
            ).fetchone()
            if row is None:
                raise NotFound(task_id)
            task = task_from_row(row)
            if task.effective_state(now) is not TaskState.ACTIVE:
                raise TaskNotActive(task.effective_state(now).value)
            await _end_task(conn, feed, task, state, now)
            await feed.publish(conn, now)
            await _append(conn, audit, now)
        await self._revoked()
        return Task(**{**task.__dict__, "state": state, "ended_at": int(now)})

    async def expire_tasks(self, *, now: float) -> list[str]:
        async with self._conn() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE tasks SET state = 'expired', ended_at = expires_at WHERE state = 'active' AND expires_at <= %s"
                " RETURNING id",
                (int(now),),
            )
            ids = sorted(r[0] for r in await cur.fetchall())
            for task_id in ids:
                await _append(conn, AuditEvent(kind="task.expired", outcome="ok", task=task_id), now)
            return ids

    # -- linked tasks (federation) ----------------------------------------------------
    async def link_task(self, task: Task, link: FederationLink, *, now: float, audit: AuditEvent) -> Task:
        key = _task_key(json.dumps([link.peer, link.foreign_task, task.agent]))
        async with self._conn() as conn, conn.transaction():
            # every statement below reads a snapshot taken after the lock: a link queued behind
            # another of the same foreign task and agent sees the task it opened
            await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LINK_LOCKS, key))
            cur = await conn.execute(_ACTIVE_LINKED, (link.peer, link.foreign_task, task.agent, int(now)))
            row = await cur.fetchone()
            linked = task_from_row(row) if row else task
            if await _is_blocked(conn, (linked.agent, linked.on_behalf_of)):
                raise Blocked(linked.agent)
            if row is None:
                await conn.execute(f"INSERT INTO tasks ({TASK_COLUMNS}) VALUES ({_marks(14)})", task_values(task))
            cur = await conn.execute(_INSERT_LINK + " ON CONFLICT DO NOTHING", links.link_values(link, linked.id))
            if cur.rowcount != 1:
                raise Conflict(f"peer token of {link.peer} already linked")
            await _append(conn, links.link_audit(audit, linked, joined=row is not None), now)
            return linked

    async def linked_tasks(self, peer: str, *, foreign_task: str | None = None, foreign_jti: str | None = None) -> list[str]:
        sql, args = links.linked_query(peer, foreign_task, foreign_jti, "%s")
        async with self._conn() as conn:
            cur = await conn.execute(sql, args)
            return sorted(str(r[0]) for r in await cur.fetchall())

    # -- tokens -------------------------------------------------------------------
    async def lookup(self, *, task_id: str | None, jti: str | None, principals: Sequence[str]) -> LookupResult:
        """The task, the token and the blocks in one round trip (pipeline mode): the block check
        names the task's agent and subject in SQL instead of waiting for the task row."""
        names = block_names(principals)
        async with self._conn() as conn, conn.pipeline():
            tasks = tokens = blocks = None
            if task_id is not None:
                tasks = await conn.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = %s", (task_id,))
            if jti is not None:
                tokens = await conn.execute(f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE jti = %s", (jti,))
            if names or task_id is not None:
                blocks = await conn.execute(_BLOCKED_LOOKUP, (names, task_id, task_id))
            task_row = await tasks.fetchone() if tasks else None
            token_row = await tokens.fetchone() if tokens else None
            blocked = await blocks.fetchone() is not None if blocks else False
        return LookupResult(
            task=task_from_row(task_row) if task_row else None,
            token=token_from_row(token_row) if token_row else None,
            blocked=blocked,
        )

    async def _issue(self, issuance: Issuance, *, now: float) -> None:
        replay = issuance.replay
        if replay is not None:
            fresh, epoch = await self.cache.spend_proof(replay[0], until=replay[1], now=now)
            if not fresh:
                raise Replayed(replay[0])
            if issuance.vouch is not None and not issuance.vouch(epoch):
                raise PredatesReplayCache(epoch)
        await self._issues.issue(issuance, now=now)  # a group commit with this process's other issuances

    async def get_token(self, jti: str) -> IssuedToken | None:
        async with self._conn() as conn:
            row = await (await conn.execute(f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE jti = %s", (jti,))).fetchone()
            return token_from_row(row) if row else None

    async def revoke_tree(self, jti: str, *, now: float, audit: AuditEvent) -> list[str]:
        async with self._conn() as conn, conn.transaction():
            feed = await _lock_feed(conn)
            revoked = await _revoke_jtis(conn, feed, [jti], now)
            await feed.publish(conn, now)
            await _append(conn, AuditEvent(**{**audit.__dict__, "detail": {**audit.detail, "revoked": len(revoked)}}), now)
        await self._revoked()
        return revoked

    # -- kill switch --------------------------------------------------------------
    async def block(self, kind: BlockKind, value: str, *, now: float, audit: AuditEvent) -> list[str]:
        column = "agent" if kind is BlockKind.AGENT else "on_behalf_of"
        async with self._conn() as conn, conn.transaction():
            feed = await _lock_feed(conn)
            # waits for the batches that read the blocks without this one; later ones wait for its commit
            await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", _BLOCKS_LOCK)
            await conn.execute(
                "INSERT INTO blocks (kind, value, since) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING", (kind.value, value, now)
            )
            cur = await conn.execute(
                f"SELECT id FROM tasks WHERE {column} = %s AND state = 'active' AND expires_at > %s", (value, int(now))
            )
            await _end_tasks(conn, [r[0] for r in await cur.fetchall()])
            cur = await conn.execute(
                f"SELECT {TASK_COLUMNS} FROM tasks WHERE {column} = %s AND state = 'active' AND expires_at > %s"
                ' ORDER BY id COLLATE "C" FOR UPDATE',
                (value, int(now)),
            )
            tasks = [task_from_row(r) for r in await cur.fetchall()]
            for task in tasks:
                await _end_task(conn, feed, task, TaskState.CANCELLED, now)
            cur = await conn.execute(
                "SELECT jti FROM tokens WHERE (sub = %s OR client_id = %s) AND revoked_at IS NULL AND exp > %s",
                (value, value, int(now)),
            )
            revoked = await _revoke_jtis(conn, feed, [r[0] for r in await cur.fetchall()], now)
            await feed.publish(conn, now)
            detail = {**audit.detail, "tasks": [t.id for t in tasks], "revoked": len(revoked)}
            await _append(conn, AuditEvent(**{**audit.__dict__, "detail": detail}), now)
        await self._revoked()
        return [t.id for t in tasks]

    async def unblock(self, kind: BlockKind, value: str, *, now: float, audit: AuditEvent) -> bool:
        async with self._conn() as conn, conn.transaction():
            cur = await conn.execute("DELETE FROM blocks WHERE kind = %s AND value = %s", (kind.value, value))
            await _append(conn, audit, now)
            return cur.rowcount == 1

    async def list_blocks(self, *, limit: int) -> list[Block]:
        async with self._conn() as conn:
            cur = await conn.execute(
                'SELECT kind, value, since FROM blocks ORDER BY since DESC, kind COLLATE "C", value COLLATE "C" LIMIT %s',
                (limit,),
            )
            return blocks_from_rows(await cur.fetchall())

    # -- single-use marks and replay ----------------------------------------------
    async def spend(self, key: str, *, until: int, now: float) -> bool:
        async with self._conn() as conn:
            return await _spend(conn, key, until, now)

    async def spent(self, key: str, *, now: float) -> bool:
        async with self._conn() as conn:
            cur = await conn.execute("SELECT 1 FROM spent WHERE key = %s AND until > %s", (key, int(now)))
            return await cur.fetchone() is not None

    async def first_use(self, key: str, *, until: int, now: float) -> bool:
        return await self.cache.first_use(key, until=until, now=now)

    async def spend_proof(self, key: str, *, until: int, now: float) -> tuple[bool, ReplayEpoch]:
        """``first_use`` and the replay cache's epoch (``RedisCache.spend_proof``)."""
        return await self.cache.spend_proof(key, until=until, now=now)

    async def replay_epoch(self) -> ReplayEpoch:
        """The replay cache's current epoch (``RedisCache.replay_epoch``)."""
        return await self.cache.replay_epoch()

    # -- revocation feed ----------------------------------------------------------
    async def revocations_after(self, seq: int, *, now: float, limit: int) -> list[Revocation]:
        async with self._conn() as conn:
            cur = await conn.execute(
                "SELECT seq, kind, value, exp, at FROM revocations WHERE seq > %s AND exp > %s ORDER BY seq LIMIT %s",
                (seq, int(now), limit),
            )
            return [revocation_from_row(r) for r in await cur.fetchall()]

    def revocation_generation(self) -> int:
        return self._notifier.generation

    async def wait_for_revocations(self, *, since: int, timeout: float) -> bool:
        self.cache.listen(self._notifier.notify)
        return await self._notifier.wait(since, timeout)

    # -- vault --------------------------------------------------------------------
    async def vault_put(self, name: str, sealed: bytes, *, version: int, now: float, audit: AuditEvent) -> VaultEntry:
        async with self._conn() as conn, conn.transaction():
            if version == 1:
                cur = await conn.execute(
                    "INSERT INTO vault (name, sealed, created_at, updated_at, version) VALUES (%s, %s, %s, %s, 1)"
                    f" ON CONFLICT (name) DO NOTHING RETURNING {VAULT_COLUMNS}",
                    (name, sealed, now, now),
                )
            else:
                cur = await conn.execute(
                    f"UPDATE vault SET sealed = %s, updated_at = %s, version = %s WHERE name = %s AND version = %s"
                    f" RETURNING {VAULT_COLUMNS}",
                    (sealed, now, version, name, version - 1),
                )
            row = await cur.fetchone()
            if row is None:
                raise Conflict(f"vault entry {name} is not at version {version - 1}")
            await _append(conn, audit, now)
            return vault_from_row(row)

    async def vault_get(self, name: str) -> VaultEntry | None:
        async with self._conn() as conn:
            row = await (await conn.execute(f"SELECT {VAULT_COLUMNS} FROM vault WHERE name = %s", (name,))).fetchone()
            return vault_from_row(row) if row else None

    async def mcp_pin_latest_audit(self, route: str) -> AuditRecord | None:
        async with self._conn() as conn:
            # the expression and the kind are the partial index's (migration 0006), so it answers
            cur = await conn.execute(
                f"SELECT {AUDIT_COLUMNS} FROM audit WHERE kind = 'mcp.pinned' AND (detail::jsonb ->> 'route') = %s"
                f" ORDER BY {_json_number('pinned_at')} DESC NULLS LAST, seq DESC LIMIT 1",
                (route,),
            )
            row = await cur.fetchone()
            return audit_from_row(row) if row else None

    async def vault_latest_audit(self, name: str) -> AuditRecord | None:
        async with self._conn() as conn:
            # the expression and the kinds are the partial index's (migration 0005), so it answers
            cur = await conn.execute(
                f"SELECT {AUDIT_COLUMNS} FROM audit WHERE kind IN ('vault.put', 'vault.rotated')"
                " AND (detail::jsonb ->> 'name') = %s ORDER BY "
                + ", ".join(f"{_json_number(k)} DESC NULLS LAST" for k in ("created_at", "version"))
                + ", seq DESC LIMIT 1",
                (name,),
            )
            row = await cur.fetchone()
            return audit_from_row(row) if row else None

    async def vault_list(self) -> list[VaultEntry]:
        async with self._conn() as conn:
            cur = await conn.execute(f'SELECT {VAULT_COLUMNS} FROM vault ORDER BY name COLLATE "C"')
            return [vault_from_row(r) for r in await cur.fetchall()]

    async def vault_delete(self, name: str, *, now: float, audit: AuditEvent) -> bool:
        async with self._conn() as conn, conn.transaction():
            cur = await conn.execute("DELETE FROM vault WHERE name = %s", (name,))
            if cur.rowcount:
                await _append(conn, audit, now)
            return cur.rowcount == 1

    async def rewrap_sealed(self, rewrap: Callable[[str, str, bytes], bytes], *, now: float, audit: AuditEvent) -> int:
        async with self._conn() as conn, conn.transaction():
            count = 0
            for name, sealed in await (await conn.execute("SELECT name, sealed FROM vault FOR UPDATE")).fetchall():
                await conn.execute("UPDATE vault SET sealed = %s WHERE name = %s", (rewrap("vault", name, bytes(sealed)), name))
                count += 1
            rows = await (await conn.execute("SELECT kid, sealed_private FROM signing_keys FOR UPDATE")).fetchall()
            for kid, sealed in rows:
                new = rewrap("key", kid, bytes(sealed))
                await conn.execute("UPDATE signing_keys SET sealed_private = %s WHERE kid = %s", (new, kid))
                count += 1
            await _append(conn, AuditEvent(**{**audit.__dict__, "detail": {**audit.detail, "rewrapped": count}}), now)
            return count

    # -- counters (Redis) ---------------------------------------------------------
    async def count(self, key: str, *, until: int, now: float) -> int:
        return await self.cache.incr_window(key, window_ends=until)

    async def first_seen(self, key: str, *, now: float, until: int) -> float:
        return await self.cache.first_seen(key, now=now, until=until)

    # -- approvals ------------------------------------------------------------------
    async def hold_approval(self, approval: Approval, *, now: float, max_pending: int, audit: AuditEvent) -> Approval:
        check_held(approval)
        values = approval_values(approval)
        async with self._conn() as conn, conn.transaction():
            # every statement below reads a snapshot taken after the lock: a hold queued behind
            # another of the same task sees the row it inserted
            await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_APPROVAL_LOCKS, _task_key(approval.task)))
            cur = await conn.execute(
                f"SELECT {APPROVAL_COLUMNS} FROM approvals WHERE task = %s AND status = 'pending' AND digest = %s"
                ' AND expires_at > %s ORDER BY created_at DESC, id COLLATE "C" DESC LIMIT 1',
                (approval.task, approval.digest, int(now)),
            )
            row = await cur.fetchone()
            if row is not None:
                return approval_from_row(row)
            cur = await conn.execute(
                "SELECT COUNT(*) FROM approvals WHERE task = %s AND status = 'pending' AND expires_at > %s",
                (approval.task, int(now)),
            )
            counted = await cur.fetchone()
            if counted is not None and int(counted[0]) >= max_pending:
                raise CapReached(approval.task)
            await conn.execute(f"INSERT INTO approvals ({APPROVAL_COLUMNS}) VALUES ({_marks(18)})", values)
            await _append(conn, audit, now)
            return approval

    async def get_approval(self, approval_id: str) -> Approval | None:
        async with self._conn() as conn:
            cur = await conn.execute(f"SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = %s", (approval_id,))
            row = await cur.fetchone()
            return approval_from_row(row) if row else None

    async def list_approvals(
        self, *, status: ApprovalStatus | None, task: str | None, now: float, limit: int, before: str | None = None
    ) -> list[Approval]:
        sql, args = approvals_query(status=status, task=task, before=before, now=now, mark="%s", ordered='id COLLATE "C"')
        async with self._conn() as conn:
            cur = await conn.execute(sql, (*args, limit))
            return [approval_from_row(r) for r in await cur.fetchall()]

    async def decide_approval(self, decided: Approval, *, now: float, audit: AuditEvent) -> Approval:
        check_decision(decided)
        async with self._conn() as conn, conn.transaction():
            # a compare-and-set: a concurrent decision or sweep holding the row makes this one
            # re-read it once committed, and find it no longer pending
            cur = await conn.execute(
                "UPDATE approvals SET status = %s, decided_by = %s, decided_at = %s, reason = %s, uses = %s, until = %s,"
                " decision_mac = %s WHERE id = %s AND status = 'pending' AND expires_at > %s"
                f" RETURNING {APPROVAL_COLUMNS}",
                (*approval_decision(decided), decided.id, int(now)),
            )
            row = await cur.fetchone()
            if row is None:
                found = await (await conn.execute("SELECT 1 FROM approvals WHERE id = %s", (decided.id,))).fetchone()
                if found is None:
                    raise NotFound(decided.id)
                raise Conflict(f"approval {decided.id} is no longer pending")
            await _append(conn, audit, now)
            return approval_from_row(row)

    async def expire_approvals(
        self, *, now: float, audit: Callable[[Approval], AuditEvent], limit: int = 1000
    ) -> list[Approval]:
        async with self._conn() as conn, conn.transaction():
            # locked in one order (expiry, then id), so two sweeps queue instead of deadlocking;
            # a row decided meanwhile is re-read once unlocked and skipped
            cur = await conn.execute(
                f"SELECT {APPROVAL_COLUMNS} FROM approvals WHERE status = 'pending' AND expires_at <= %s"
                ' ORDER BY expires_at, id COLLATE "C" LIMIT %s FOR UPDATE',
                (int(now), limit),
            )
            expired = [approval_from_row(r, expired=True) for r in await cur.fetchall()]
            if expired:
                await conn.execute("UPDATE approvals SET status = 'expired' WHERE id = ANY(%s)", ([a.id for a in expired],))
            for approval in expired:
                await _append(conn, audit(approval), now)
            return expired

    async def reseal_approvals(
        self, reseal: Callable[[Approval], tuple[str, str] | None], *, now: float, audit: AuditEvent
    ) -> int:
        async with self._conn() as conn, conn.transaction():
            # every row locked, in the expiry sweep's order (so the two queue instead of deadlocking):
            # a decision or sweep of a replica waits for this transaction, then re-reads the row
            cur = await conn.execute(f'SELECT {APPROVAL_COLUMNS} FROM approvals ORDER BY expires_at, id COLLATE "C" FOR UPDATE')
            rows = await cur.fetchall()
            count = 0
            for row in rows:
                macs = reseal(approval_from_row(row))
                if macs is None:
                    continue
                await conn.execute("UPDATE approvals SET request_mac = %s, decision_mac = %s WHERE id = %s", (*macs, row[0]))
                count += 1
            await _append(conn, resealed_audit(audit, resealed=count, left=len(rows) - count), now)
            return count

    # -- policy versions --------------------------------------------------------
    async def record_policy_version(self, version: str, files: Mapping[str, str], *, now: float) -> bool:
        async with self._conn() as conn:
            cur = await conn.execute(
                "INSERT INTO policy_versions (version, loaded_at, files) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (version, now, json.dumps(dict(files), sort_keys=True)),
            )
            return cur.rowcount == 1

    async def policy_versions(self, *, limit: int) -> list[tuple[str, float]]:
        async with self._conn() as conn:
            cur = await conn.execute(
                "SELECT version, loaded_at FROM policy_versions ORDER BY loaded_at DESC LIMIT %s", (limit,)
            )
            return [(str(r[0]), float(r[1])) for r in await cur.fetchall()]

    # -- audit --------------------------------------------------------------------
    async def append_audit(self, event: AuditEvent, *, now: float) -> AuditRecord:
        async with self._conn() as conn, conn.transaction():
            record = await _append(conn, event, now)
        self.recent.add((record,))  # committed
        return record

    async def audit_records(self, *, after: int, limit: int) -> list[AuditRecord]:
        return await self._audit_page(AUDIT_COLUMNS, audit_from_row, after, limit)

    async def search_audit(
        self,
        *,
        task: str | None = None,
        principal: str | None = None,
        kind: str | None = None,
        before: int | None = None,
        limit: int,
        scan: int = 100_000,
    ) -> AuditPage:
        """See ``rows.AuditWindow`` for the window examined and where the next page starts."""
        check_page(limit, scan)
        async with self._conn() as conn:
            first, last = await _one(conn, AUDIT_ENDS)
            window = AuditWindow.of(first, last, before=before, scan=scan, indexed=kind == ALERT_KIND)
            if window.empty:
                return AuditPage([], None)
            sql, args = audit_search(task=task, principal=principal, kind=kind, top=window.top, bound=window.bound, mark="%s")
            found = [audit_from_row(r) for r in await (await conn.execute(sql, (*args, limit))).fetchall()]
        return AuditPage(found, window.next_before(found, limit))

    async def audit_counts(self, *, after: int, scan: int) -> dict[tuple[str, str, str], int]:
        check_page(1, scan)
        async with self._conn() as conn:
            (last,) = await _one(conn, "SELECT MAX(seq) FROM audit")
            cur = await conn.execute(_AUDIT_COUNTS, (counts_floor(last, after=after, scan=scan),))
            return audit_counts_from_rows(await cur.fetchall())

    async def audit_marks(self, *, after: int, limit: int) -> list[AuditMark]:
        return await self._audit_page(AUDIT_MARK_COLUMNS, audit_mark_from_row, after, limit)

    async def _audit_page(self, columns: str, convert: Callable[[Sequence[Any]], T], after: int, limit: int) -> list[T]:
        async with self._conn() as conn:
            cur = await conn.execute(f"SELECT {columns} FROM audit WHERE seq > %s ORDER BY seq LIMIT %s", (after, limit))
            return [convert(r) for r in await cur.fetchall()]

    async def purge_expired(self, *, now: float) -> None:
        """Drop single-use marks and feed entries whose tokens have all expired, and approvals
        decided or expired ``APPROVAL_RETENTION`` ago (after their expiry and approved window)."""
        async with self._conn() as conn:
            await conn.execute("DELETE FROM spent WHERE until <= %s", (int(now),))
            await conn.execute("DELETE FROM revocations WHERE exp <= %s", (int(now),))
            cutoff = int(now) - APPROVAL_RETENTION
            await conn.execute(
                "DELETE FROM approvals WHERE status <> 'pending' AND expires_at <= %s AND COALESCE(until, 0) <= %s",
                (cutoff, cutoff),
            )
