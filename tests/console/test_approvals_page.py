"""The approvals queue in the console over a real STS and store (SECURITY APR-02, APR-05, WEB-02, WEB-03, WEB-05).

An approver's session is sealed directly (``seal_session``) as an OIDC login with the approvals'
provider would leave it: ``[console.oidc] issuer`` is ``[approvals] issuer`` (the dev approvers'
provider ``tether init`` configures). Held requests are written into the store as the token
endpoint writes them (binding, redacted view, ``request_mac`` under the master key), so the
console reads and decides real, sealed approvals.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from consolekit import Browser, RunningConsole, csrf_of
from recordskit import run

from helpers import ADMIN, AGENT, QUIET_MONITOR, ServerThread, free_port, make_deployment, serving
from tether.audit.chain import AuditEvent
from tether.clock import ManualClock
from tether.console.app import create_console_app
from tether.console.web import new_session
from tether.identity.dev_approvers import DevApprovers
from tether.keys.sealed import derive_key, load_master_key
from tether.model import Approval, ApprovalStatus, Task
from tether.rules.approval import ApprovalBinding, approval_view, tool_call_context
from tether.rules.approval_seal import request_mac
from tether.rules.console_session import seal_session
from tether.rules.task import TaskRequest, build_task
from tether.rules.tool_call import parse_tool_call
from tether.sts.bootstrap import build_sts

ALICE = "user:alice@example.com"  # finance, console approver
DAVE = "user:dave@example.com"  # finance, console approver, creates tasks
BOT = "user:bot@example.com"  # finance, console approver, and the requester of some approvals
LENA = "user:lena@example.com"  # legal
AUD = "http://127.0.0.1:9001"
HOSTILE = "<script>alert(1)</script>\"'&\u202egnp.exe"


@dataclass
class Env:
    console: RunningConsole

    @property
    def now(self) -> int:
        return int(self.console.sts.clock.now())

    def approver(self, principal: str, groups: Sequence[str] = ()) -> Browser:
        """A browser holding the session an OIDC login with the approvals' provider leaves."""
        session = new_session(principal, roles=frozenset({"viewer", "approver"}), groups=frozenset(groups), via="oidc",
                              now=self.now, name=principal, issuer=self.console.runtime.config.console_oidc.issuer)  # fmt: skip
        browser = self.console.browser()
        browser.cookie = seal_session(self.console.key, session)
        return browser

    def task(self, *, created_by: str = ADMIN) -> Task:
        config = self.console.sts.config
        request = TaskRequest(agent=AGENT, audiences=[AUD], scopes=["pay:write"], purpose="pay invoices")
        task = build_task(request, task_id="tsk_" + secrets.token_urlsafe(16), issuer=config.issuer,
                          limits=self.console.sts.sts.settings.task_limits, now=self.now, created_by=created_by)  # fmt: skip
        event = AuditEvent(kind="task.created", outcome="ok", principal=created_by, task=task.id)
        run(config, lambda store: store.create_task(task, event))
        return task

    def hold(self, task: Task, *, groups: Sequence[str] = ("finance",), client: str | None = None,
             arguments: Mapping[str, Any] | None = None, ttl: int = 300) -> Approval:  # fmt: skip
        """A held request in the store, as the token endpoint writes it (``approval.requested``)."""
        config = self.console.sts.config
        args = dict(arguments if arguments is not None else {"amount": 120, "to": "ACME", "password": "hunter2"})
        binding = ApprovalBinding(task=task.id, agent=task.agent, client=client or task.agent, sub=task.agent, aud=AUD,
                                  scope=frozenset({"pay:write"}), actors=(), kind="hop",
                                  jkt="jkt-" + secrets.token_urlsafe(8), x5t=None,
                                  tctx=tool_call_context("transfer", args))  # fmt: skip
        view = approval_view(binding, task=task, call=parse_tool_call({"name": "transfer", "arguments": args}),
                             fields=self.console.sts.sts.settings.approvals.redact)  # fmt: skip
        approval = Approval(id="apr_" + secrets.token_urlsafe(16), task=task.id, digest=binding.digest(),
                            request=binding.canonical(), view=view, groups=tuple(sorted(groups)),
                            policies=("hold-payments",), created_at=self.now, expires_at=self.now + ttl,
                            request_mac="")  # fmt: skip
        key = derive_key(load_master_key(config.master_key_file), "approvals")
        approval = replace(approval, request_mac=request_mac(key, approval))
        event = AuditEvent(kind="approval.requested", outcome="ok", principal=task.agent, task=task.id,
                           detail={"approval": approval.id, "groups": list(approval.groups)})  # fmt: skip
        now = self.now
        return run(config, lambda store: store.hold_approval(approval, now=now, max_pending=16, audit=event))

    def stored(self, approval_id: str) -> Approval:
        found = run(self.console.sts.config, lambda store: store.get_approval(approval_id))
        assert found is not None
        return found

    def audit(self, kind: str, approval_id: str) -> list[AuditEvent | Any]:
        records = run(self.console.sts.config, lambda store: store.audit_records(after=0, limit=100_000))
        return [r for r in records if r.kind == kind and r.detail.get("approval") == approval_id]

    def refusals(self, principal: str) -> list[Any]:
        records = run(self.console.sts.config, lambda store: store.audit_records(after=0, limit=100_000))
        return [r for r in records if r.kind == "console.refused" and r.principal == principal]


