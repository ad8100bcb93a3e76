"""Row ↔ record mapping shared by the SQL backends (same column order in SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from tether.audit.chain import AuditEvent, AuditRecord
from tether.model import Approval, ApprovalStatus, Task, TaskState
from tether.store.errors import Conflict, UnreadableRow
from tether.store.records import (
    AuditMark,
    Block,
    BlockKind,
    IssuedToken,
    Revocation,
    RevocationKind,
    StoredKey,
    VaultEntry,
)

log = logging.getLogger("tether.store")

__all__ = [
    "ALERT_KIND",
    "APPROVAL_COLUMNS",
    "APPROVAL_RETENTION",
    "AUDIT_COLUMNS",
    "AUDIT_COUNTS",
    "AUDIT_ENDS",
    "AUDIT_MARK_COLUMNS",
    "COUNT_TASKS",
    "KEY_COLUMNS",
    "TASK_COLUMNS",
    "TOKEN_COLUMNS",
    "VAULT_COLUMNS",
    "AuditWindow",
    "approval_decision",
    "approval_from_row",
    "approval_values",
    "audit_counts_from_rows",
    "audit_from_row",
    "audit_mark_from_row",
    "audit_search",
    "audit_values",
    "block_names",
    "blocks_from_rows",
    "check_decision",
    "check_held",
    "check_page",
    "counts_floor",
    "holdings_query",
    "key_from_row",
    "resealed_audit",
    "revocation_from_row",
    "task_counts",
    "task_from_row",
    "task_principals",
    "task_values",
    "tasks_query",
    "token_from_row",
    "token_values",
    "vault_from_row",
]

TASK_COLUMNS = (
    "id, agent, on_behalf_of, purpose, audiences, scopes, created_at, expires_at, "
    "max_depth, max_tokens, tokens_issued, state, ended_at, created_by"
)
TOKEN_COLUMNS = "jti, kind, task_id, parent_jti, sub, client_id, aud, scope, jkt, iat, exp, depth, revoked_at, x5t"
AUDIT_COLUMNS = "seq, ts, kind, outcome, principal, task, jti, error, detail, prev, hash"
#: the kind of the signed checkpoint records ``tether.audit.checkpoint`` writes; named here, not imported,
#: so that the store does not depend on the audit service (tests/test_layering.py checks they agree)
CHECKPOINT_KIND = "audit.checkpoint"
# the detail (JSON text) is only selected for checkpoint records, whose JWS the mark carries
AUDIT_MARK_COLUMNS = f"seq, ts, kind, hash, CASE WHEN kind = '{CHECKPOINT_KIND}' THEN detail END"
#: the anomaly monitor's alert records: rare, listed by the console, so a partial index holds them
#: (migrations 0008 SQLite / 0009 PostgreSQL) and a search for them is exhaustive, not a bounded scan
ALERT_KIND = "alert.raised"
KEY_COLUMNS = "kid, alg, public_jwk, sealed_private, created_at, retired_at, not_after"
VAULT_COLUMNS = "name, sealed, created_at, updated_at, version"
APPROVAL_COLUMNS = (
    "id, task, digest, request, view, groups, policies, created_at, expires_at, request_mac, "
    "creator_may_approve, status, decided_by, decided_at, reason, uses, until, decision_mac"
)
#: how long a decided or expired approval is kept after it stopped mattering (its expiry, or the
#: end of its approved window if later): long enough to answer a late poll or an operator's
#: question from the store, short enough that the table stays bounded; the audit chain keeps the rest
APPROVAL_RETENTION = 7 * 24 * 3600


def block_names(*groups: Iterable[str | None]) -> list[str]:
    """The distinct names a block check looks for, in order, without empty or missing ones.

    A block names a principal whatever its kind: blocking subject ``x`` also refuses an
    agent or client called ``x``. Both backends check exactly these names.
    """
    return list(dict.fromkeys(name for group in groups for name in group if name))


def task_principals(row: Sequence[Any] | None) -> tuple[str | None, ...]:
    """A task row's agent and subject (``on_behalf_of``): the principals a lookup also checks."""
    return () if row is None else (row[1], row[2])


