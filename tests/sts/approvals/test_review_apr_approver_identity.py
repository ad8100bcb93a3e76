"""Review of issue 17: who an approver is (SECURITY APR-02; OIDC Core §5.7, §5.1 ``email_verified``).

The approver's principal is rendered from the ID token's ``email`` by default (``user:{/email}``)
and ``[[approver_groups]] members`` list principals by e-mail address. A provider that lets a
user claim an address it never verified says so with ``"email_verified": false``: such a token
must not make its holder ``user:alice@example.com``, a finance member, able to approve.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from approvals_api_kit import ALICE, ApprovalsEnv, approvals_env, refused


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApprovalsEnv]:
    with approvals_env(tmp_path_factory.mktemp("review-approver-identity")) as environment:
        yield environment


@pytest.mark.parametrize("verified", [False, "false", 0, None])
def test_review_apr02_unverified_email_does_not_make_a_member(env: ApprovalsEnv, verified: object) -> None:
    """Someone who set Alice's address on their own account at the provider (never verified)."""
    approval = env.hold(env.task())
    impostor = env.id_token(ALICE, sub="sub-mallory", email_verified=verified)
    refused(env.api("POST", f"/approvals/{approval.id}/approve", impostor, json={}), 401, "invalid_token")
    refused(env.api("GET", f"/approvals/{approval.id}", impostor), 401, "invalid_token")
    assert env.status(approval.id) == "pending"


@pytest.mark.parametrize("verified", [True, "absent"])
def test_review_apr02_verified_or_unstated_email_still_approves(env: ApprovalsEnv, verified: object) -> None:
    """Control: a verified address, or a provider that does not send the claim at all (many don't)."""
    approval = env.hold(env.task())
    token = env.id_token(ALICE) if verified == "absent" else env.id_token(ALICE, email_verified=verified)
    response = env.api("POST", f"/approvals/{approval.id}/approve", token, json={})
    assert response.status_code == 200, response.text
