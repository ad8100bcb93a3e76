"""One-time approve/deny links (SECURITY APR-04; WEB-02/03 for the page), over real HTTP.

Links are minted as the webhook mints them (``sign_link`` under the STS's derived link key).
``Accept: application/json`` reads the exact wire code; the HTML page is checked for escaping
and its headers. Every refusal leaves the approval pending.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator

import httpx
import pytest
from approvals_api_kit import ALICE, CAROL, DAVE, EVE, FRANK, OLIVIA, ApprovalsEnv, approvals_env, refused

JSON = {"Accept": "application/json"}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApprovalsEnv]:
    with approvals_env(tmp_path_factory.mktemp("approvals-links")) as environment:
        yield environment


def post(env: ApprovalsEnv, path: str, *, reason: str | None = None, json_out: bool = True) -> httpx.Response:
    data = {"reason": reason} if reason is not None else None
    return env.api("POST", path, None, data=data, headers=JSON if json_out else {})


def get(env: ApprovalsEnv, path: str, *, json_out: bool = False) -> httpx.Response:
    return env.api("GET", path, None, headers=JSON if json_out else {})


def test_apr04_valid_approve_link_decides_once(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task())
    response = post(env, env.link(approval.id, ALICE, "approve"), reason="ok by link")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["decided_by"], body["uses"], body["reason"]) == ("approved", ALICE, 1, "ok by link")
    record = env.sts.last_audit("approval.approved")
    assert (record.principal, record.detail["approval"], record.detail["via"]) == (ALICE, approval.id, "link")


def test_apr04_valid_deny_link(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task())
    response = post(env, env.link(approval.id, CAROL, "deny"))
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["decided_by"]) == ("denied", CAROL)
    assert env.status(approval.id) == "denied"


def test_apr04_link_html_flow(env: ApprovalsEnv) -> None:
    """The browser path: GET shows a page with a form, the form's POST decides and says so."""
    approval = env.hold(env.task())
    path = env.link(approval.id, ALICE, "approve")
    page = get(env, path)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<form method="post">' in page.text
    done = post(env, path, json_out=False)
    assert done.status_code == 200
    assert "approved" in done.text and "user:alice@example.com" in done.text
    assert env.status(approval.id) == "approved"


def test_apr04_get_does_not_decide(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task())
    path = env.link(approval.id, ALICE, "approve")
    for _ in range(3):  # link previewers and scanners fetch URLs
        assert get(env, path).status_code == 200
        assert get(env, path, json_out=True).json()["status"] == "pending"
    assert env.status(approval.id) == "pending"
    assert post(env, path).status_code == 200  # the link was not spent by the GETs


def _tag_flipped(token: str) -> str:
    payload, tag = token.split(".")
    return f"{payload}.{tag[:-2]}{'A' if tag[-2] != 'A' else 'B'}{tag[-1]}"


def _payload_changed(token: str, **changes: object) -> str:
    payload, tag = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(changes)
    raw = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() + "." + tag


def test_apr04_forged_tag_refused(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task())
    path = env.link(approval.id, ALICE, "approve")
    forged = "/approvals/link/" + _tag_flipped(path.rsplit("/", 1)[1])
    body = refused(post(env, forged), 403, "access_denied")
    assert body["error_description"] == "the link is not valid"
    refused(get(env, forged, json_out=True), 403, "access_denied")
    other_key = "/approvals/link/" + env.link(approval.id, ALICE, "approve", key=secrets.token_bytes(32)).rsplit("/", 1)[1]
    refused(post(env, other_key), 403, "access_denied")
    assert env.status(approval.id) == "pending"
    assert post(env, path).status_code == 200  # control: the genuine link


@pytest.mark.parametrize(
    "changes",
    [{"d": "approve"}, {"p": "user:eve@example.com"}, {"x": 4_102_444_800}, {"n": "fresh-nonce"}],
    ids=["decision", "approver", "expiry", "nonce"],
)
def test_apr04_tampered_payload_refused(env: ApprovalsEnv, changes: dict[str, object]) -> None:
    approval = env.hold(env.task())
    token = env.link(approval.id, ALICE, "deny").rsplit("/", 1)[1]
    refused(post(env, "/approvals/link/" + _payload_changed(token, **changes)), 403, "access_denied")
    assert env.status(approval.id) == "pending"


def test_apr04_other_approvals_link_does_not_touch_this_one(env: ApprovalsEnv) -> None:
    task = env.task()
    first, second = env.hold(task), env.hold(task, client=CAROL)
    token = env.link(first.id, ALICE, "approve").rsplit("/", 1)[1]
    moved = "/approvals/link/" + _payload_changed(token, a=second.id)  # the first's tag on the second's id
    refused(post(env, moved), 403, "access_denied")
    assert post(env, "/approvals/link/" + token).status_code == 200
    assert (env.status(first.id), env.status(second.id)) == ("approved", "pending")