def task_from_row(row: Sequence[Any]) -> Task:
    """A task row, or ``UnreadableRow`` (fail closed, never a 500) for one only a database writer made."""
    try:
        return _task_from_row(row)
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        log.error("task `%.40r`: its row cannot be read (%s)", row[0], type(exc).__name__)
        raise UnreadableRow("a task row cannot be read") from None


def _task_from_row(row: Sequence[Any]) -> Task:
    return Task(
        id=row[0],
        agent=row[1],
        on_behalf_of=row[2],
        purpose=row[3],
        audiences=tuple(json.loads(row[4])),
        scopes=frozenset(json.loads(row[5])),
        created_at=int(row[6]),
        expires_at=int(row[7]),
        max_depth=int(row[8]),
        max_tokens=int(row[9]),
        tokens_issued=int(row[10]),
        state=TaskState(row[11]),
        ended_at=None if row[12] is None else int(row[12]),
        created_by=row[13],
    )


def task_values(task: Task) -> tuple[Any, ...]:
    return (
        task.id,
        task.agent,
        task.on_behalf_of,
        task.purpose,
        json.dumps(list(task.audiences)),
        json.dumps(sorted(task.scopes)),
        task.created_at,
        task.expires_at,
        task.max_depth,
        task.max_tokens,
        task.tokens_issued,
        task.state.value,
        task.ended_at,
        task.created_by,
    )


_TOKEN_FIELDS = tuple(TOKEN_COLUMNS.split(", "))
_AUDIT_FIELDS = tuple(AUDIT_COLUMNS.split(", "))


_TOKEN_INTEGERS = ("iat", "exp", "depth")


def token_from_row(row: Sequence[Any]) -> IssuedToken:
    """Integer columns come back as ``int`` from both backends (SQLite INTEGER, PostgreSQL BIGINT);
    SQLite keeps any text a database writer put in one, which is ``UnreadableRow`` (never a 500)."""
    fields = dict(zip(_TOKEN_FIELDS, row, strict=True))
    numbers = [fields[name] for name in _TOKEN_INTEGERS] + ([] if fields["revoked_at"] is None else [fields["revoked_at"]])
    if any(isinstance(n, bool) or not isinstance(n, int) for n in numbers):
        log.error("token `%.40r`: its row cannot be read (text in an integer column)", fields["jti"])
        raise UnreadableRow("a token row cannot be read")
    return IssuedToken(**fields)


def token_values(token: IssuedToken) -> tuple[Any, ...]:
    """A token is recorded unrevoked: ``revoked_at`` starts empty."""
    return tuple(None if name == "revoked_at" else getattr(token, name) for name in _TOKEN_FIELDS)


def audit_from_row(row: Sequence[Any]) -> AuditRecord:
    """A detail that does not read as a JSON object (only a database writer makes one) is read as
    ``{}``: the record's hash then fails to verify, so the chain's verifiers report it broken there
    instead of every page that lists it failing with a 500."""
    fields = dict(zip(_AUDIT_FIELDS, row, strict=True))
    try:
        detail = json.loads(row[8])
    except (ValueError, TypeError, RecursionError) as exc:
        detail = None
        log.error("audit record %.20r: its detail cannot be read (%s)", row[0], type(exc).__name__)
    if not isinstance(detail, dict):
        detail = {}
    return AuditRecord(**{**fields, "ts": float(row[1]), "detail": detail})


def audit_mark_from_row(row: Sequence[Any]) -> AuditMark:
    jws = json.loads(row[4]).get("jws") if row[4] is not None else None
    return AuditMark(seq=int(row[0]), ts=float(row[1]), kind=row[2], hash=row[3], jws=jws if isinstance(jws, str) else None)


def audit_values(record: AuditRecord) -> tuple[Any, ...]:
    """``detail`` as the exact JSON that was hashed (``detail_json``) when the record carries it."""
    detail = record.detail_json or json.dumps(record.detail, sort_keys=True)
    return tuple(detail if name == "detail" else getattr(record, name) for name in _AUDIT_FIELDS)


