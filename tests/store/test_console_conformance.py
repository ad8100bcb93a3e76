"""The Store methods the operator console reads (issue 18), in every backend: SQLite and PostgreSQL.

One suite for both (STYLE rule 5): ``list_tasks`` keyset pages and the exact audience filter,
``count_tasks``, ``task_tokens``, ``agent_holdings``, ``list_blocks``, ``search_audit`` and
``audit_counts`` answer alike, with the same ordering and tie-breaks. The console escapes and
authorises what it shows (SECURITY WEB-03, WEB-05); the store's part is to answer exactly, to
never let a filter value act as a pattern, to keep an audit page bounded, and to fail closed
(``StoreUnavailable``) rather than with a driver's exception.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from storekit import AGENT, BACKENDS, EVENT, NOW, chain_ok, run, task, token, upgrade_from

from tether.audit.chain import AuditEvent, AuditRecord, first_broken
from tether.model import TaskState
from tether.store.errors import StoreUnavailable
from tether.store.protocol import Store
from tether.store.records import AgentHolding, AuditPage, Block, BlockKind
from tether.store.rows import audit_search
from tether.store.sqlite.store import SqliteStore

T0 = int(NOW)


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- list_tasks ------------------------------------------------------------------------------------
def test_list_tasks_pages_of_40_over_250_tasks_have_no_gap_or_duplicate(kind: str, tmp_path: Path) -> None:
    """Keyset pages (``after`` = the last id of the previous page) walk the newest-first order exactly,
    ties on ``created_at`` broken by id in code-point order (upper case before lower case, whatever
    the database's collation)."""

    async def body(store: Store) -> None:
        ids = []
        for i in range(250):
            # three tasks per second (ties), ids whose code-point and dictionary orders differ
            task_id = f"tsk_{'Aa'[i % 2]}{(i * 7919) % 1000:03d}_{i}"
            await store.create_task(task(id=task_id, created_at=T0 - i // 3), EVENT)
            ids.append((-(T0 - i // 3), task_id))
        expected = [task_id for _, task_id in sorted(ids)]
        pages: list[list[str]] = []
        after = None
        while True:
            page = await store.list_tasks(state=None, agent=None, now=NOW, limit=40, after=after)
            if not page:
                break
            pages.append([t.id for t in page])
            after = page[-1].id
        assert [len(p) for p in pages] == [40] * 6 + [10]
        assert [t for p in pages for t in p] == expected
        # a caller that knows nothing of the new arguments gets the first page
        legacy = await store.list_tasks(state=None, agent=None, now=NOW, limit=40)
        assert [t.id for t in legacy] == pages[0]

    run(kind, tmp_path, body)


def test_list_tasks_after_an_unknown_id_is_empty(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        for i in range(3):
            await store.create_task(task(id=f"tsk_{i}"), EVENT)
        assert await store.list_tasks(state=None, agent=None, now=NOW, limit=10, after="tsk_missing") == []
        assert await store.list_tasks(state=None, agent=None, now=NOW, limit=10, after="%") == []
        last = await store.list_tasks(state=None, agent=None, now=NOW, limit=10, after="tsk_2")
        assert last == [], "nothing follows the last task"
        assert [t.id for t in await store.list_tasks(state=None, agent=None, now=NOW, limit=10, after="tsk_0")] == [
            "tsk_1",
            "tsk_2",
        ]

    run(kind, tmp_path, body)


def test_list_tasks_audience_filter_is_exact(kind: str, tmp_path: Path) -> None:
    """``https://a`` is not ``https://ab`` nor ``https://a/``; a ``%`` or ``_`` is a character, not a pattern."""

    async def body(store: Store) -> None:
        audiences = {
            "tsk_1": ("https://a",),
            "tsk_2": ("https://ab",),
            "tsk_3": ("https://x", "https://a"),
            "tsk_4": ("https://a/",),
            "tsk_5": ("https://%",),
            "tsk_6": ("https://A",),
            "tsk_7": ('https://a"',),
        }
        for i, (task_id, auds) in enumerate(audiences.items()):
            await store.create_task(task(id=task_id, audiences=auds, created_at=T0 - i), EVENT)

        async def ids(audience: str, **args: object) -> list[str]:
            fields: dict[str, object] = {"state": None, "agent": None, "now": NOW, "limit": 50, **args}
            return [t.id for t in await store.list_tasks(audience=audience, **fields)]  # type: ignore[arg-type]

        assert await ids("https://a") == ["tsk_1", "tsk_3"]
        assert await ids("https://%") == ["tsk_5"]
        assert await ids("https://_") == []
        assert await ids("https://") == []
        assert await ids('https://a"') == ["tsk_7"]
        assert await ids("[]") == []
        # with the other filters and the cursor
        assert await ids("https://a", after="tsk_1") == ["tsk_3"]
        assert await ids("https://a", agent="spiffe://t/other") == []
        assert await ids("https://a", state=TaskState.ACTIVE) == ["tsk_1", "tsk_3"]
        assert await ids("https://a", state=TaskState.COMPLETED) == []

    run(kind, tmp_path, body)


def test_list_tasks_filters_by_effective_state_and_agent_with_the_cursor(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        await store.create_task(task(id="tsk_live", created_at=T0), EVENT)
        await store.create_task(task(id="tsk_late", created_at=T0 - 1, expires_at=T0), EVENT)  # past its cap
        await store.create_task(task(id="tsk_b", agent="spiffe://t/b", created_at=T0 - 2), EVENT)
        await store.create_task(task(id="tsk_done", created_at=T0 - 3), EVENT)
        await store.end_task("tsk_done", TaskState.COMPLETED, now=NOW, audit=EVENT)

        async def ids(**args: object) -> list[str]:
            fields: dict[str, object] = {"state": None, "agent": None, "now": NOW, "limit": 50, **args}
            return [t.id for t in await store.list_tasks(**fields)]  # type: ignore[arg-type]

        assert await ids(state=TaskState.ACTIVE) == ["tsk_live", "tsk_b"]
        assert await ids(state=TaskState.EXPIRED) == ["tsk_late"]
        assert await ids(state=TaskState.COMPLETED) == ["tsk_done"]
        assert await ids(agent=AGENT) == ["tsk_live", "tsk_late", "tsk_done"]
        assert await ids(agent=AGENT, after="tsk_live") == ["tsk_late", "tsk_done"]
        assert await ids(state=TaskState.ACTIVE, after="tsk_live", limit=1) == ["tsk_b"]

    run(kind, tmp_path, body)


# -- count_tasks, task_tokens, agent_holdings -------------------------------------------------------
def test_count_tasks_has_every_state_and_counts_a_task_past_its_cap_as_expired(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        assert await store.count_tasks(now=NOW) == dict.fromkeys(TaskState, 0)
        await store.create_task(task(id="tsk_live"), EVENT)
        await store.create_task(task(id="tsk_live2", expires_at=T0 + 1), EVENT)
        await store.create_task(task(id="tsk_cap", expires_at=T0), EVENT)  # expires_at == now: expired
        await store.create_task(task(id="tsk_old", expires_at=T0 - 5), EVENT)
        await store.create_task(task(id="tsk_susp", state=TaskState.SUSPENDED), EVENT)
        for task_id, state in (
            ("tsk_c1", TaskState.COMPLETED),
            ("tsk_c2", TaskState.COMPLETED),
            ("tsk_x", TaskState.CANCELLED),
        ):
            await store.create_task(task(id=task_id), EVENT)
            await store.end_task(task_id, state, now=NOW - 10, audit=EVENT)
        counts = await store.count_tasks(now=NOW)
        assert counts == {
            TaskState.ACTIVE: 2,
            TaskState.EXPIRED: 2,
            TaskState.SUSPENDED: 1,
            TaskState.COMPLETED: 2,
            TaskState.CANCELLED: 1,
        }
        # one second later the second live task is past its cap too; the swept ones stay expired
        assert (await store.count_tasks(now=NOW + 1))[TaskState.ACTIVE] == 1
        await store.expire_tasks(now=NOW)
        assert await store.count_tasks(now=NOW) == counts

    run(kind, tmp_path, body)


def test_task_tokens_oldest_first_ties_by_jti_at_most_limit(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        mine, other = task(id="tsk_mine"), task(id="tsk_other")
        for t in (mine, other):
            await store.create_task(t, EVENT)
        made = []
        for jti, iat in (("j_b", T0 - 5), ("j_C", T0 - 5), ("j_a", T0 - 9), ("j_d", T0)):
            issued = dataclasses.replace(token(mine.id), jti=jti, iat=iat)
            await store.issue_token(issued, now=NOW, spends=[], audit=EVENT)
            made.append(issued)
        await store.issue_token(dataclasses.replace(token(other.id), iat=T0 - 20), now=NOW, spends=[], audit=EVENT)
        got = await store.task_tokens(mine.id, limit=10)
        assert [t.jti for t in got] == ["j_a", "j_C", "j_b", "j_d"]  # iat, then jti in code-point order
        assert got[0] == made[2], "the stored lineage record comes back whole"
        assert [t.jti for t in await store.task_tokens(mine.id, limit=2)] == ["j_a", "j_C"]
        assert await store.task_tokens("tsk_missing", limit=10) == []
        await store.revoke_tree("j_b", now=NOW, audit=EVENT)
        revoked = await store.task_tokens(mine.id, limit=10)
        assert [t.revoked_at is not None for t in revoked] == [False, False, True, False], "revoked ones stay listed"

    run(kind, tmp_path, body)


async def issue(store: Store, task_id: str | None, *, exp: int = T0 + 300, sub: str = AGENT) -> str:
    issued = token(task_id, exp=exp, sub=sub)
    await store.issue_token(issued, now=NOW, spends=[], audit=EVENT)
    return issued.jti


def test_agent_holdings_counts_live_tasks_and_live_tokens_most_tokens_first(kind: str, tmp_path: Path) -> None:
    later = NOW + 20

    async def body(store: Store) -> None:
        a, b, c, d = "spiffe://t/a", "spiffe://t/b", "spiffe://t/c", "spiffe://t/d"
        for task_id, agent in (("a1", a), ("a2", a), ("b1", b), ("c1", c), ("d1", d), ("d2", d), ("a3", a)):
            await store.create_task(task(id=task_id, agent=agent, expires_at=T0 + (10 if task_id == "d2" else 900)), EVENT)
        await issue(store, "a1")
        await issue(store, "a1")
        await issue(store, "a2")
        await store.revoke_tree(await issue(store, "a2"), now=NOW, audit=EVENT)  # revoked: not live
        await issue(store, "a2", exp=T0 + 10)  # expired by ``later``: not live
        for _ in range(3):
            await issue(store, "b1")
        await issue(store, "d1")
        await issue(store, "d2")  # its task is past its cap by ``later``
        await issue(store, "a3")
        await store.end_task("a3", TaskState.COMPLETED, now=NOW, audit=EVENT)  # ended: neither task nor token
        await store.end_task("d1", TaskState.CANCELLED, now=NOW, audit=EVENT)
        await issue(store, None, sub=c)  # bound to no task: counts for no agent
        holdings = await store.agent_holdings(now=later, limit=10)
        assert holdings == [AgentHolding(a, 2, 3), AgentHolding(b, 1, 3), AgentHolding(c, 1, 0)]
        assert await store.agent_holdings(now=later, limit=2) == holdings[:2]
        at_now = await store.agent_holdings(now=NOW, limit=10)
        assert at_now == [AgentHolding(a, 2, 4), AgentHolding(b, 1, 3), AgentHolding(d, 1, 1), AgentHolding(c, 1, 0)]

    run(kind, tmp_path, body)


# -- list_blocks ------------------------------------------------------------------------------------
def test_list_blocks_newest_first_ties_by_kind_then_value(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        assert await store.list_blocks(limit=10) == []
        entries = [
            (BlockKind.SUBJECT, "user:b", NOW + 1),
            (BlockKind.AGENT, "spiffe://t/z", NOW + 1),
            (BlockKind.SUBJECT, "user:A", NOW + 1),
            (BlockKind.AGENT, "spiffe://t/old", NOW),
            (BlockKind.AGENT, "spiffe://t/new", NOW + 2.5),
        ]
        for block_kind, value, at in entries:
            await store.block(block_kind, value, now=at, audit=EVENT)
        assert await store.list_blocks(limit=10) == [
            Block(BlockKind.AGENT, "spiffe://t/new", NOW + 2.5),
            Block(BlockKind.AGENT, "spiffe://t/z", NOW + 1),
            Block(BlockKind.SUBJECT, "user:A", NOW + 1),
            Block(BlockKind.SUBJECT, "user:b", NOW + 1),
            Block(BlockKind.AGENT, "spiffe://t/old", NOW),
        ]
        assert len(await store.list_blocks(limit=2)) == 2
        await store.unblock(BlockKind.AGENT, "spiffe://t/z", now=NOW + 3, audit=EVENT)
        assert [b.value for b in await store.list_blocks(limit=10)] == [
            "spiffe://t/new",
            "user:A",
            "user:b",
            "spiffe://t/old",
        ]

    run(kind, tmp_path, body)


# -- search_audit -----------------------------------------------------------------------------------
KINDS = ["approval.held", "approval.decided", "approvalXfoo", "approval", "appr%al.x", "a_proval.y", "token.issued"]
# details a careless round trip would change: floats, the largest exact integer, astral and NUL characters, nesting
DETAIL = {"n": 1.5, "big": 2**53 - 1, "text": '\u2713 \U0001f600 \u0000 "q"', "nested": [{"a": [True, None]}]}


def event(i: int, kind: str | None = None) -> AuditEvent:
    """Record ``i`` (seq ``i + 1`` in a fresh store): kind, principal, task and error cycle independently."""
    return AuditEvent(
        kind=kind or KINDS[i % len(KINDS)],
        outcome="ok" if i % 3 else "denied",
        principal=f"p{i % 2}",
        task=f"tsk_{i % 4}",
        error=None if i % 3 else ("invalid_grant" if i % 2 else None),
        detail={**DETAIL, "i": i},
    )


async def fill(store: Store, n: int) -> list[AuditRecord]:
    for i in range(n):
        await store.append_audit(event(i), now=NOW + i)
    records = await store.audit_records(after=0, limit=n)
    assert [r.seq for r in records] == list(range(1, n + 1))
    return records


def expected(records: list[AuditRecord], **filters: str) -> list[int]:
    """The seqs matching ``filters`` newest first, computed in Python (a prefix: the kind ends in ".")."""

    def matches(r: AuditRecord) -> bool:
        wanted = filters.get("kind")
        if wanted is not None and not (r.kind.startswith(wanted) if wanted.endswith(".") else r.kind == wanted):
            return False
        return all(getattr(r, field) == value for field, value in filters.items() if field != "kind")

    return [r.seq for r in reversed(records) if matches(r)]


def test_search_audit_each_filter_alone_and_combined(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        records = await fill(store, 84)
        cases: list[dict[str, str]] = [
            {},
            {"task": "tsk_1"},
            {"principal": "p0"},
            {"kind": "approval.held"},
            {"kind": "approval."},
            {"task": "tsk_2", "principal": "p0"},
            {"task": "tsk_3", "kind": "approval."},
            {"principal": "p1", "kind": "token.issued"},
            {"task": "tsk_0", "principal": "p0", "kind": "approval."},
        ]
        for filters in cases:
            page = await store.search_audit(**filters, limit=1000, scan=1000)  # type: ignore[arg-type]
            want = expected(records, **filters)
            assert [r.seq for r in page.records] == want, filters
            assert page.next_before is None, filters
            assert want, filters
        # some combined filter must select a strict, non-empty subset of each single one
        combined = expected(records, task="tsk_3", kind="approval.")
        assert combined and set(combined) < set(expected(records, task="tsk_3"))
        assert await store.search_audit(task="tsk_missing", limit=10) == AuditPage([], None)
        assert await store.search_audit(principal="p%", limit=10) == AuditPage([], None)
        assert await store.search_audit(kind="token.%", limit=10) == AuditPage([], None)

    run(kind, tmp_path, body)


def test_search_audit_kind_prefix_is_literal_percent_and_underscore_are_not_wildcards(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        await fill(store, len(KINDS))

        async def kinds(prefix: str) -> list[str]:
            return [r.kind for r in (await store.search_audit(kind=prefix, limit=100)).records]

        assert await kinds("approval.") == ["approval.decided", "approval.held"]  # not approvalXfoo, not approval
        assert await kinds("appr%al.") == ["appr%al.x"]
        assert await kinds("a_proval.") == ["a_proval.y"], "_ matched one character"
        assert await kinds("%.") == []
        assert await kinds("_pproval.") == []
        assert await kinds("approval%") == [], "an exact kind is not a pattern"
        assert await kinds("approval") == ["approval"]
        assert await kinds(".") == []
        assert await kinds("token.issued.") == []

    run(kind, tmp_path, body)


def test_search_audit_scan_bound_and_next_before(kind: str, tmp_path: Path) -> None:
    """The pinned paging rule (``rows.AuditWindow``): a scan examines at most ``scan`` records below
    ``before``; ``next_before`` is the last match's seq when ``limit`` matched, else the lowest seq
    examined, or None once the first record was examined."""

    async def body(store: Store) -> None:
        records = await fill(store, 100)  # seq 1..100; "approval.held" at seq 1, 8, 15, ..., 99
        held = expected(records, kind="approval.held")
        assert held == list(range(99, 0, -7))
        page = await store.search_audit(kind="approval.held", limit=100, scan=10)
        assert page == AuditPage([records[98], records[91]], 91), "seq 91..100 examined: two matches, then below 91"
        page = await store.search_audit(kind="approval.held", before=91, limit=100, scan=10)
        assert page == AuditPage([records[84]], 81)
        page = await store.search_audit(kind="approval.held", before=81, limit=100, scan=2)
        assert page == AuditPage([], 79), "seq 79..80 examined, nothing matched: go on below 79"
        page = await store.search_audit(kind="approval.held", limit=2, scan=50)
        assert [r.seq for r in page.records] == [99, 92] and page.next_before == 92, "limit reached: the last match"
        page = await store.search_audit(kind="approval.held", before=11, limit=100, scan=10)
        assert page == AuditPage([records[7], records[0]], None), "seq 1..10 examined: the log's start"
        page = await store.search_audit(kind="approval.held", before=10, limit=100, scan=50)
        assert [r.seq for r in page.records] == [8, 1] and page.next_before is None
        page = await store.search_audit(kind="approval.held", before=2, limit=1, scan=50)
        assert page == AuditPage([records[0]], 1), "limit reached on the first record: its seq, then an empty page"
        assert await store.search_audit(kind="approval.held", before=1, limit=1, scan=50) == AuditPage([], None)
        assert await store.search_audit(before=0, limit=10) == AuditPage([], None)
        # a cursor beyond the newest record is the newest record's page, not empty pages from the future
        far = await store.search_audit(kind="approval.held", before=10**12, limit=100, scan=10)
        assert far == AuditPage([records[98], records[91]], 91)

        # walking every page finds each match once, whatever the page and scan sizes
        for limit, scan in ((1, 7), (3, 10), (100, 13), (2, 1000)):
            seen: list[int] = []
            before = None
            for _ in range(200):
                page = await store.search_audit(kind="approval.held", before=before, limit=limit, scan=scan)
                assert len(page.records) <= limit
                assert all(before is None or r.seq < before for r in page.records)
                seen += [r.seq for r in page.records]
                if page.next_before is None:
                    break
                before = page.next_before
            assert seen == held, (limit, scan)

    run(kind, tmp_path, body)


def test_search_audit_records_are_audit_records_own_and_the_chain_verifies(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        records = await fill(store, 30)
        page = await store.search_audit(limit=100)
        assert page.records == list(reversed(records))
        for mine, theirs in zip(page.records, reversed(records), strict=True):
            assert mine.as_json() == theirs.as_json()
            assert mine.detail_json == theirs.detail_json
            assert mine.detail == {**DETAIL, "i": mine.seq - 1}
        assert first_broken([r.as_json() for r in reversed(page.records)]) is None
        assert await chain_ok(store) == 30

    run(kind, tmp_path, body)


def test_search_audit_finds_every_alert_beyond_the_scan_bound(kind: str, tmp_path: Path) -> None:
    """Alerts are rare: the partial index holds them, so their search reads all of them, not a window."""

    async def body(store: Store) -> None:
        await store.append_audit(event(0, "alert.raised"), now=NOW)
        await fill_more(store, 40)
        await store.append_audit(event(41, "alert.raised"), now=NOW + 41)
        page = await store.search_audit(kind="alert.raised", limit=10, scan=5)
        assert [r.seq for r in page.records] == [42, 1] and page.next_before is None
        page = await store.search_audit(kind="alert.raised", limit=1, scan=5)
        assert [r.seq for r in page.records] == [42] and page.next_before == 42
        page = await store.search_audit(kind="alert.raised", before=42, limit=1, scan=5)
        assert [r.seq for r in page.records] == [1]
        page = await store.search_audit(kind="alert.raised", principal="p1", limit=10, scan=5)
        assert [r.seq for r in page.records] == [42]
        page = await store.search_audit(kind="alert.", limit=10, scan=5)
        assert [r.seq for r in page.records] == [42] and page.next_before == 38, "the prefix search is a bounded scan"

    run(kind, tmp_path, body)


async def fill_more(store: Store, n: int) -> None:
    for i in range(1, n + 1):
        await store.append_audit(event(i, "token.issued"), now=NOW + i)


def test_sqlite_alert_search_uses_the_partial_index(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "tether.db")
    try:
        sql, args = audit_search(task=None, principal=None, kind="alert.raised", top=10, bound=None, mark="?")
        plan = store._db.run_sync(lambda c: c.execute("EXPLAIN QUERY PLAN " + sql, (*args, 5)).fetchall())
        assert any("audit_alerts" in str(row[-1]) for row in plan), plan
        sql, args = audit_search(task="tsk_1", principal=None, kind=None, top=10, bound=5, mark="?")
        plan = store._db.run_sync(lambda c: c.execute("EXPLAIN QUERY PLAN " + sql, (*args, 5)).fetchall())
        assert any("INTEGER PRIMARY KEY" in str(row[-1]) for row in plan), plan  # a range of seq, never a table scan
    finally:
        store.close()


def test_search_audit_refuses_an_empty_page_or_scan(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        with pytest.raises(ValueError, match="positive"):
            await store.search_audit(limit=0)
        with pytest.raises(ValueError, match="positive"):
            await store.search_audit(limit=5, scan=0)
        with pytest.raises(ValueError, match="positive"):
            await store.audit_counts(after=0, scan=0)

    run(kind, tmp_path, body)


# -- audit_counts -----------------------------------------------------------------------------------
def test_audit_counts_after_and_within_the_scan(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        assert await store.audit_counts(after=0, scan=100) == {}
        records = await fill(store, 42)

        def counted(rs: list[AuditRecord]) -> dict[tuple[str, str, str], int]:
            out: dict[tuple[str, str, str], int] = {}
            for r in rs:
                key = (r.kind, r.outcome, r.error or "")
                out[key] = out.get(key, 0) + 1
            return out

        everything = await store.audit_counts(after=0, scan=1000)
        assert everything == counted(records)
        assert ("approval.held", "denied", "") in everything and ("approval.decided", "denied", "invalid_grant") in everything
        assert await store.audit_counts(after=30, scan=1000) == counted(records[30:])
        assert await store.audit_counts(after=0, scan=5) == counted(records[-5:]), "only the 5 newest examined"
        assert await store.audit_counts(after=40, scan=5) == counted(records[40:])
        assert await store.audit_counts(after=42, scan=5) == {}

    run(kind, tmp_path, body)


# -- failure and migration --------------------------------------------------------------------------
def test_every_console_read_fails_closed_with_store_unavailable(kind: str, tmp_path: Path) -> None:
    """A database that cannot answer (its tables gone) is ``StoreUnavailable`` (a 503), never a driver exception."""

    async def body(store: Store) -> None:
        await store.create_task(task(id="tsk_1"), EVENT)
        drop = "DROP TABLE tasks; DROP TABLE tokens; DROP TABLE blocks; DROP TABLE audit"
        if isinstance(store, SqliteStore):
            store._db.run_sync(lambda c: c.executescript(drop))
        else:
            from tether.store.postgres.store import PostgresRedisStore

            assert isinstance(store, PostgresRedisStore)
            async with store.pool.connection() as conn:
                await conn.execute(drop.encode())
        reads = [
            store.list_tasks(state=None, agent=None, now=NOW, limit=5, audience="https://a", after="tsk_1"),
            store.count_tasks(now=NOW),
            store.task_tokens("tsk_1", limit=5),
            store.agent_holdings(now=NOW, limit=5),
            store.list_blocks(limit=5),
            store.search_audit(limit=5),
            store.search_audit(kind="alert.raised", limit=5),
            store.audit_counts(after=0, scan=5),
        ]
        for read in reads:
            with pytest.raises(StoreUnavailable):
                await read

    run(kind, tmp_path, body)


def test_a_database_on_the_previous_schema_migrates_and_serves_the_console(kind: str, tmp_path: Path) -> None:
    """The console migration only adds indexes: a deployment one version behind refuses to serve
    until migrated, then migrates in place, keeping its tasks and chain, and answers the new reads."""
    old_task = (
        "INSERT INTO tasks (id, agent, audiences, scopes, created_at, expires_at, max_depth, max_tokens, state)"
        " VALUES ('tsk_old', 'spiffe://t/agent', '[\"https://a\"]', '[]', 1800000000, 1800000900, 3, 10, 'active')"
    )
    assert T0 == 1_800_000_000
    wanted = {"tasks_newest", "audit_alerts"}

    async def use(store: Store) -> None:
        tasks = await store.list_tasks(state=None, agent=None, now=NOW, limit=5, audience="https://a")
        assert [t.id for t in tasks] == ["tsk_old"]
        assert (await store.count_tasks(now=NOW))[TaskState.ACTIVE] == 1
        await store.append_audit(event(0, "alert.raised"), now=NOW)
        assert [r.kind for r in (await store.search_audit(kind="alert.raised", limit=5)).records] == ["alert.raised"]
        assert await chain_ok(store) == 1

    assert wanted <= upgrade_from(kind, tmp_path, missing={"sqlite": 8, "postgres": 9}, seed_sql=old_task, use=use)