def test_apr04_reused_link_refused(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task(), ttl=300)
    path = env.link(approval.id, ALICE, "approve")
    assert post(env, path).status_code == 200
    body = refused(post(env, path), 403, "access_denied")
    assert body["error_description"] == "the link has already been used"
    record = env.sts.last_audit("approval.refused")
    assert record.error == "access_denied"
    assert record.detail["path"] == "/approvals/link"  # never the link itself
    assert path.rsplit("/", 1)[1] not in json.dumps(record.detail)


def test_apr04_reused_link_after_a_failed_decision_stays_spent(env: ApprovalsEnv) -> None:
    """The deny link of an approval already approved: refused, and its nonce is spent all the same."""
    approval = env.hold(env.task())
    deny = env.link(approval.id, CAROL, "deny")
    assert post(env, env.link(approval.id, ALICE, "approve")).status_code == 200
    refused(post(env, deny), 400, "invalid_request")
    refused(post(env, deny), 403, "access_denied")
    assert env.status(approval.id) == "approved"


def test_apr04_expired_link_refused(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task())
    path = env.link(approval.id, ALICE, "approve", exp=env.now() - 1)
    refused(post(env, path), 400, "expired_token")
    refused(get(env, path, json_out=True), 400, "expired_token")
    assert env.status(approval.id) == "pending"


def test_apr04_link_for_a_non_member_refused(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task())
    refused(post(env, env.link(approval.id, EVE, "approve")), 403, "access_denied")
    assert env.status(approval.id) == "pending"


def test_apr04_link_for_a_member_by_claim_only_refused(env: ApprovalsEnv) -> None:
    """Group claims are proved only by the holder's ID token, which a link never carries."""
    approval = env.hold(env.task())
    refused(post(env, env.link(approval.id, FRANK, "approve")), 403, "access_denied")
    assert env.status(approval.id) == "pending"


def test_apr04_link_rechecks_separation_of_duties(env: ApprovalsEnv) -> None:
    creator = env.hold(env.task(created_by=DAVE))
    refused(post(env, env.link(creator.id, DAVE, "approve")), 403, "access_denied")
    requester = env.hold(env.task(), client=ALICE)
    refused(post(env, env.link(requester.id, ALICE, "approve")), 403, "access_denied")
    assert (env.status(creator.id), env.status(requester.id)) == ("pending", "pending")


def test_apr04_subject_link_for_the_tasks_user(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task(on_behalf_of=OLIVIA), groups=["subject"])
    refused(post(env, env.link(approval.id, ALICE, "approve")), 403, "access_denied")
    assert post(env, env.link(approval.id, OLIVIA, "approve")).status_code == 200


def test_apr04_expired_approval_by_link(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task(), created_at=env.now() - 400, ttl=300)
    refused(post(env, env.link(approval.id, ALICE, "approve")), 400, "expired_token")


@pytest.mark.parametrize("token", ["x", "a.b.c", "%00", "A.BBBB", "A" * 2000], ids=["short", "dots", "nul", "bad-tag", "long"])
def test_malformed_link_refused_without_error_page_leak(env: ApprovalsEnv, token: str) -> None:
    response = env.api("POST", "/approvals/link/" + token, None, headers=JSON)
    assert response.status_code in (403, 404), response.text
    assert response.status_code != 500


def test_web03_link_page_escapes_and_locks_down(env: ApprovalsEnv) -> None:
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    task = env.task(purpose='pay <b>now</b> & "quick"')
    approval = env.hold(task, arguments={"note": evil, "amount": 5, "api_key": "sk_live_123456789"})
    page = get(env, env.link(approval.id, ALICE, "approve"))
    assert page.status_code == 200
    assert "<script>" not in page.text and "<img" not in page.text and "<b>now" not in page.text
    assert "&lt;script&gt;" in page.text and "&lt;b&gt;now&lt;/b&gt; &amp; &quot;quick&quot;" in page.text
    assert "sk_live_123456789" not in page.text and "hunter2" not in page.text
    assert "[redacted]" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "form-action 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-content-type-options"] == "nosniff"


def test_refused_link_page_is_html_with_the_code(env: ApprovalsEnv) -> None:
    approval = env.hold(env.task())
    response = post(env, env.link(approval.id, EVE, "approve"), json_out=False)
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("text/html")
    assert '<span id="error">access_denied</span>' in response.text
    assert "default-src 'none'" in response.headers["content-security-policy"]