def key_from_row(row: Sequence[Any]) -> StoredKey:
    return StoredKey(
        kid=row[0],
        alg=row[1],
        public_jwk=json.loads(row[2]),
        sealed_private=bytes(row[3]),
        created_at=int(row[4]),
        retired_at=None if row[5] is None else int(row[5]),
        not_after=None if row[6] is None else int(row[6]),
    )


def vault_from_row(row: Sequence[Any]) -> VaultEntry:
    return VaultEntry(str(row[0]), bytes(row[1]), float(row[2]), float(row[3]), int(row[4]))


def revocation_from_row(row: Sequence[Any]) -> Revocation:
    return Revocation(int(row[0]), RevocationKind(row[1]), row[2], int(row[3]), float(row[4]))


def _json_text(value: Any) -> str:
    """JSON text for a stored JSON column: ASCII escapes (PostgreSQL TEXT holds no NUL), no NaN."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)


def approval_values(approval: Approval) -> tuple[Any, ...]:
    """Every ``Approval`` field in ``APPROVAL_COLUMNS`` order."""
    return (
        approval.id,
        approval.task,
        approval.digest,
        _json_text(approval.request),
        _json_text(approval.view),
        _json_text(list(approval.groups)),
        _json_text(list(approval.policies)),
        approval.created_at,
        approval.expires_at,
        approval.request_mac,
        approval.creator_may_approve,
        *approval_decision(approval),
    )


def approval_decision(approval: Approval) -> tuple[Any, ...]:
    """The decision fields, the only ones ``decide_approval`` writes:
    ``status, decided_by, decided_at, reason, uses, until, decision_mac``."""
    return (
        approval.status.value,
        approval.decided_by,
        approval.decided_at,
        approval.reason,
        approval.uses,
        approval.until,
        approval.decision_mac,
    )


def check_held(approval: Approval) -> None:
    """A hold writes a request, never a decision (``Conflict`` otherwise, before the database is
    asked): only ``decide_approval`` approves, so no code path can store a request pre-approved."""
    undecided = dataclasses.replace(approval, status=ApprovalStatus.PENDING, decided_by=None, decided_at=None,
                                    reason="", uses=0, until=None, decision_mac="")  # fmt: skip
    if approval != undecided:
        raise Conflict(f"approval {approval.id} is held with decision fields set")


def check_decision(decided: Approval) -> None:
    """A decision approves or denies (``Conflict`` otherwise, before the database is asked)."""
    if decided.status not in (ApprovalStatus.APPROVED, ApprovalStatus.DENIED):
        raise Conflict(f"a decision approves or denies, not {decided.status.value}")


def resealed_audit(audit: AuditEvent, *, resealed: int, left: int) -> AuditEvent:
    """``Store.reseal_approvals``'s one audit record: ``audit`` with how many approvals were
    re-sealed and how many were left as they were (their MACs did not verify: still refused)."""
    return dataclasses.replace(audit, detail={**audit.detail, "resealed": resealed, "left": left})


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{type(value).__name__} where text was stored")
    return value


def _json_object(value: Any) -> dict[str, Any]:
    loaded = json.loads(_text(value))
    if not isinstance(loaded, dict):
        raise TypeError("not a JSON object")
    return loaded


def _json_texts(value: Any) -> tuple[str, ...]:
    loaded = json.loads(_text(value))
    if not isinstance(loaded, list) or not all(isinstance(v, str) for v in loaded):
        raise TypeError("not a JSON array of strings")
    return tuple(loaded)


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{type(value).__name__} where an integer was stored")
    return value


def approval_from_row(row: Sequence[Any], *, expired: bool = False) -> Approval:
    """SQLite returns ``creator_may_approve`` as 0/1, PostgreSQL as a bool: both become a bool.

    ``expired``: the row as the expiry sweep is about to store it (status ``expired``).

    A row only a database writer could have made (a status no code writes, JSON that does not
    parse, a value of the wrong type) is an approval whose MACs cannot verify: it is returned
    with empty MACs and no content, so every reader refuses it as tampered (``check_sealed``)
    instead of failing the whole request, list or expiry sweep with a 500."""
    try:
        return Approval(
            id=_text(row[0]),
            task=_text(row[1]),
            digest=_text(row[2]),
            request=_json_object(row[3]),
            view=_json_object(row[4]),
            groups=_json_texts(row[5]),
            policies=_json_texts(row[6]),
            created_at=_integer(row[7]),
            expires_at=_integer(row[8]),
            request_mac=_text(row[9]),
            creator_may_approve=bool(row[10]),
            status=ApprovalStatus.EXPIRED if expired else ApprovalStatus(row[11]),
            decided_by=None if row[12] is None else _text(row[12]),
            decided_at=None if row[13] is None else _integer(row[13]),
            reason=_text(row[14]),
            uses=_integer(row[15]),
            until=None if row[16] is None else _integer(row[16]),
            decision_mac=_text(row[17]),
        )
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        log.error("approval `%.40s`: its row cannot be read (%s); treating it as tampered", row[0], type(exc).__name__)
        return Approval(
            id=str(row[0]), task=str(row[1]), digest="", request={}, view={}, groups=(), policies=(), created_at=0,
            expires_at=0, request_mac="", status=ApprovalStatus.EXPIRED,
        )  # fmt: skip


def _after_row(table: str, *, mark: str, ordered: str, ties: str) -> str:
    """The keyset condition "rows after the row with id ``{mark}``" in newest-first order: older,
    or as old with an id beyond it (``ties``: ``<`` when ids run descending, ``>`` ascending)."""
    a_id, b_id = ordered.replace("id", "a.id", 1), ordered.replace("id", "b.id", 1)
    return (
        f" AND EXISTS (SELECT 1 FROM {table} b WHERE b.id = {mark} AND (a.created_at < b.created_at"
        f" OR (a.created_at = b.created_at AND {a_id} {ties} {b_id})))"
    )


def approvals_query(
    *, status: ApprovalStatus | None, task: str | None, before: str | None, now: float, mark: str, ordered: str
) -> tuple[str, list[object]]:
    """``Store.list_approvals``'s ``SELECT`` (newest first, a page before ``before``) for a driver whose
    parameter mark is ``mark`` and whose code-point ordering of ids is ``ordered`` (``id`` with its
    collation): one query text for both backends, so they filter and page the same way."""
    sql, args = f"SELECT {APPROVAL_COLUMNS} FROM approvals a WHERE 1 = 1", list[object]()
    if status is ApprovalStatus.PENDING:
        sql, args = sql + f" AND status = 'pending' AND expires_at > {mark}", [int(now)]
    elif status is ApprovalStatus.EXPIRED:
        sql, args = sql + f" AND (status = 'expired' OR (status = 'pending' AND expires_at <= {mark}))", [int(now)]
    elif status is not None:
        sql, args = sql + f" AND status = {mark}", [status.value]
    if task is not None:
        sql += f" AND task = {mark}"
        args.append(task)
    if before is not None:  # an unknown id pages from nowhere: nothing
        sql += _after_row("approvals", mark=mark, ordered=ordered, ties="<")
        args.append(before)
    a_id = ordered.replace("id", "a.id", 1)
    return sql + f" ORDER BY a.created_at DESC, {a_id} DESC LIMIT {mark}", args


def tasks_query(
    *,
    state: TaskState | None,
    agent: str | None,
    audience: str | None,
    after: str | None,
    now: float,
    mark: str,
    ordered: str,
    has_audience: str,
) -> tuple[str, list[object]]:
    """``Store.list_tasks``'s ``SELECT`` (newest first, ties by id; the page after the task ``after``).

    ``mark`` is the driver's parameter mark, ``ordered`` the code-point ordering of ids (``id`` with
    its collation) and ``has_audience`` the backend's exact membership test of one audience in the
    ``a.audiences`` JSON array (a ``{mark}`` for the value): one query text for both backends, so they
    filter and page alike. ``after`` is a keyset cursor: the rows strictly after that task in this
    order, so pages neither skip nor repeat a task while others are created; an unknown id pages
    from nowhere (no rows), like ``approvals_query``'s ``before``.
    """
    sql, args = f"SELECT {', '.join('a.' + c for c in TASK_COLUMNS.split(', '))} FROM tasks a WHERE 1 = 1", list[object]()
    if state is TaskState.ACTIVE:
        sql, args = sql + f" AND a.state = 'active' AND a.expires_at > {mark}", [int(now)]
    elif state is TaskState.EXPIRED:
        sql, args = sql + f" AND (a.state = 'expired' OR (a.state = 'active' AND a.expires_at <= {mark}))", [int(now)]
    elif state is not None:
        sql, args = sql + f" AND a.state = {mark}", [state.value]
    if agent is not None:
        sql += f" AND a.agent = {mark}"
        args.append(agent)
    if audience is not None:
        sql += f" AND {has_audience.format(mark=mark)}"
        args.append(audience)
    if after is not None:
        sql += _after_row("tasks", mark=mark, ordered=ordered, ties=">")
        args.append(after)
    return sql + f" ORDER BY a.created_at DESC, {ordered.replace('id', 'a.id', 1)} LIMIT {mark}", args


def audit_search(
    *,
    task: str | None,
    principal: str | None,
    kind: str | None,
    top: int,
    bound: int | None,
    mark: str,
) -> tuple[str, list[object]]:
    """``Store.search_audit``'s ``SELECT`` of matches with ``bound <= seq < top``, newest first.

    ``bound`` is ``None`` for the indexed search (of alerts: a partial index), which reads every
    match below ``top``. A ``kind`` ending in ``.`` is a prefix, compared with ``substr`` (never
    ``LIKE``: a ``%`` or ``_`` in it is a literal character); the alert kind is written as a
    literal, so the planner can see the partial index's predicate (a bound value hides it).
    """
    sql, args = f"SELECT {AUDIT_COLUMNS} FROM audit WHERE seq < {mark}", list[object]([top])
    if bound is not None:
        sql += f" AND seq >= {mark}"
        args.append(bound)
    if task is not None:
        sql += f" AND task = {mark}"
        args.append(task)
    if principal is not None:
        sql += f" AND principal = {mark}"
        args.append(principal)
    if kind == ALERT_KIND:
        sql += f" AND kind = '{ALERT_KIND}'"
    elif kind is not None and kind.endswith("."):
        sql += f" AND substr(kind, 1, {mark}) = {mark}"
        args.extend([len(kind), kind])
    elif kind is not None:
        sql += f" AND kind = {mark}"
        args.append(kind)
    return sql + f" ORDER BY seq DESC LIMIT {mark}", args


#: each task in its effective state (an active task past its hard cap is expired, as
#: ``Task.effective_state`` says), counted; ``{mark}``: the driver's parameter mark, bound to ``int(now)``
COUNT_TASKS = (
    "SELECT s, COUNT(*) FROM (SELECT CASE WHEN state = 'active' AND expires_at <= {mark} THEN 'expired'"
    " ELSE state END AS s FROM tasks) AS t GROUP BY s"
)


def task_counts(rows: Iterable[Sequence[Any]]) -> dict[TaskState, int]:
    """``COUNT_TASKS``'s rows as a count for every state (0 when none); a state no code writes is left out."""
    counts = dict.fromkeys(TaskState, 0)
    for state, count in rows:
        try:
            counts[TaskState(state)] += int(count)
        except ValueError:
            log.error("tasks in an unknown state `%.20s` left out of the counts", state)
    return counts


