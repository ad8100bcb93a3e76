"""Review 2: links built from stored ids must lead to the page of that id, never to another page (WEB-03).

Task ids the STS makes are ``tsk_`` + base64url, but data in the store is not trusted because it is
in the store: a database writer (or anyone able to put a ``task`` into an audit record) chooses
any text. The server percent-decodes the path before routing, so a ``/`` in a task id cannot be
escaped in a path segment: ``/tasks/tsk_v%2Fcancel%2Fconfirm`` routes exactly like
``/tasks/tsk_v/cancel/confirm``, the confirmation page for cancelling task ``tsk_v``. A link for
such an id must not be drawn at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import unquote

import pytest
from consolekit import RunningConsole, running_console
from pageskit import with_store
from recordskit import append

from tether.audit.chain import AuditEvent
from tether.model import Task
from tether.store.protocol import Store

VICTIM = "tsk_review2victim"
TRAP = f"{VICTIM}/cancel/confirm"
DOTS = ".."
_HREF = re.compile(r'href="(/tasks/[^"?]*)"')


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningConsole]:
    with running_console(tmp_path_factory.mktemp("review2-links")) as running:
        now = int(running.sts.clock.now())

        async def fill(store: Store) -> None:
            for task_id in (VICTIM, TRAP, DOTS):
                task = Task(id=task_id, agent="spiffe://tether.local/agent/review2", audiences=("http://127.0.0.1:9001",),
                            scopes=frozenset({"wiki:read"}), created_at=now, expires_at=now + 3600, max_depth=3,
                            max_tokens=10)  # fmt: skip
                await store.create_task(task, AuditEvent(kind="task.created", outcome="ok", task=task.id))

        with_store(running.runtime.config, fill)
        for task_id in (VICTIM, TRAP, DOTS):
            append(running.runtime.config, "alert.raised", now=now, outcome="alert", task=task_id,
                   detail={"detector": "review2", "severity": "high", "agent": "a", "reason": "r"})  # fmt: skip
        yield running


def _task_links(html: str) -> list[str]:
    return [unquote(href.replace("&amp;", "&")) for href in _HREF.findall(html)]


@pytest.mark.parametrize("path", ["/tasks", "/alerts", "/"])
def test_web03_a_stored_task_id_with_a_slash_never_links_to_another_tasks_action(console: RunningConsole, path: str) -> None:
    viewer = console.login("viewer", "console:review2")
    page = viewer.get(path)
    assert page.status_code == 200
    assert TRAP in page.text  # still listed, as text
    links = _task_links(page.text)
    assert links, "the page links to tasks"
    for href in links:  # as the server routes it: one task id segment, never a path of its own
        assert re.fullmatch(r"/tasks/[^/]+", href) and href not in ("/tasks/.", "/tasks/.."), href
    assert f"/tasks/{TRAP}" not in links


def test_web03_the_victim_task_keeps_its_own_link(console: RunningConsole) -> None:
    viewer = console.login("viewer", "console:review2")
    assert f"/tasks/{VICTIM}" in _task_links(viewer.get("/tasks").text)
