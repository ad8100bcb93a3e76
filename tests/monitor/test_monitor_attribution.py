"""The monitor acts only on what an agent provably did, never on what a stranger claims.

Suspension revokes a task, so a refusal must count against an agent or task only once
the caller has proven it is that agent: a request naming someone else's task, or a stolen
token presented with the thief's own DPoP key, stays unattributed (DPOP-14, JWT-08).
Detectors read typed markers set by the checks themselves, never the free-text reason,
which can echo caller-chosen values such as a proof's ``htm``. A replayed proof proves
nothing about who sent it either (issue 12): it is alerted, naming the task, but whatever
the configured actions, it neither suspends that task nor raises the agent's risk.

Absence is shown without sleeping: the monitor reads the audit log in order, so once it
has alerted on a later, genuine replay by another agent, it has seen the attack as well.
"""

from __future__ import annotations

from pathlib import Path

from test_monitor_e2e import alerts, sentinel_replay, session, suspended_by_monitor, task_state, wait_until

from helpers import ACCESS, AGENT, JWT, TOKEN_EXCHANGE, Client, create_task, running_sts

WIKI = "http://127.0.0.1:9001"
OTHER = "spiffe://tether.local/agent/other"

MONITOR = """
[monitor]
interval = 1
[monitor.detectors.refusal_burst]
window = 30
threshold = 3
[monitor.detectors.dpop_replay]
severity = "critical"
actions = ["alert", "risk", "suspend"]
"""


def test_DPOP_12_JWT_08_stranger_naming_a_task_with_a_forged_reason_is_not_pinned_on_it(tmp_path: Path) -> None:
    with running_sts(tmp_path, extra_toml=MONITOR) as sts:
        victim = create_task(sts, audiences=[WIKI])
        attacker = Client(sts)
        # unauthenticated: a garbage subject token naming the victim's task (also picks up the nonce)
        first = attacker.session(victim["id"], svid="not-a-jwt")
        assert first.status_code == 400 and first.json()["error"] in ("invalid_grant", "invalid_request")
        since = sts.audit()[-1].seq
        form = {"grant_type": TOKEN_EXCHANGE, "subject_token": "not-a-jwt", "subject_token_type": JWT,
                "task": victim["id"]}  # fmt: skip
        for _ in range(4):
            # a proof whose htm carries the words the replay check writes
            forged = attacker.proof("proof has already been used")
            refused = attacker.post_token(form, proof=forged)
            assert refused.status_code == 400 and refused.json()["error"] == "invalid_dpop_proof"
        records = [r for r in sts.audit() if r.seq > since and r.kind == "token.refused"]
        assert len(records) == 4
        for record in records:
            assert record.principal is None and record.task is None
            assert record.detail["requested_task"] == victim["id"] and "replay" not in record.detail
        sentinel_replay(sts)
        assert not [a for a in alerts(sts) if a.task == victim["id"]]
        assert not suspended_by_monitor(sts, victim["id"]) and task_state(sts, victim["id"]) == "active"
        # the victim's agent is untouched and can work
        agent = Client(sts)
        assert agent.hop(session(sts, agent, victim["id"]), WIKI).status_code == 200


def test_DPOP_14_thief_with_its_own_key_cannot_get_the_victims_task_suspended(tmp_path: Path) -> None:
    with running_sts(tmp_path, extra_toml=MONITOR) as sts:
        victim = create_task(sts, audiences=[WIKI])
        agent = Client(sts)
        stolen = session(sts, agent, victim["id"])
        thief = Client(sts)
        since = sts.audit()[-1].seq
        for _ in range(5):
            refused = thief.hop(stolen, WIKI)
            assert refused.status_code == 400 and refused.json()["error"] == "invalid_dpop_proof"
        records = [r for r in sts.audit() if r.seq > since and r.kind == "token.refused"]
        assert len(records) == 5 and all(r.principal is None and r.task is None for r in records)
        sentinel_replay(sts)
        assert not [a for a in alerts(sts) if a.task == victim["id"]]
        assert not suspended_by_monitor(sts, victim["id"]) and task_state(sts, victim["id"]) == "active"
        # the rightful holder of the key keeps working
        assert agent.hop(stolen, WIKI).status_code == 200


def test_DPOP_12_a_replay_against_a_task_is_alerted_but_neither_suspends_it_nor_raises_risk(tmp_path: Path) -> None:
    # MONITOR configures dpop_replay as critical with every action: the runner still withholds them
    with running_sts(tmp_path, extra_toml=MONITOR) as sts:
        victim = create_task(sts, audiences=[WIKI])
        agent = Client(sts)
        token = session(sts, agent, victim["id"])
        form = {"grant_type": TOKEN_EXCHANGE, "subject_token": token, "subject_token_type": ACCESS, "resource": WIKI}
        proof = agent.proof()  # captured by whoever: the replay is indistinguishable from the agent's
        assert agent.post_token(form, proof=proof).status_code == 200
        replayed = agent.post_token(form, proof=proof)
        assert replayed.status_code == 400 and replayed.json()["error"] == "invalid_dpop_proof"
        sentinel_replay(sts)
        (alert,) = [a for a in alerts(sts, "dpop_replay") if a.task == victim["id"]]
        assert alert.detail["severity"] == "critical" and alert.detail["actions"] == ["alert"]
        assert alert.detail["withheld"] == ["risk", "suspend"] and "risk" not in alert.detail
        assert alert.detail["agent"] is None and alert.detail["evidence"]["claimed_principal"] == AGENT
        assert not suspended_by_monitor(sts, victim["id"]) and task_state(sts, victim["id"]) == "active"
        # a critical risk (80) would make deny-high-risk refuse the agent: it keeps working
        assert agent.hop(token, WIKI).status_code == 200


def test_refusal_burst_by_the_proven_agent_still_suspends(tmp_path: Path) -> None:
    # the positive control: the same burst from the key holder itself is attributed and acted on
    with running_sts(tmp_path, extra_toml=MONITOR) as sts:
        task = create_task(sts, audiences=[WIKI])
        agent = Client(sts)
        token = session(sts, agent, task["id"])
        for _ in range(3):
            assert agent.hop(token, "http://127.0.0.1:9666").json()["error"] == "invalid_target"
        wait_until(lambda: suspended_by_monitor(sts, task["id"]), what="the burst to suspend the task")
        (burst,) = alerts(sts, "refusal_burst")
        assert burst.task == task["id"]