def holdings_query(*, mark: str, ordered: str) -> str:
    """``Store.agent_holdings``'s ``SELECT``: per agent of live tasks (active, before their hard cap),
    how many and how many live tokens (unrevoked, unexpired) are bound to them; most tokens first,
    ties by agent (``ordered``: ``t.agent`` with the backend's code-point collation). Binds ``int(now)``
    twice, then the limit."""
    return (
        "SELECT t.agent, COUNT(*), COALESCE(SUM(t.live), 0) FROM (SELECT a.agent, (SELECT COUNT(*) FROM tokens k"
        f" WHERE k.task_id = a.id AND k.revoked_at IS NULL AND k.exp > {mark}) AS live FROM tasks a"
        f" WHERE a.state = 'active' AND a.expires_at > {mark}) AS t GROUP BY t.agent"
        f" ORDER BY 3 DESC, {ordered} LIMIT {mark}"
    )


def blocks_from_rows(rows: Iterable[Sequence[Any]]) -> list[Block]:
    """``kind, value, since`` rows as kill-switch entries (a kind no code writes is left out)."""
    found = []
    for kind, value, since in rows:
        try:
            found.append(Block(kind=BlockKind(kind), value=str(value), since=float(since)))
        except ValueError:
            log.error("a block of unknown kind `%.20s` left out of the list", kind)
    return found


