"""Issue 8 "What it must show": a scripted misbehaving agent against a real STS.

Bursting exchanges and probing new and forbidden audiences are each detected and the
task suspended within seconds. A replayed DPoP proof is alerted, naming the task, but
never suspends it (issue 12: a replay proves nothing about who sent it). Every alert is
in the audit log, in ``tether alerts`` and in the ``tether_alerts`` counter. A burst
raises the agent's Cedar risk until the starter policy ``deny-high-risk`` refuses it. A
webhook receiver that hangs never holds up an exchange. Waits poll for the outcome;
nothing is timed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from receiver import Receiver
from typer.testing import CliRunner

from helpers import ACCESS, AGENT, TOKEN_EXCHANGE, Client, RunningSts, admin_token, create_task, running_sts
from tether.audit.chain import AuditRecord, first_broken
from tether.cli.main import app
from tether.metrics import REGISTRY

WIKI = "http://127.0.0.1:9001"
DOCS = "http://127.0.0.1:9002"
FORBIDDEN = "http://127.0.0.1:9666"
OTHER = "spiffe://tether.local/agent/other"

MONITOR = """
[monitor]
interval = 1
risk_ttl = 60
[monitor.detectors.exchange_rate_spike]
window = 10
min_count = 15
factor = 3
warmup = 1
[monitor.detectors.new_audience]
learn = 3
[monitor.detectors.refusal_burst]
window = 30
threshold = 5
"""


def wait_until(predicate: Callable[[], bool], *, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def alerts(sts: RunningSts, detector: str | None = None) -> list[AuditRecord]:
    return [r for r in sts.audit() if r.kind == "alert.raised" and detector in (None, r.detail["detector"])]


def suspended_by_monitor(sts: RunningSts, task_id: str) -> bool:
    return any(r.kind == "task.suspended" and r.task == task_id and r.principal == "monitor" for r in sts.audit())


def alerts_metric(detector: str) -> float:
    return REGISTRY.get_sample_value("tether_alerts_total", {"detector": detector}) or 0.0


def session(sts: RunningSts, client: Client, task_id: str, agent: str = AGENT, *, used: list[str] | None = None) -> str:
    svid = sts.svid(agent)
    response = client.session(task_id, svid=svid)
    assert response.status_code == 200, response.text
    token = str(response.json()["access_token"])
    if used is not None:
        used += [svid, token]
    return token


def sentinel_replay(sts: RunningSts) -> None:
    """Another agent replays a proof for real; wait for that alert.

    The monitor reads the log in order and finishes acting on a finding before it reads
    the next record. So once this alert is written, it has already acted on everything
    before it, and an absence can be asserted without sleeping.
    """
    other = Client(sts)
    task = create_task(sts, agent=OTHER, audiences=[WIKI])
    token = session(sts, other, task["id"], OTHER)
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": token, "subject_token_type": ACCESS, "resource": WIKI}
    proof = other.proof()
    assert other.post_token(form, proof=proof).status_code == 200
    assert other.post_token(form, proof=proof).json()["error"] == "invalid_dpop_proof"
    wait_until(lambda: any(a.task == task["id"] for a in alerts(sts, "dpop_replay")), what="the sentinel alert")


def to_next_window(sts: RunningSts, window: float = 10.0) -> None:
    """Move the STS clock to the start of the next fixed window (so a burst falls in one window)."""
    sts.clock.advance(window - sts.clock.now() % window + 0.01)


def test_misbehaving_agent_is_detected_and_suspended_within_seconds(tmp_path: Path) -> None:
    detectors = ("exchange_rate_spike", "use_after_end", "new_audience", "refusal_burst", "dpop_replay")
    before = {d: alerts_metric(d) for d in detectors}
    with running_sts(tmp_path, extra_toml=MONITOR) as sts:
        agent, used = Client(sts), list[str]()
        # a normal start: one session and a couple of hops (the agent's warm-up window)
        first = create_task(sts, audiences=[WIKI, DOCS])
        token = session(sts, agent, first["id"], used=used)
        for _ in range(2):
            assert agent.hop(token, WIKI).status_code == 200
        # 1. bursting exchanges: 15 in one window, five times its baseline of 3
        to_next_window(sts)
        for _ in range(15):
            assert agent.hop(token, WIKI).status_code == 200
        wait_until(lambda: suspended_by_monitor(sts, first["id"]), what="the spike to suspend the task")
        (spike,) = alerts(sts, "exchange_rate_spike")
        assert spike.task == first["id"] and spike.detail["agent"] == AGENT and spike.detail["evidence"]["count"] == 15
        # its tokens are dead; using one is itself an alert
        refused = agent.hop(token, WIKI)
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
        wait_until(lambda: len(alerts(sts, "use_after_end")) == 1, what="the use-after-end alert")
        assert alerts(sts, "use_after_end")[0].task == first["id"]
        # 2. probing a new audience, then audiences outside the task
        second = create_task(sts, audiences=[WIKI, DOCS])
        token = session(sts, agent, second["id"], used=used)
        assert agent.hop(token, DOCS).status_code == 200
        wait_until(lambda: len(alerts(sts, "new_audience")) == 1, what="the new audience alert")
        assert not suspended_by_monitor(sts, second["id"])  # new_audience only alerts
        for _ in range(5):
            probe = agent.hop(token, FORBIDDEN)
            assert probe.status_code == 400 and probe.json()["error"] == "invalid_target"
        wait_until(lambda: suspended_by_monitor(sts, second["id"]), what="the refusal burst to suspend the task")
        (burst,) = alerts(sts, "refusal_burst")
        assert "invalid_target" in burst.detail["evidence"]["errors"] and burst.detail["risk"] == 50
        # 3. replaying a DPoP proof: alerted, naming the task; a replay proves nothing, so no suspension
        third = create_task(sts, audiences=[WIKI])
        token = session(sts, agent, third["id"], used=used)
        proof = agent.proof()
        used.append(proof)
        form = {"grant_type": TOKEN_EXCHANGE, "subject_token": token, "subject_token_type": ACCESS, "resource": WIKI}
        assert agent.post_token(form, proof=proof).status_code == 200
        replay = agent.post_token(form, proof=proof)
        assert replay.status_code == 400 and replay.json()["error"] == "invalid_dpop_proof"
        sentinel_replay(sts)
        replayed = alerts(sts, "dpop_replay")[0]
        assert replayed.task == third["id"] and replayed.detail["severity"] == "high"
        assert replayed.detail["agent"] is None and replayed.detail["evidence"]["claimed_principal"] == AGENT
        assert not suspended_by_monitor(sts, third["id"]) and task_state(sts, third["id"]) == "active"

        # the alerts are in `tether alerts`, newest first, and in the metrics registry
        assert sts.config.path is not None
        result = CliRunner().invoke(app, ["alerts", "--config", str(sts.config.path), "--json"])
        assert result.exit_code == 0, result.output
        listed = json.loads(result.output)
        assert [a["detector"] for a in listed][::-1] == [*detectors, "dpop_replay"]  # the sentinel's last
        assert [a["seq"] for a in listed] == sorted((a["seq"] for a in listed), reverse=True)
        assert all(a["agent"] == (None if a["detector"] == "dpop_replay" else AGENT) for a in listed)
        table = CliRunner().invoke(app, ["alerts", "--config", str(sts.config.path)])
        assert table.exit_code == 0 and "alerts (6)" in table.output
        for detector in detectors:
            assert alerts_metric(detector) == before[detector] + (2 if detector == "dpop_replay" else 1)
        assert first_broken([r.as_json() for r in sts.audit()]) is None
        # BCP-13: what the monitor wrote holds ids and counts, never a token, SVID or proof
        written = json.dumps([r.as_json() for r in sts.audit() if r.principal == "monitor"]) + result.output
        assert len(used) == 7 and not any(secret in written or secret.rsplit(".", 1)[1] in written for secret in used)


RISKY = """
[monitor]
interval = 1
risk_ttl = 60
[monitor.detectors.refusal_burst]
window = 30
threshold = 5
severity = "critical"
actions = ["alert", "risk"]
"""


def test_risk_from_a_burst_denies_the_agent_by_policy_until_it_expires(tmp_path: Path) -> None:
    with running_sts(tmp_path, extra_toml=RISKY) as sts:
        agent, other = Client(sts), Client(sts)
        task = create_task(sts, audiences=[WIKI])
        token = session(sts, agent, task["id"])
        for _ in range(5):
            assert agent.hop(token, FORBIDDEN).json()["error"] == "invalid_target"
        wait_until(lambda: len(alerts(sts, "refusal_burst")) == 1, what="the burst alert")
        assert alerts(sts, "refusal_burst")[0].detail["risk"] == 80
        # risk 80: the starter policy deny-high-risk refuses the agent, and says so in the audit
        denied = agent.hop(token, WIKI)
        assert denied.status_code == 403 and denied.json()["error"] == "access_denied"
        record = sts.last_audit("token.refused")
        assert record.principal == AGENT and "deny-high-risk" in record.detail["policy"]["determining"]
        fresh = create_task(sts, audiences=[WIKI])
        assert agent.session(fresh["id"], svid=sts.svid(AGENT)).json()["error"] == "access_denied"
        assert task_state(sts, task["id"]) == "active"  # risk only: no suspension configured
        # another agent is not affected
        theirs = create_task(sts, agent=OTHER, audiences=[WIKI])
        assert other.hop(session(sts, other, theirs["id"], OTHER), WIKI).status_code == 200
        # the score expires with risk_ttl
        sts.clock.advance(61)
        later = create_task(sts, audiences=[WIKI])
        assert agent.hop(session(sts, agent, later["id"]), WIKI).status_code == 200


def task_state(sts: RunningSts, task_id: str) -> str:
    client, token = admin_token(sts)
    body: dict[str, Any] = client.api("GET", f"/tasks/{task_id}", token).json()
    return str(body["state"])


WEBHOOK = """
[monitor]
interval = 1
webhook_url = "{url}"
webhook_timeout = 30
webhook_retries = 1
[monitor.detectors.dpop_replay]
actions = ["alert", "webhook"]
[monitor.detectors.refusal_burst]
enabled = false
"""


def _replay(sts: RunningSts, agent: Client, token: str) -> None:
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": token, "subject_token_type": ACCESS, "resource": WIKI}
    proof = agent.proof()
    assert agent.post_token(form, proof=proof).status_code == 200
    assert agent.post_token(form, proof=proof).json()["error"] == "invalid_dpop_proof"


def test_webhook_receives_the_alert_after_a_failed_first_attempt(tmp_path: Path) -> None:
    with Receiver(fail_first=1) as receiver:
        toml = WEBHOOK.format(url=receiver.url).replace("webhook_retries = 1", "webhook_retries = 3")
        with running_sts(tmp_path, extra_toml=toml) as sts:
            agent = Client(sts)
            task = create_task(sts, audiences=[WIKI])
            _replay(sts, agent, session(sts, agent, task["id"]))
            wait_until(lambda: len(receiver.attempts) == 2, what="the retried delivery")
            payload = receiver.attempts[1]
            assert receiver.attempts[0] == payload
            assert payload["type"] == "tether.alert" and payload["detector"] == "dpop_replay"
            assert payload["task"] == task["id"] and payload["proven"] is False and payload["agent"] is None
            assert payload["evidence"]["claimed_principal"] == AGENT
            assert payload["alert_seq"] == alerts(sts, "dpop_replay")[0].seq


def test_a_hanging_webhook_never_blocks_issuance(tmp_path: Path) -> None:
    with Receiver(hang=True) as receiver, running_sts(tmp_path, extra_toml=WEBHOOK.format(url=receiver.url)) as sts:
        agent = Client(sts)
        task = create_task(sts, audiences=[WIKI])
        token = session(sts, agent, task["id"])
        _replay(sts, agent, token)
        wait_until(lambda: len(receiver.attempts) == 1, what="the webhook to hang")
        # the receiver holds the delivery; exchanges and later alerts go on
        for _ in range(10):
            assert agent.hop(token, WIKI).status_code == 200
        sts.clock.advance(61)  # the next dedupe window: a second replay is a second alert
        _replay(sts, agent, token)
        wait_until(lambda: len(alerts(sts, "dpop_replay")) == 2, what="the second alert")
        assert len(receiver.attempts) == 1
