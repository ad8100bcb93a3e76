"""Review of issue 17: odd input to the approvers' API is a 400, never a 500 (SECURITY: "never a 5xx")."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from approvals_api_kit import ALICE, ApprovalsEnv, approvals_env, refused


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApprovalsEnv]:
    with approvals_env(tmp_path_factory.mktemp("review-api-input")) as environment:
        yield environment


@pytest.mark.parametrize("limit", ["\u00b2", "\u2460", "\u0661\u0660", "0", "1001", "-1", "", "1e2"])
def test_review_apr_list_limit_that_is_not_an_ascii_number_is_invalid_request(env: ApprovalsEnv, limit: str) -> None:
    """``str.isdigit`` is true for a superscript two, which ``int`` cannot read."""
    refused(env.as_(ALICE, "GET", "/approvals", params={"limit": limit}), 400, "invalid_request")


def test_review_apr_list_limit_control(env: ApprovalsEnv) -> None:
    response = env.as_(ALICE, "GET", "/approvals", params={"limit": "5"})
    assert response.status_code == 200, response.text