def check_page(limit: int, scan: int) -> None:
    """A page holds at least one record and a scan examines at least one (``ValueError``: the caller's bug)."""
    if limit < 1 or scan < 1:
        raise ValueError("limit and scan must be positive")


#: the lowest and highest ``seq`` (two scalar subqueries: each is one probe of the primary key)
AUDIT_ENDS = "SELECT (SELECT MIN(seq) FROM audit), (SELECT MAX(seq) FROM audit)"

#: ``(kind, outcome, error or "")`` → count over the records with ``seq`` above ``{mark}``
AUDIT_COUNTS = (
    "SELECT kind, outcome, COALESCE(error, ''), COUNT(*) FROM audit WHERE seq > {mark}"
    " GROUP BY kind, outcome, COALESCE(error, '')"
)


def counts_floor(last: int | None, *, after: int, scan: int) -> int:
    """``Store.audit_counts`` counts records with ``seq`` above this: above ``after``, and among the
    ``scan`` newest (``seq`` numbers are contiguous, as the chain requires, so those are the ones above
    ``last - scan``)."""
    return after if last is None else max(after, int(last) - scan)


def audit_counts_from_rows(rows: Iterable[Sequence[Any]]) -> dict[tuple[str, str, str], int]:
    return {(str(kind), str(outcome), str(error)): int(count) for kind, outcome, error, count in rows}


