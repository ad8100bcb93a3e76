"""``SqliteStore``: every part of the Store protocol in one embedded database file (WAL).

Each security-critical step is one ``BEGIN IMMEDIATE`` transaction, so the
single-use ``jti``, the ``max_tokens`` count, the lineage record and the audit link of
an issuance commit together or not at all, even when several processes share the file.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tether.audit.chain import GENESIS, AuditEvent, AuditRecord, link
from tether.model import Approval, ApprovalStatus, Task, TaskState
from tether.store import errors, links, records
from tether.store import rows as table
from tether.store.notify import Notifier
from tether.store.protocol import TAIL_PAGE, Issuance, Store
from tether.store.recent import RecentAudit
from tether.store.sqlite.db import SCHEMA_VERSION, Database, migrate, schema_version, transaction

__all__ = ["SqliteStore"]

T = TypeVar("T")


def _append(conn: sqlite3.Connection, event: AuditEvent, now: float) -> AuditRecord:
    head = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (head[0] + 1, head[1]) if head else (1, GENESIS)
    record = link(event, seq=seq, ts=now, prev=prev)
    conn.execute(
        f"INSERT INTO audit ({table.AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", table.audit_values(record)
    )
    return record


def _publish(conn: sqlite3.Connection, kind: records.RevocationKind, value: str, exp: int, now: float) -> None:
    conn.execute("INSERT INTO revocations (kind, value, exp, at) VALUES (?, ?, ?, ?)", (kind.value, value, exp, now))


def _revoke_jtis(conn: sqlite3.Connection, roots: Sequence[str], now: float) -> list[str]:
    """Revoke each root and all its descendants; publish one feed entry per newly revoked token, in jti order."""
    found: dict[str, int] = {}
    for root in roots:
        rows = conn.execute(
            "WITH RECURSIVE tree(jti) AS (SELECT jti FROM tokens WHERE jti = ?"
            " UNION SELECT t.jti FROM tokens t JOIN tree ON t.parent_jti = tree.jti)"
            " SELECT tokens.jti, tokens.exp FROM tokens JOIN tree USING (jti) WHERE tokens.revoked_at IS NULL",
            (root,),
        ).fetchall()
        found.update(rows)
    revoked = sorted(found)
    for jti in revoked:
        conn.execute("UPDATE tokens SET revoked_at = ? WHERE jti = ?", (int(now), jti))
        if found[jti] > now:
            _publish(conn, records.RevocationKind.TOKEN, jti, found[jti], now)
    return revoked


def _first_use(conn: sqlite3.Connection, key: str, until: int, now: float) -> bool:
    if until <= now:
        return False
    cur = conn.execute(
        "INSERT INTO replay (key, until) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET until = excluded.until"
        " WHERE replay.until <= ?",
        (key, until, int(now)),
    )
    return cur.rowcount == 1


def _is_blocked(conn: sqlite3.Connection, *groups: Iterable[str | None]) -> bool:
    unique = table.block_names(*groups)
    if not unique:
        return False
    marks = ", ".join("?" * len(unique))
    return conn.execute(f"SELECT 1 FROM blocks WHERE value IN ({marks}) LIMIT 1", unique).fetchone() is not None


def _check_issuable(conn: sqlite3.Connection, token: records.IssuedToken, principals: Sequence[str]) -> None:
    """The parent still live and no principal blocked, read in one statement (``ParentRevoked``
    before ``Blocked``, as the PostgreSQL store checks them)."""
    names = table.block_names(principals, (token.sub, token.client_id))
    blocked = f"EXISTS (SELECT 1 FROM blocks WHERE value IN ({', '.join('?' * len(names))}))" if names else "0"
    parent = "(SELECT revoked_at IS NULL FROM tokens WHERE jti = ?)" if token.parent_jti is not None else "1"
    args = (token.parent_jti, *names) if token.parent_jti is not None else tuple(names)
    live, is_blocked = conn.execute(f"SELECT {parent}, {blocked}", args).fetchone()
    if live != 1:
        raise errors.ParentRevoked(token.parent_jti or "")
    if is_blocked:
        raise errors.Blocked(token.sub)


def _spend(conn: sqlite3.Connection, key: str, until: int, now: float) -> bool:
    cur = conn.execute(
        "INSERT INTO spent (key, until) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET until = excluded.until"
        " WHERE spent.until <= ?",
        (key, until, int(now)),
    )
    return cur.rowcount == 1


def _end_task(conn: sqlite3.Connection, task: Task, state: TaskState, now: float) -> None:
    conn.execute("UPDATE tasks SET state = ?, ended_at = ? WHERE id = ?", (state.value, int(now), task.id))
    conn.execute("UPDATE tokens SET revoked_at = ? WHERE task_id = ? AND revoked_at IS NULL", (int(now), task.id))
    _publish(conn, records.RevocationKind.TASK, task.id, task.expires_at, now)


#: exactly ``audience`` among a task's audiences (a JSON array of strings): json_each compares
#: whole elements, so "https://a" never matches "https://ab"
_HAS_AUDIENCE = "EXISTS (SELECT 1 FROM json_each(a.audiences) AS aud WHERE aud.type = 'text' AND aud.value = {mark})"
_COUNT_TASKS = table.COUNT_TASKS.format(mark="?")
_ACTIVE_LINKED = links.ACTIVE_LINKED.format(mark="?")
_INSERT_LINK = links.INSERT_LINK.format(mark="?")


class SqliteStore(Store):
    """The embedded default store. Open with ``SqliteStore.open(path)``."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._revocations = Notifier()
        self.recent = RecentAudit()

    @classmethod
    def open(cls, path: Path, *, migrate_schema: bool = True) -> SqliteStore:
        db = Database(path)

        def check(conn: sqlite3.Connection) -> None:
            if migrate_schema:
                migrate(conn)
            version = schema_version(conn)
            if version != SCHEMA_VERSION:
                raise errors.StoreUnavailable(
                    f"database schema v{version} does not match v{SCHEMA_VERSION}; run tether migrate"
                )

        try:
            db.run_sync(check)
        except BaseException:
            db.close()
            raise
        return cls(db)

    async def ping(self) -> None:
        await self._db.run(lambda c: c.execute("SELECT 1").fetchone())

    async def aclose(self) -> None:
        self._db.close()

    def close(self) -> None:
        self._db.close()

    # -- signing keys -------------------------------------------------------------
    async def signing_keys(self, *, now: float) -> list[records.StoredKey]:
        def q(conn: sqlite3.Connection) -> list[records.StoredKey]:
            rows = conn.execute(
                f"SELECT {table.KEY_COLUMNS} FROM signing_keys WHERE not_after IS NULL OR not_after > ?"
                " ORDER BY created_at DESC, rowid DESC",
                (int(now),),
            ).fetchall()
            return [table.key_from_row(r) for r in rows]

        return await self._db.run(q)

    async def add_signing_key(self, key: records.StoredKey, *, retired: Sequence[records.StoredKey]) -> None:
        def q(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                for old in retired:
                    cur = conn.execute(
                        "UPDATE signing_keys SET retired_at = ?, not_after = ?, sealed_private = ?"
                        " WHERE kid = ? AND retired_at IS NULL",
                        (old.retired_at, old.not_after, old.sealed_private, old.kid),
                    )
                    if cur.rowcount != 1:
                        raise errors.Conflict(f"signing key {old.kid} is not current")
                if conn.execute("SELECT 1 FROM signing_keys WHERE retired_at IS NULL").fetchone() is not None:
                    raise errors.Conflict("another signing key became current")
                conn.execute(
                    "INSERT INTO signing_keys (kid, alg, public_jwk, sealed_private, created_at) VALUES (?, ?, ?, ?, ?)",
                    (key.kid, key.alg, json.dumps(key.public_jwk), key.sealed_private, key.created_at),
                )

        await self._db.run(q)

    # -- tasks --------------------------------------------------------------------
    async def create_task(self, task: Task, audit: AuditEvent) -> None:
        def q(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                if _is_blocked(conn, (task.agent, task.on_behalf_of)):
                    raise errors.Blocked(task.agent)
                conn.execute(
                    f"INSERT INTO tasks ({table.TASK_COLUMNS}) VALUES ({', '.join('?' * 14)})", table.task_values(task)
                )
                _append(conn, audit, task.created_at)

        await self._db.run(q)

    async def get_task(self, task_id: str) -> Task | None:
        def q(conn: sqlite3.Connection) -> Task | None:
            row = conn.execute(f"SELECT {table.TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
            return table.task_from_row(row) if row else None

        return await self._db.run(q)

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
        """Newest first, ties by id (the index ``tasks_newest`` of migration 0008 serves the unfiltered page)."""
        sql, args = table.tasks_query(
            state=state, agent=agent, audience=audience, after=after, now=now, mark="?", ordered="id",
            has_audience=_HAS_AUDIENCE,
        )  # fmt: skip

        def q(conn: sqlite3.Connection) -> list[Task]:
            rows = conn.execute(sql, (*args, limit)).fetchall()
            return [table.task_from_row(r) for r in rows]

        return await self._db.run(q)

    async def count_tasks(self, *, now: float) -> dict[TaskState, int]:
        def q(conn: sqlite3.Connection) -> dict[TaskState, int]:
            rows = conn.execute(_COUNT_TASKS, (int(now),)).fetchall()
            return table.task_counts(rows)

        return await self._db.run(q, inline=False)  # a scan of every task: off the request loop

    async def task_tokens(self, task_id: str, *, limit: int) -> list[records.IssuedToken]:
        def q(conn: sqlite3.Connection) -> list[records.IssuedToken]:
            rows = conn.execute(
                f"SELECT {table.TOKEN_COLUMNS} FROM tokens WHERE task_id = ? ORDER BY iat, jti LIMIT ?", (task_id, limit)
            ).fetchall()
            return [table.token_from_row(r) for r in rows]

        return await self._db.run(q)

    async def agent_holdings(self, *, now: float, limit: int) -> list[records.AgentHolding]:
        def q(conn: sqlite3.Connection) -> list[records.AgentHolding]:
            rows = conn.execute(table.holdings_query(mark="?", ordered="agent"), (int(now), int(now), limit)).fetchall()
            return [records.AgentHolding(agent=str(r[0]), tasks=int(r[1]), tokens=int(r[2])) for r in rows]

        return await self._db.run(q, inline=False)  # every live task and token: off the request loop

    async def end_task(self, task_id: str, state: TaskState, *, now: float, audit: AuditEvent) -> Task:
        def q(conn: sqlite3.Connection) -> Task:
            with transaction(conn):
                row = conn.execute(f"SELECT {table.TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
                if row is None:
                    raise errors.NotFound(task_id)
                task = table.task_from_row(row)
                if task.effective_state(now) is not TaskState.ACTIVE:
                    raise errors.TaskNotActive(task.effective_state(now).value)
                _end_task(conn, task, state, now)
                _append(conn, audit, now)
                return Task(**{**task.__dict__, "state": state, "ended_at": int(now)})

        ended = await self._db.run(q)
        self._revocations.notify()
        return ended

    async def expire_tasks(self, *, now: float) -> list[str]:
        """Mark tasks past their hard cap as expired (their tokens cannot outlive them)."""

        def q(conn: sqlite3.Connection) -> list[str]:
            with transaction(conn):
                ids = [
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM tasks WHERE state = 'active' AND expires_at <= ? ORDER BY id", (int(now),)
                    ).fetchall()
                ]
                for task_id in ids:
                    conn.execute("UPDATE tasks SET state = 'expired', ended_at = expires_at WHERE id = ?", (task_id,))
                    _append(conn, AuditEvent(kind="task.expired", outcome="ok", task=task_id), now)
                return ids

        return await self._db.run(q)

    # -- linked tasks (federation) ----------------------------------------------------
    async def link_task(self, task: Task, link: records.FederationLink, *, now: float, audit: AuditEvent) -> Task:
        def q(conn: sqlite3.Connection) -> Task:
            # BEGIN IMMEDIATE: every writer of the file queues here, so the look-up and the insert are one step
            with transaction(conn):
                row = conn.execute(_ACTIVE_LINKED, (link.peer, link.foreign_task, task.agent, int(now))).fetchone()
                linked = table.task_from_row(row) if row else task
                if _is_blocked(conn, (linked.agent, linked.on_behalf_of)):
                    raise errors.Blocked(linked.agent)
                if row is None:
                    conn.execute(
                        f"INSERT INTO tasks ({table.TASK_COLUMNS}) VALUES ({', '.join('?' * 14)})", table.task_values(task)
                    )
                cur = conn.execute(_INSERT_LINK + " ON CONFLICT DO NOTHING", links.link_values(link, linked.id))
                if cur.rowcount != 1:
                    raise errors.Conflict(f"peer token of {link.peer} already linked")
                _append(conn, links.link_audit(audit, linked, joined=row is not None), now)
                return linked

        return await self._db.run(q)

    async def linked_tasks(self, peer: str, *, foreign_task: str | None = None, foreign_jti: str | None = None) -> list[str]:
        sql, args = links.linked_query(peer, foreign_task, foreign_jti, "?")

        def q(conn: sqlite3.Connection) -> list[str]:
            return sorted(str(r[0]) for r in conn.execute(sql, args).fetchall())

        return await self._db.run(q)

    # -- tokens -------------------------------------------------------------------
    async def lookup(self, *, task_id: str | None, jti: str | None, principals: Sequence[str]) -> records.LookupResult:
        def q(conn: sqlite3.Connection) -> records.LookupResult:
            task_row = (
                conn.execute(f"SELECT {table.TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
                if task_id is not None
                else None
            )
            token_row = (
                conn.execute(f"SELECT {table.TOKEN_COLUMNS} FROM tokens WHERE jti = ?", (jti,)).fetchone()
                if jti is not None
                else None
            )
            blocked = _is_blocked(conn, principals, table.task_principals(task_row))
            return records.LookupResult(
                task=table.task_from_row(task_row) if task_row else None,
                token=table.token_from_row(token_row) if token_row else None,
                blocked=blocked,
            )

        return await self._db.run(q)

    async def _issue(self, issuance: Issuance, *, now: float) -> None:
        token, replay = issuance.token, issuance.replay

        # the replay marks live in the same database as the tokens: they are lost only with
        # them, so ``vouch`` has nothing to guard against here
        def spend_proof(conn: sqlite3.Connection) -> None:
            if replay is not None and not _first_use(conn, replay[0], replay[1], now):
                raise errors.Replayed(replay[0])

        def q(conn: sqlite3.Connection) -> AuditRecord:
            for key, until in issuance.spends:
                if not _spend(conn, key, until, now):
                    raise errors.AlreadySpent(key)
            _check_issuable(conn, token, issuance.principals)
            if token.task_id is not None:
                cur = conn.execute(
                    "UPDATE tasks SET tokens_issued = tokens_issued + 1"
                    " WHERE id = ? AND state = 'active' AND expires_at > ? AND tokens_issued < max_tokens",
                    (token.task_id, int(now)),
                )
                if cur.rowcount != 1:
                    row = conn.execute(f"SELECT {table.TASK_COLUMNS} FROM tasks WHERE id = ?", (token.task_id,)).fetchone()
                    if row is None:
                        raise errors.TaskNotActive("unknown")
                    state = table.task_from_row(row).effective_state(now)
                    if state is not TaskState.ACTIVE:
                        raise errors.TaskNotActive(state.value)
                    raise errors.CapReached(token.task_id)
            conn.execute(
                f"INSERT INTO tokens ({table.TOKEN_COLUMNS}) VALUES ({', '.join('?' * 14)})", table.token_values(token)
            )
            return _append(conn, issuance.audit, now)

        # without spends, every refusal comes before the first write (the task's UPDATE writes
        # nothing when it refuses): no savepoint needed
        record = await self._db.run_batched(q, kept=None if replay is None else spend_proof, refuses_first=not issuance.spends)
        self.recent.add((record,))  # committed: the monitor reads it from here

    async def purge_expired(self, *, now: float) -> None:
        def q(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute("DELETE FROM spent WHERE until <= ?", (int(now),))
                conn.execute("DELETE FROM replay WHERE until <= ?", (int(now),))
                conn.execute("DELETE FROM revocations WHERE exp <= ?", (int(now),))
                conn.execute("DELETE FROM counters WHERE until <= ?", (int(now),))
                cutoff = int(now) - table.APPROVAL_RETENTION
                conn.execute(
                    "DELETE FROM approvals WHERE status <> 'pending' AND expires_at <= ? AND COALESCE(until, 0) <= ?",
                    (cutoff, cutoff),
                )

        await self._db.run(q, inline=False)  # table scans: never on the request loop

    async def get_token(self, jti: str) -> records.IssuedToken | None:
        def q(conn: sqlite3.Connection) -> records.IssuedToken | None:
            row = conn.execute(f"SELECT {table.TOKEN_COLUMNS} FROM tokens WHERE jti = ?", (jti,)).fetchone()
            return table.token_from_row(row) if row else None

        return await self._db.run(q)

    async def revoke_tree(self, jti: str, *, now: float, audit: AuditEvent) -> list[str]:
        def q(conn: sqlite3.Connection) -> list[str]:
            with transaction(conn):
                revoked = _revoke_jtis(conn, [jti], now)
                _append(conn, AuditEvent(**{**audit.__dict__, "detail": {**audit.detail, "revoked": len(revoked)}}), now)
                return revoked

        revoked = await self._db.run(q)
        self._revocations.notify()
        return revoked

    # -- kill switch --------------------------------------------------------------
    async def block(self, kind: records.BlockKind, value: str, *, now: float, audit: AuditEvent) -> list[str]:
        column = "agent" if kind is records.BlockKind.AGENT else "on_behalf_of"

        def q(conn: sqlite3.Connection) -> list[str]:
            with transaction(conn):
                conn.execute(
                    "INSERT INTO blocks (kind, value, since) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    (kind.value, value, now),
                )
                rows = conn.execute(
                    f"SELECT {table.TASK_COLUMNS} FROM tasks"
                    f" WHERE {column} = ? AND state = 'active' AND expires_at > ? ORDER BY id",
                    (value, int(now)),
                ).fetchall()
                tasks = [table.task_from_row(r) for r in rows]
                for task in tasks:
                    _end_task(conn, task, TaskState.CANCELLED, now)
                roots = [
                    r[0]
                    for r in conn.execute(
                        "SELECT jti FROM tokens WHERE (sub = ? OR client_id = ?) AND revoked_at IS NULL AND exp > ?",
                        (value, value, int(now)),
                    ).fetchall()
                ]
                revoked = _revoke_jtis(conn, roots, now)
                detail = {**audit.detail, "tasks": [t.id for t in tasks], "revoked": len(revoked)}
                _append(conn, AuditEvent(**{**audit.__dict__, "detail": detail}), now)
                return [t.id for t in tasks]

        ended = await self._db.run(q)
        self._revocations.notify()
        return ended

    async def unblock(self, kind: records.BlockKind, value: str, *, now: float, audit: AuditEvent) -> bool:
        def q(conn: sqlite3.Connection) -> bool:
            with transaction(conn):
                cur = conn.execute("DELETE FROM blocks WHERE kind = ? AND value = ?", (kind.value, value))
                _append(conn, audit, now)
                return cur.rowcount == 1

        return await self._db.run(q)

    async def list_blocks(self, *, limit: int) -> list[records.Block]:
        def q(conn: sqlite3.Connection) -> list[records.Block]:
            rows = conn.execute("SELECT kind, value, since FROM blocks ORDER BY since DESC, kind, value LIMIT ?", (limit,))
            return table.blocks_from_rows(rows.fetchall())

        return await self._db.run(q)

    async def spend(self, key: str, *, until: int, now: float) -> bool:
        return await self._db.run(lambda conn: _spend(conn, key, until, now))

    async def spent(self, key: str, *, now: float) -> bool:
        def q(conn: sqlite3.Connection) -> bool:
            return conn.execute("SELECT 1 FROM spent WHERE key = ? AND until > ?", (key, int(now))).fetchone() is not None

        return await self._db.run(q)

    # -- replay cache -------------------------------------------------------------
    async def first_use(self, key: str, *, until: int, now: float) -> bool:
        return await self._db.run(lambda conn: _first_use(conn, key, until, now))

    # -- revocation feed ----------------------------------------------------------
    async def revocations_after(self, seq: int, *, now: float, limit: int) -> list[records.Revocation]:
        def q(conn: sqlite3.Connection) -> list[records.Revocation]:
            rows = conn.execute(
                "SELECT seq, kind, value, exp, at FROM revocations WHERE seq > ? AND exp > ? ORDER BY seq LIMIT ?",
                (seq, int(now), limit),
            ).fetchall()
            return [table.revocation_from_row(r) for r in rows]

        return await self._db.run(q)

    def revocation_generation(self) -> int:
        return self._revocations.generation

    async def wait_for_revocations(self, *, since: int, timeout: float) -> bool:
        return await self._revocations.wait(since, timeout)

    # -- vault --------------------------------------------------------------------
    async def vault_put(self, name: str, sealed: bytes, *, version: int, now: float, audit: AuditEvent) -> records.VaultEntry:
        def q(conn: sqlite3.Connection) -> records.VaultEntry:
            with transaction(conn):
                if version == 1:
                    cur = conn.execute(
                        "INSERT INTO vault (name, sealed, created_at, updated_at, version) VALUES (?, ?, ?, ?, 1)"
                        " ON CONFLICT (name) DO NOTHING",
                        (name, sealed, now, now),
                    )
                else:
                    cur = conn.execute(
                        "UPDATE vault SET sealed = ?, updated_at = ?, version = ? WHERE name = ? AND version = ?",
                        (sealed, now, version, name, version - 1),
                    )
                if cur.rowcount != 1:
                    raise errors.Conflict(f"vault entry {name} is not at version {version - 1}")
                row = conn.execute(f"SELECT {table.VAULT_COLUMNS} FROM vault WHERE name = ?", (name,)).fetchone()
                _append(conn, audit, now)
                return table.vault_from_row(row)

        return await self._db.run(q)

    async def vault_get(self, name: str) -> records.VaultEntry | None:
        def q(conn: sqlite3.Connection) -> records.VaultEntry | None:
            row = conn.execute(f"SELECT {table.VAULT_COLUMNS} FROM vault WHERE name = ?", (name,)).fetchone()
            return table.vault_from_row(row) if row else None

        return await self._db.run(q)

    async def vault_list(self) -> list[records.VaultEntry]:
        def q(conn: sqlite3.Connection) -> list[records.VaultEntry]:
            return [
                table.vault_from_row(r)
                for r in conn.execute(f"SELECT {table.VAULT_COLUMNS} FROM vault ORDER BY name").fetchall()
            ]

        return await self._db.run(q)

    async def vault_delete(self, name: str, *, now: float, audit: AuditEvent) -> bool:
        def q(conn: sqlite3.Connection) -> bool:
            with transaction(conn):
                cur = conn.execute("DELETE FROM vault WHERE name = ?", (name,))
                if cur.rowcount:
                    _append(conn, audit, now)
                return cur.rowcount == 1

        return await self._db.run(q)

    async def mcp_pin_latest_audit(self, route: str) -> AuditRecord | None:
        def q(conn: sqlite3.Connection) -> AuditRecord | None:
            # the expression and the kind are the partial index's (migration 0005), so it answers
            row = conn.execute(
                f"SELECT {table.AUDIT_COLUMNS} FROM audit WHERE kind = 'mcp.pinned'"
                " AND json_extract(detail, '$.route') = ? ORDER BY json_extract(detail, '$.pinned_at') DESC, seq DESC LIMIT 1",
                (route,),
            ).fetchone()
            return table.audit_from_row(row) if row else None

        return await self._db.run(q)

    async def vault_latest_audit(self, name: str) -> AuditRecord | None:
        def q(conn: sqlite3.Connection) -> AuditRecord | None:
            # the expression and the kinds are the partial index's (migration 0004), so it answers
            row = conn.execute(
                f"SELECT {table.AUDIT_COLUMNS} FROM audit WHERE kind IN ('vault.put', 'vault.rotated')"
                " AND json_extract(detail, '$.name') = ? ORDER BY json_extract(detail, '$.created_at') DESC,"
                " json_extract(detail, '$.version') DESC, seq DESC LIMIT 1",
                (name,),
            ).fetchone()
            return table.audit_from_row(row) if row else None

        return await self._db.run(q)

    async def rewrap_sealed(self, rewrap: Callable[[str, str, bytes], bytes], *, now: float, audit: AuditEvent) -> int:
        def q(conn: sqlite3.Connection) -> int:
            with transaction(conn):
                count = 0
                for name, sealed in conn.execute("SELECT name, sealed FROM vault").fetchall():
                    conn.execute("UPDATE vault SET sealed = ? WHERE name = ?", (rewrap("vault", name, bytes(sealed)), name))
                    count += 1
                for kid, sealed in conn.execute("SELECT kid, sealed_private FROM signing_keys").fetchall():
                    new = rewrap("key", kid, bytes(sealed))
                    conn.execute("UPDATE signing_keys SET sealed_private = ? WHERE kid = ?", (new, kid))
                    count += 1
                _append(conn, AuditEvent(**{**audit.__dict__, "detail": {**audit.detail, "rewrapped": count}}), now)
                return count

        return await self._db.run(q, inline=False)

    # -- counters -----------------------------------------------------------------
    async def count(self, key: str, *, until: int, now: float) -> int:
        def q(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "INSERT INTO counters (key, value, until) VALUES (?, 1, ?) ON CONFLICT (key) DO UPDATE SET"
                " value = CASE WHEN counters.until <= ? THEN 1 ELSE counters.value + 1 END,"
                " until = CASE WHEN counters.until <= ? THEN excluded.until ELSE counters.until END RETURNING value",
                (key, until, int(now), int(now)),
            ).fetchone()
            return int(row[0])

        return await self._db.run(q)

    async def first_seen(self, key: str, *, now: float, until: int) -> float:
        def q(conn: sqlite3.Connection) -> float:
            mark = f"seen:{key}"
            row = conn.execute(
                "INSERT INTO counters (key, value, until) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET"
                " value = CASE WHEN counters.until <= ? THEN excluded.value ELSE counters.value END,"
                " until = CASE WHEN counters.until <= ? THEN excluded.until ELSE counters.until END RETURNING value",
                (mark, float(now), until, int(now), int(now)),
            ).fetchone()
            return float(row[0])

        return await self._db.run(q)

    # -- approvals ------------------------------------------------------------------
    async def hold_approval(self, approval: Approval, *, now: float, max_pending: int, audit: AuditEvent) -> Approval:
        table.check_held(approval)
        values = table.approval_values(approval)

        def q(conn: sqlite3.Connection) -> Approval:
            # BEGIN IMMEDIATE: every writer of the file (any process) queues here, so the
            # look-up, the count and the insert are one step
            with transaction(conn):
                row = conn.execute(
                    f"SELECT {table.APPROVAL_COLUMNS} FROM approvals WHERE task = ? AND status = 'pending' AND digest = ?"
                    " AND expires_at > ? ORDER BY created_at DESC, id DESC LIMIT 1",
                    (approval.task, approval.digest, int(now)),
                ).fetchone()
                if row is not None:
                    return table.approval_from_row(row)
                (pending,) = conn.execute(
                    "SELECT COUNT(*) FROM approvals WHERE task = ? AND status = 'pending' AND expires_at > ?",
                    (approval.task, int(now)),
                ).fetchone()
                if pending >= max_pending:
                    raise errors.CapReached(approval.task)
                conn.execute(f"INSERT INTO approvals ({table.APPROVAL_COLUMNS}) VALUES ({', '.join('?' * 18)})", values)
                _append(conn, audit, now)
                return approval

        return await self._db.run(q)

    async def get_approval(self, approval_id: str) -> Approval | None:
        def q(conn: sqlite3.Connection) -> Approval | None:
            row = conn.execute(f"SELECT {table.APPROVAL_COLUMNS} FROM approvals WHERE id = ?", (approval_id,)).fetchone()
            return table.approval_from_row(row) if row else None

        return await self._db.run(q)

    async def list_approvals(
        self, *, status: ApprovalStatus | None, task: str | None, now: float, limit: int, before: str | None = None
    ) -> list[Approval]:
        sql, args = table.approvals_query(status=status, task=task, before=before, now=now, mark="?", ordered="id")

        def q(conn: sqlite3.Connection) -> list[Approval]:
            rows = conn.execute(sql, (*args, limit)).fetchall()
            return [table.approval_from_row(r) for r in rows]

        return await self._db.run(q)

    async def decide_approval(self, decided: Approval, *, now: float, audit: AuditEvent) -> Approval:
        decision = table.approval_decision(decided)

        def q(conn: sqlite3.Connection) -> Approval:
            with transaction(conn):
                row = conn.execute(
                    "UPDATE approvals SET status = ?, decided_by = ?, decided_at = ?, reason = ?, uses = ?, until = ?,"
                    " decision_mac = ? WHERE id = ? AND status = 'pending' AND expires_at > ?"
                    f" RETURNING {table.APPROVAL_COLUMNS}",
                    (*decision, decided.id, int(now)),
                ).fetchone()
                if row is None:
                    if conn.execute("SELECT 1 FROM approvals WHERE id = ?", (decided.id,)).fetchone() is None:
                        raise errors.NotFound(decided.id)
                    raise errors.Conflict(f"approval {decided.id} is no longer pending")
                _append(conn, audit, now)
                return table.approval_from_row(row)

        table.check_decision(decided)
        return await self._db.run(q)

    async def expire_approvals(
        self, *, now: float, audit: Callable[[Approval], AuditEvent], limit: int = 1000
    ) -> list[Approval]:
        def q(conn: sqlite3.Connection) -> list[Approval]:
            with transaction(conn):
                rows = conn.execute(
                    f"SELECT {table.APPROVAL_COLUMNS} FROM approvals WHERE status = 'pending' AND expires_at <= ?"
                    " ORDER BY expires_at, id LIMIT ?",
                    (int(now), limit),
                ).fetchall()
                expired = [table.approval_from_row(r, expired=True) for r in rows]
                for approval in expired:
                    conn.execute("UPDATE approvals SET status = 'expired' WHERE id = ?", (approval.id,))
                    _append(conn, audit(approval), now)
                return expired

        return await self._db.run(q, inline=False)  # upkeep, up to ``limit`` audit records: off the request loop

    async def reseal_approvals(
        self, reseal: Callable[[Approval], tuple[str, str] | None], *, now: float, audit: AuditEvent
    ) -> int:
        def q(conn: sqlite3.Connection) -> int:
            # BEGIN IMMEDIATE: no hold or decision of another process lands between the read and the writes
            with transaction(conn):
                rows = conn.execute(f"SELECT {table.APPROVAL_COLUMNS} FROM approvals ORDER BY id").fetchall()
                count = 0
                for row in rows:
                    macs = reseal(table.approval_from_row(row))
                    if macs is None:
                        continue
                    conn.execute("UPDATE approvals SET request_mac = ?, decision_mac = ? WHERE id = ?", (*macs, row[0]))
                    count += 1
                _append(conn, table.resealed_audit(audit, resealed=count, left=len(rows) - count), now)
                return count

        return await self._db.run(q, inline=False)

    # -- policy versions --------------------------------------------------------
    async def record_policy_version(self, version: str, files: Mapping[str, str], *, now: float) -> bool:
        def q(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT INTO policy_versions (version, loaded_at, files) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (version, now, json.dumps(dict(files), sort_keys=True)),
            )
            return cur.rowcount == 1

        return await self._db.run(q)

    async def policy_versions(self, *, limit: int) -> list[tuple[str, float]]:
        def q(conn: sqlite3.Connection) -> list[tuple[str, float]]:
            rows = conn.execute("SELECT version, loaded_at FROM policy_versions ORDER BY loaded_at DESC LIMIT ?", (limit,))
            return [(str(r[0]), float(r[1])) for r in rows.fetchall()]

        return await self._db.run(q)

    # -- audit --------------------------------------------------------------------
    async def append_audit(self, event: AuditEvent, *, now: float) -> AuditRecord:
        record = await self._db.run_batched(lambda conn: _append(conn, event, now))
        self.recent.add((record,))
        return record

    async def audit_records(self, *, after: int, limit: int) -> list[AuditRecord]:
        # the monitor tails in pages of about a hundred, inline (on a worker thread the
        # decoding would contend for the GIL with every request in flight); the audit
        # export and reports read pages of thousands, which go to the worker thread
        return await self._db.run(
            _audit_page(table.AUDIT_COLUMNS, table.audit_from_row, after, limit), inline=limit <= TAIL_PAGE
        )

    async def search_audit(
        self,
        *,
        task: str | None = None,
        principal: str | None = None,
        kind: str | None = None,
        before: int | None = None,
        limit: int,
        scan: int = 100_000,
    ) -> records.AuditPage:
        """See ``rows.AuditWindow`` for the window examined and where the next page starts."""
        table.check_page(limit, scan)

        def q(conn: sqlite3.Connection) -> records.AuditPage:
            first, last = conn.execute(table.AUDIT_ENDS).fetchone()
            window = table.AuditWindow.of(first, last, before=before, scan=scan, indexed=kind == table.ALERT_KIND)
            if window.empty:
                return records.AuditPage([], None)
            sql, args = table.audit_search(
                task=task, principal=principal, kind=kind, top=window.top, bound=window.bound, mark="?"
            )
            found = [table.audit_from_row(r) for r in conn.execute(sql, (*args, limit)).fetchall()]
            return records.AuditPage(found, window.next_before(found, limit))

        # a window of up to ``scan`` records: on the worker thread, never stalling the request loop
        return await self._db.run(q, inline=False)

    async def audit_counts(self, *, after: int, scan: int) -> dict[tuple[str, str, str], int]:
        table.check_page(1, scan)

        def q(conn: sqlite3.Connection) -> dict[tuple[str, str, str], int]:
            (last,) = conn.execute("SELECT MAX(seq) FROM audit").fetchone()
            rows = conn.execute(table.AUDIT_COUNTS.format(mark="?"), (table.counts_floor(last, after=after, scan=scan),))
            return table.audit_counts_from_rows(rows.fetchall())

        return await self._db.run(q, inline=False)

    async def audit_marks(self, *, after: int, limit: int) -> list[records.AuditMark]:
        page = _audit_page(table.AUDIT_MARK_COLUMNS, table.audit_mark_from_row, after, limit)
        return await self._db.run(page, inline=limit <= 4 * TAIL_PAGE)


def _audit_page(
    columns: str, convert: Callable[[Sequence[Any]], T], after: int, limit: int
) -> Callable[[sqlite3.Connection], list[T]]:
    """The query for one page of the chain after ``after``, as records or marks."""

    def q(conn: sqlite3.Connection) -> list[T]:
        rows = conn.execute(f"SELECT {columns} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)).fetchall()
        return [convert(r) for r in rows]

    return q