@contextlib.contextmanager
def approvals_console(directory: Path) -> Iterator[Env]:
    port = free_port()
    approvers_issuer = DevApprovers.issuer_for(f"http://127.0.0.1:{port}")
    extra = f"""
[console]
approvers = ["{ALICE}", "{DAVE}", "{BOT}", "{LENA}"]

[console.oidc]
issuer = "{approvers_issuer}"
client_id = "tether-console"

[[approver_groups]]
name = "finance"
members = ["{ALICE}", "{DAVE}", "{BOT}"]

[[approver_groups]]
name = "legal"
members = ["{LENA}"]
"""
    config = make_deployment(directory, extra_toml=QUIET_MONITOR + "\n" + extra, port=port)
    assert config.approvals.issuer == config.console_oidc.issuer == approvers_issuer
    with serving(config, ManualClock()) as sts:
        runtime = build_sts(config, clock=sts.clock, upkeep=False)
        thread = ServerThread(create_console_app(runtime), free_port()).start()
        console = RunningConsole(sts, runtime, thread)
        try:
            yield Env(console)
        finally:
            for browser in console.browsers:
                browser.http.close()
            thread.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with approvals_console(tmp_path_factory.mktemp("approvals")) as running:
        yield running


def _decide(browser: Browser, approval_id: str, decision: str, **fields: str) -> Any:
    confirm = browser.get(f"/approvals/{approval_id}/{decision}")
    assert confirm.status_code == 200, confirm.text[:300]
    assert f'action="/approvals/{approval_id}/{decision}"' in confirm.text
    return browser.post(f"/approvals/{approval_id}/{decision}", {"csrf": csrf_of(confirm.text), **fields})


def test_apr02_approver_approves_from_the_console(env: Env) -> None:
    approval = env.hold(env.task())
    alice = env.approver(ALICE)
    queue = alice.get("/approvals")
    assert queue.status_code == 200 and approval.id in queue.text and "Read only" not in queue.text
    detail = alice.get(f"/approvals/{approval.id}")
    assert detail.status_code == 200 and f"/approvals/{approval.id}/approve" in detail.text
    assert "hunter2" not in detail.text and "[redacted]" in detail.text  # the sealed, redacted view (APR-05)
    done = _decide(alice, approval.id, "approve", uses="2", window="60", reason="looks right")
    assert done.status_code == 303 and done.headers["location"] == f"/approvals/{approval.id}"
    stored = env.stored(approval.id)
    assert stored.status is ApprovalStatus.APPROVED and stored.decided_by == ALICE
    assert stored.uses == 2 and stored.reason == "looks right"
    (record,) = env.audit("approval.approved", approval.id)
    assert record.principal == ALICE and record.detail["via"] == "console"
    shown = alice.get(f"/approvals/{approval.id}")
    assert "approved" in shown.text and "looks right" in shown.text and '/approve"' not in shown.text


def test_apr02_approver_denies_and_a_second_decision_is_a_clear_refusal(env: Env) -> None:
    approval = env.hold(env.task())
    alice = env.approver(ALICE)
    assert _decide(alice, approval.id, "deny", reason="no").status_code == 303
    assert env.stored(approval.id).status is ApprovalStatus.DENIED
    again = alice.post(f"/approvals/{approval.id}/approve", {"csrf": alice.csrf("/approvals")})
    assert again.status_code == 400 and "already denied" in again.text


