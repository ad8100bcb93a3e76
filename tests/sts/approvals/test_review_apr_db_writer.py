"""Review of issue 17 as a database writer (SECURITY APR-02): rows edited, the master key not held.

The approvals are sealed by the master key (``rules.approval_seal``), but the task they belong
to is not: the approver checks must read who the task acts for from what was sealed, or a
writer who edits ``tasks.on_behalf_of`` makes any human at the provider the ``subject``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from approvals_api_kit import ALICE, CAROL, DAVE, EVE, OLIVIA, ApprovalsEnv, approvals_env, refused, run

from services import store_sql
from tether.sts.holds import sweep_approvals


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApprovalsEnv]:
    with approvals_env(tmp_path_factory.mktemp("review-db-writer")) as environment:
        yield environment


def test_review_apr02_db_writer_rewriting_the_tasks_user_cannot_approve_for_subject(env: ApprovalsEnv) -> None:
    """A request held for ``subject`` (Olivia, the task's user); the writer makes Eve the task's user."""
    task = env.task(on_behalf_of=OLIVIA)
    approval = env.hold(task, groups=["subject"])
    store_sql(env.sts.config, "UPDATE tasks SET on_behalf_of = ? WHERE id = ?", (EVE, task.id))
    refused(env.as_(EVE, "GET", f"/approvals/{approval.id}"), 404, "not_found")
    refused(env.approve(EVE, approval.id), 404, "not_found")
    refused(env.api("POST", env.link(approval.id, EVE, "approve"), None, headers={"Accept": "application/json"}),
            403, "access_denied")  # fmt: skip
    assert env.status(approval.id) == "pending"


def test_review_apr02_db_writer_adding_a_user_to_a_task_cannot_approve_for_subject(env: ApprovalsEnv) -> None:
    """The task acted for nobody when the request was held: a user the writer adds later cannot approve."""
    task = env.task()
    approval = env.hold(task, groups=["subject"])
    store_sql(env.sts.config, "UPDATE tasks SET on_behalf_of = ? WHERE id = ?", (EVE, task.id))
    refused(env.approve(EVE, approval.id), 404, "not_found")
    assert env.status(approval.id) == "pending"


def test_review_apr02_subject_still_approves_an_untampered_task(env: ApprovalsEnv) -> None:
    """Control: the task's real user approves; a finance member is not the subject."""
    approval = env.hold(env.task(on_behalf_of=OLIVIA), groups=["subject"])
    refused(env.approve(ALICE, approval.id), 404, "not_found")
    response = env.approve(OLIVIA, approval.id)
    assert response.status_code == 200, response.text
    assert response.json()["decided_by"] == OLIVIA


@pytest.mark.parametrize("creator", [None, ALICE])
def test_review_apr02_db_writer_rewriting_the_tasks_creator_cannot_let_the_creator_approve(
    env: ApprovalsEnv, creator: str | None
) -> None:
    """Dave (finance) created the task; a writer (Dave himself, say) blanks or moves ``created_by``."""
    task = env.task(created_by=DAVE)
    approval = env.hold(task)
    store_sql(env.sts.config, "UPDATE tasks SET created_by = ? WHERE id = ?", (creator, task.id))
    body = refused(env.approve(DAVE, approval.id), 403, "access_denied")
    assert "creator" in str(body["error_description"])
    assert env.status(approval.id) == "pending"
    assert env.approve(CAROL, approval.id).status_code == 200  # control: another finance member


@pytest.mark.parametrize(
    ("column", "value"),
    [("status", "approved-ish"), ("request", "{not json"), ("view", "[1, 2"), ("groups", "null"), ("request", "[]"),
     ("created_at", "soon"), ("request_mac", b"\x00blob")],
)  # fmt: skip
def test_review_apr05_malformed_row_is_a_tampered_approval_not_a_500(env: ApprovalsEnv, column: str, value: object) -> None:
    """A writer stores a value the row reader cannot parse: that approval is not shown (as a bad MAC
    is not), and the others of the list still are."""
    task = env.task()
    genuine, broken = env.hold(task), env.hold(task)
    if env.sts.config.store == "postgres" and column == "created_at":
        # PostgreSQL types its columns: the writer cannot store text in an integer (SQLite can)
        with pytest.raises(Exception, match="bigint"):
            store_sql(env.sts.config, f"UPDATE approvals SET {column} = ? WHERE id = ?", (value, broken.id))  # noqa: S608
        return
    store_sql(env.sts.config, f"UPDATE approvals SET {column} = ? WHERE id = ?", (value, broken.id))  # noqa: S608 (a test column)
    refused(env.as_(ALICE, "GET", f"/approvals/{broken.id}"), 404, "not_found")
    refused(env.approve(ALICE, broken.id), 404, "not_found")
    listed = env.as_(ALICE, "GET", "/approvals", params={"task": task.id})
    assert listed.status_code == 200, listed.text
    assert [a["id"] for a in listed.json()["approvals"]] == [genuine.id]
    # the expiry sweep reads every due row: the unreadable one must not stop it
    swept = run(lambda store: sweep_approvals(store, now=env.now() + 3600), env.sts.config)
    assert genuine.id in {a.id for a in swept}
