"""Review 2: bidi and other control characters from the store are shown, not obeyed, on every page (WEB-03).

The records and approvals pages show stored text through ``shown.plain`` (U+202E appears as
``\\u202e``, the "Trojan Source" trick, CVE-2021-42574), but the tasks, task and agents pages
printed agent ids, purposes and audiences as stored. The STS refuses such text at its edge, yet
data in the store is not trusted because it is in the store: a database writer puts it there.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from consolekit import running_console
from pageskit import with_store

from tether.audit.chain import AuditEvent
from tether.model import Task
from tether.store.protocol import Store

RLO = "\u202e"
AGENT = f"spiffe://tether.local/agent/{RLO}gnp.exe"
PURPOSE = f"read the wiki{RLO} and nothing else\u200b"


def test_web03_stored_bidi_controls_show_as_escapes_on_the_task_pages(tmp_path: Path) -> None:
    with running_console(tmp_path) as console:
        now = int(console.sts.clock.now())

        async def fill(store: Store) -> None:
            task = Task(id="tsk_review2bidi", agent=AGENT, audiences=(f"http://127.0.0.1:9001/{RLO}x",),
                        scopes=frozenset({f"wiki:{RLO}read"}), created_at=now, expires_at=now + 3600, max_depth=3,
                        max_tokens=10, purpose=PURPOSE)  # fmt: skip
            await store.create_task(task, AuditEvent(kind="task.created", outcome="ok", task=task.id))

        with_store(console.runtime.config, fill)
        operator = console.login("operator", "console:review2")
        pages = {path: operator.get(path) for path in ("/tasks", "/tasks/tsk_review2bidi", "/agents",
                                                        "/tasks/tsk_review2bidi/cancel/confirm")}  # fmt: skip
    for path, page in pages.items():
        assert page.status_code == 200, path
        assert RLO not in page.text and "\u200b" not in page.text, path
    assert "read the wiki\\u202e and nothing else\\u200b" in pages["/tasks/tsk_review2bidi"].text
    assert "agent/\\u202egnp.exe" in pages["/agents"].text
    assert "agent/\\u202egnp.exe" in pages["/tasks"].text
    # a link's URL still carries the exact stored value (percent-encoded), so the filter finds the task
    assert "value=" + quote(AGENT, safe="") in pages["/agents"].text