def test_web05_link_login_sees_the_queue_read_only_and_a_forged_post_is_refused(env: Env) -> None:
    approval = env.hold(env.task())
    for role in ("approver", "viewer"):
        principal = f"console:{role}-by-link"
        browser = env.console.login(role, principal)
        queue = browser.get("/approvals")
        assert queue.status_code == 200 and approval.id in queue.text and "Read only" in queue.text
        detail = browser.get(f"/approvals/{approval.id}")
        assert detail.status_code == 200 and '/approve"' not in detail.text and "Read only" in detail.text
        assert browser.get(f"/approvals/{approval.id}/approve").status_code == 403
        forged = browser.post(f"/approvals/{approval.id}/approve", {"csrf": browser.csrf("/approvals")})
        assert forged.status_code == 403 and "text/html" in forged.headers["content-type"]
        refused = env.refusals(principal)
        assert refused and refused[-1].detail["path"] == f"/approvals/{approval.id}/approve"
    assert env.stored(approval.id).status is ApprovalStatus.PENDING


def test_web02_decision_without_the_csrf_token_is_refused(env: Env) -> None:
    approval = env.hold(env.task())
    alice = env.approver(ALICE)
    assert alice.post(f"/approvals/{approval.id}/approve", {"reason": "no token"}).status_code == 403
    other = env.approver(DAVE)
    assert alice.post(f"/approvals/{approval.id}/approve", {"csrf": other.csrf("/approvals")}).status_code == 403
    assert env.stored(approval.id).status is ApprovalStatus.PENDING


def test_apr02_separation_of_duties_still_applies(env: Env) -> None:
    created_by_dave = env.hold(env.task(created_by=DAVE))
    refused = env.approver(DAVE).post(f"/approvals/{created_by_dave.id}/approve",
                                      {"csrf": env.approver(DAVE).csrf("/approvals")})  # fmt: skip
    assert refused.status_code == 403
    requested_by_bot = env.hold(env.task(), client=BOT)
    bot = env.approver(BOT)
    assert bot.get(f"/approvals/{requested_by_bot.id}/approve").status_code == 403  # told before the form
    assert bot.post(f"/approvals/{requested_by_bot.id}/approve", {"csrf": bot.csrf("/approvals")}).status_code == 403
    assert env.stored(created_by_dave.id).status is ApprovalStatus.PENDING
    assert env.stored(requested_by_bot.id).status is ApprovalStatus.PENDING


def test_apr02_an_approval_outside_the_approvers_groups_is_not_found(env: Env) -> None:
    legal = env.hold(env.task(), groups=("legal",))
    alice = env.approver(ALICE)
    assert legal.id not in alice.get("/approvals").text
    assert alice.get(f"/approvals/{legal.id}").status_code == 404
    assert alice.get(f"/approvals/{legal.id}/approve").status_code == 404
    assert alice.post(f"/approvals/{legal.id}/approve", {"csrf": alice.csrf("/approvals")}).status_code == 404
    assert env.stored(legal.id).status is ApprovalStatus.PENDING
    assert legal.id in env.approver(LENA).get("/approvals").text


def test_expired_approval_and_bad_grant_are_clear_refusals(env: Env) -> None:
    approval = env.hold(env.task(), ttl=5)
    alice = env.approver(ALICE)
    csrf = alice.csrf("/approvals")
    for bad in ({"uses": "abc"}, {"uses": "999"}, {"window": "-5"}, {"reason": "x" * 501}):
        page = alice.post(f"/approvals/{approval.id}/approve", {"csrf": csrf, **bad})
        assert page.status_code == 400 and "Traceback" not in page.text, bad
    env.console.sts.clock.advance(6)
    expired = alice.post(f"/approvals/{approval.id}/approve", {"csrf": alice.csrf("/approvals")})
    assert expired.status_code == 400 and "expired" in expired.text
    assert env.stored(approval.id).status is ApprovalStatus.PENDING  # not decided; a sweep marks it expired


def test_unknown_and_malformed_ids_and_actions_are_404_pages(env: Env) -> None:
    alice = env.approver(ALICE)
    csrf = alice.csrf("/approvals")
    for path in ("/approvals/apr_unknownunknownunknown", "/approvals/<script>", "/approvals/x/approve"):
        assert alice.get(path).status_code == 404, path
    approval = env.hold(env.task())
    assert alice.post(f"/approvals/{approval.id}/launch", {"csrf": csrf}).status_code == 404
    assert alice.get("/approvals?status=bogus").status_code == 400
    assert alice.get("/approvals?before=%3Cx%3E").status_code == 400


def test_web03_approval_view_is_escaped(env: Env) -> None:
    approval = env.hold(env.task(), arguments={"amount": 1, "to": HOSTILE, HOSTILE: "key"})
    alice = env.approver(ALICE)
    for path in (f"/approvals/{approval.id}", f"/approvals/{approval.id}/approve"):
        page = alice.get(path)
        assert page.status_code == 200
        assert "<script>alert(1)" not in page.text and "\u202e" not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and "\\u202e" in page.text
