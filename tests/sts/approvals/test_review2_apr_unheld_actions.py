"""Review 2 of issue 17: ``@approval`` on an action the STS cannot hold (SECURITY APR-01, fail closed).

Only a token exchange (and the tool call it carries) can be held: the STS answers it
``authorization_pending`` and issues it once a human approves. ``create_task`` and ``admin``
decisions have no held path, so a permit annotated ``@approval`` that determines one must not
simply allow it: the policy author asked for a human's yes, and none was asked. It is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import AGENT, RunningSts, admin_token, make_deployment, serving
from tether.clock import ManualClock

HELD_ADMIN = """
@id("tasks-need-security")
@approval("security")
permit (principal, action == Tether::Action::"create_task", resource);

@id("blocking-needs-security")
@approval("security")
permit (principal, action == Tether::Action::"admin", resource)
when { context.operation == "principals.block" };
"""


@pytest.fixture(scope="module")
def sts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSts]:
    directory: Path = tmp_path_factory.mktemp("review2-unheld")
    config = make_deployment(directory)
    (config.policy_dir / "50-held-admin.cedar").write_text(HELD_ADMIN, encoding="utf-8")
    with serving(config, ManualClock()) as running:
        yield running


def test_review2_apr01_create_task_held_by_policy_is_not_created_without_approval(sts: RunningSts) -> None:
    """Before the fix: 201, the task created with nobody asked (the annotation silently ignored)."""
    client, token = admin_token(sts)
    body = {"agent": AGENT, "audiences": ["http://127.0.0.1:9001"], "scopes": ["wiki:read"]}
    response = client.api("POST", "/tasks", token, json=body)
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "access_denied"
    listed = client.api("GET", "/tasks", token)
    assert listed.status_code == 200, listed.text
    assert listed.json()["tasks"] == [], listed.text


def test_review2_apr01_admin_operation_held_by_policy_is_refused(sts: RunningSts) -> None:
    """An ``admin`` operation a permit holds for approval is refused; one it does not hold still works."""
    client, token = admin_token(sts)
    response = client.api("POST", "/principals/block", token, json={"agent": "spiffe://tether.local/x"})
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "access_denied"
    assert client.api("GET", "/tasks", token).status_code == 200  # control: tasks.read is not held
