"""Review 2 of issue 17: separation of duties against an approver whose address differs only in case (APR-02).

The approver principal is rendered from the provider's ``email`` claim (``user:{/email}``). A
provider may send the same mailbox as ``Olivia@Example.com`` where the task names
``user:olivia@example.com`` (addresses are matched without regard to case by every provider and
mail system in practice). A human in the group by the provider's group claim then approved the
request made for them, or the task they created, because the party checks compared exact strings.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from approvals_api_kit import ALICE, DAVE, OLIVIA, ApprovalsEnv, approvals_env, refused


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApprovalsEnv]:
    with approvals_env(tmp_path_factory.mktemp("review2-case")) as environment:
        yield environment


def upper_local(principal: str) -> str:
    local, domain = principal.removeprefix("user:").split("@")
    return f"user:{local.upper()}@{domain.upper()}"


def test_review2_apr02_subject_in_another_case_cannot_approve_own_request(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task(on_behalf_of=OLIVIA))
    refused(env.approve(OLIVIA, approval.id, groups=["fin-team"]), 403, "access_denied")  # as before
    refused(env.approve(upper_local(OLIVIA), approval.id, groups=["fin-team"]), 403, "access_denied")
    assert env.status(approval.id) == "pending"


def test_review2_apr02_creator_in_another_case_cannot_approve_own_task(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task(created_by=DAVE))
    refused(env.approve(upper_local(DAVE), approval.id, groups=["fin-team"]), 403, "access_denied")
    assert env.status(approval.id) == "pending"


def test_review2_apr02_agent_in_another_case_cannot_approve_itself(env: ApprovalsEnv) -> None:
    bot = "user:bot@example.com"
    approval = env.hold(env.task(agent=bot))
    refused(env.approve("user:Bot@Example.com", approval.id, groups=["fin-team"]), 403, "access_denied")
    assert env.status(approval.id) == "pending"


def test_review2_apr02_other_member_in_any_case_still_approves(env: ApprovalsEnv) -> None:
    """Control: a finance member who is no party approves, whatever case the provider sends."""
    approval = env.hold(env.task(on_behalf_of=OLIVIA, created_by=DAVE))
    response = env.approve(upper_local(ALICE), approval.id, groups=["fin-team"])
    assert response.status_code == 200, response.text