@dataclasses.dataclass(frozen=True)
class AuditWindow:
    """The part of the chain one ``Store.search_audit`` page examines, and where the next page starts.

    The chain numbers its records one after another (``seq`` n+1 follows n; ``first_broken``
    refuses a gap), so "the ``scan`` newest records below ``before``" are those with
    ``before - scan <= seq < before``: a primary-key range, read newest first, that stops at
    ``limit`` matches. ``top`` is ``before`` (or one past the newest record; never above it, so a
    cursor from the future cannot walk through empty pages). The search for alerts has no ``bound``:
    the partial index ``audit_alerts`` holds them all, so it reads every match below ``top``. A search
    by task is a bounded scan too: an index on ``(task, seq)`` would cost every append (the token
    exchange's hot path) 6-7% of its throughput.

    ``next_before`` (pinned by tests/store/test_console_conformance.py):

    - ``limit`` matches found: the ``seq`` of the last (oldest) match; the records between it and
      ``bound`` were not examined and the next page starts there;
    - fewer, in an indexed search: ``None`` (every match was read);
    - fewer, in a scan: ``bound``, the lowest ``seq`` examined, unless that is the log's first
      record, then ``None`` (the start of the log was examined).
    """

    top: int
    bound: int | None
    first: int
    empty: bool = False

    @classmethod
    def of(cls, first: int | None, last: int | None, *, before: int | None, scan: int, indexed: bool) -> AuditWindow:
        if first is None or last is None:
            return cls(top=0, bound=None, first=0, empty=True)
        first, last = int(first), int(last)
        top = last + 1 if before is None else min(before, last + 1)
        if top <= first:
            return cls(top=top, bound=None, first=first, empty=True)
        return cls(top=top, bound=None if indexed else max(top - scan, first), first=first)

    def next_before(self, found: Sequence[AuditRecord], limit: int) -> int | None:
        if len(found) >= limit:
            return found[-1].seq
        if self.bound is None or self.bound <= self.first:
            return None
        return self.bound
