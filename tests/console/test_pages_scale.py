"""``/tasks`` on a store holding 10,000 tasks: the first page, a "Next" link and the next page (keyset).

The tasks are written through the store directly (``Store.create_task``, as the admin API
writes them), on the deployment's own database. How fast the page is belongs in a benchmark;
here the point is that a page is ``page_size`` rows and paging goes on without gaps.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from consolekit import RunningConsole, running_console
from pageskit import with_store

from tether.audit.chain import AuditEvent
from tether.model import Task
from tether.store.protocol import Store

COUNT = 10_000
PAGE_SIZE = 40


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningConsole]:
    extra = f"[console]\npage_size = {PAGE_SIZE}\n"
    with running_console(tmp_path_factory.mktemp("pages-scale"), extra_toml=extra) as running:
        now = int(running.sts.clock.now())

        async def fill(store: Store) -> None:
            for i in range(COUNT):
                task = Task(id=f"tsk_scale{i:05d}", agent=f"spiffe://tether.local/agent/a{i % 7}",
                            audiences=("http://127.0.0.1:9001",), scopes=frozenset({"wiki:read"}),
                            created_at=now - COUNT + i, expires_at=now + 3600, max_depth=3, max_tokens=10)  # fmt: skip
                await store.create_task(task, AuditEvent(kind="task.created", outcome="ok", task=task.id))

        with_store(running.runtime.config, fill)
        yield running


_ROW = re.compile(r'<a href="/tasks/(tsk_scale\d{5})">')
_NEXT = re.compile(r'<a rel="next" href="/tasks\?([^"]+)">Next</a>')


def test_tasks_page_with_10000_tasks_renders_a_page_and_pages_on(console: RunningConsole) -> None:
    viewer = console.login("viewer")
    first = viewer.get("/tasks")
    assert first.status_code == 200
    ids = _ROW.findall(first.text)
    assert ids == [f"tsk_scale{i:05d}" for i in range(COUNT - 1, COUNT - 1 - PAGE_SIZE, -1)]  # newest first
    link = _NEXT.search(first.text)
    assert link is not None and link.group(1) == f"after={ids[-1]}"
    second = viewer.get("/tasks?" + link.group(1).replace("&amp;", "&"))
    more = _ROW.findall(second.text)
    assert more == [f"tsk_scale{i:05d}" for i in range(COUNT - 1 - PAGE_SIZE, COUNT - 1 - 2 * PAGE_SIZE, -1)]
    filtered = viewer.get("/tasks", params={"agent": "spiffe://tether.local/agent/a3", "state": "active"})
    rows = _ROW.findall(filtered.text)
    assert len(rows) == PAGE_SIZE and all(int(r[-5:]) % 7 == 3 for r in rows)
    following = _NEXT.search(filtered.text)
    assert following is not None and "agent=spiffe" in following.group(1) and "state=active" in following.group(1)


def test_last_page_has_no_next_link(console: RunningConsole) -> None:
    viewer = console.login("viewer")
    last = viewer.get("/tasks", params={"after": "tsk_scale00005"})
    assert _ROW.findall(last.text) == [f"tsk_scale{i:05d}" for i in range(4, -1, -1)]
    assert _NEXT.search(last.text) is None and "First page" in last.text
