"""Review 2: a row a database writer made is not trusted because it is in the store (WEB-03: never a 500).

A database writer without the master key can put any text in any column. The pages must answer
with a clear page, and the audit page must say the chain is broken rather than fail: a tampered
record is exactly what it is there to show. The rows are changed with raw SQL on the SQLite
deployment (PostgreSQL's column types refuse some of these values at write time).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest
from consolekit import RunningConsole, running_console
from pageskit import RESOURCES, make_lineage

from services import use_postgres

pytestmark = pytest.mark.skipif(use_postgres(), reason="raw SQL on the SQLite deployment's file")


@pytest.fixture
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningConsole]:
    with running_console(tmp_path_factory.mktemp("review2-rows"), extra_toml=RESOURCES) as running:
        yield running


def _sql(console: RunningConsole, statement: str, *args: object) -> None:
    with sqlite3.connect(console.runtime.config.data_dir / "tether.db") as db:
        db.execute(statement, args)


def test_web03_a_task_row_in_an_unknown_state_is_a_clear_page_not_a_500(console: RunningConsole) -> None:
    lineage = make_lineage(console.sts)
    _sql(console, "UPDATE tasks SET state = 'bogus' WHERE id = ?", lineage.id)
    viewer = console.login("viewer", "console:review2")
    for path in ("/tasks", f"/tasks/{lineage.id}", f"/tasks/{lineage.id}/events", "/", "/agents"):
        page = viewer.get(path)
        assert page.status_code in (200, 503), (path, page.status_code)
        assert "Traceback" not in page.text


def test_web03_a_task_row_with_unreadable_json_is_a_clear_page_not_a_500(console: RunningConsole) -> None:
    lineage = make_lineage(console.sts)
    _sql(console, "UPDATE tasks SET audiences = 'not json' WHERE id = ?", lineage.id)
    viewer = console.login("viewer", "console:review2")
    for path in ("/tasks", f"/tasks/{lineage.id}"):
        assert viewer.get(path).status_code == 503, path


def test_web03_a_token_row_with_text_in_an_integer_column_is_not_a_500(console: RunningConsole) -> None:
    lineage = make_lineage(console.sts)
    _sql(console, "UPDATE tokens SET iat = 'soon' WHERE jti = ?", lineage.jtis["hop"])
    viewer = console.login("viewer", "console:review2")
    assert viewer.get(f"/tasks/{lineage.id}").status_code == 503


def test_web03_an_audit_record_whose_detail_cannot_be_read_shows_a_broken_chain(console: RunningConsole) -> None:
    lineage = make_lineage(console.sts)
    viewer = console.login("viewer", "console:review2")
    with sqlite3.connect(console.runtime.config.data_dir / "tether.db") as db:
        seq = db.execute("SELECT max(seq) FROM audit WHERE task = ?", (lineage.id,)).fetchone()[0]
        # valid JSON, but a number Python will not read (more than 4300 digits)
        db.execute("UPDATE audit SET detail = ? WHERE seq = ?", ("1" * 5000, seq))
    audit = viewer.get("/audit")
    assert audit.status_code == 200
    assert f"the chain is broken at record {seq}" in audit.text
    for path in ("/", f"/tasks/{lineage.id}", "/policies", "/alerts", f"/audit?task={lineage.id}"):
        assert viewer.get(path).status_code == 200, path
