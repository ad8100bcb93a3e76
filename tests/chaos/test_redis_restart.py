"""Chaos: Redis killed (-9) and restarted on default persistence under a running STS (issue 14, item 2).

SECURITY.md DPOP-12 / D-01: a DPoP proof accepted before Redis died must not be accepted
again after it comes back, although Redis forgot its ``jti`` and the proof is still inside
``max_age`` (before the fix it was: 200 and a second token). The STS (a ``tether serve``
process on PostgreSQL, a fresh schema) is never restarted: the replay is refused with
``use_dpop_nonce``, an honest agent (the SDK, holding a nonce from before the loss) retries on
the challenge and gets its token, a fresh exchange succeeds, and the audit chain verifies.
Two variants: nothing saved (the marker vanished with the marks), and a snapshot taken
before the proof (the reloaded RDB holds the marker but not the proof's mark).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from redisproc import DefaultRedis, default_redis

# the scale-out harness (STS replicas as `tether serve` processes); pytest puts only this
# folder on the path when tests/chaos runs alone
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scaleout"))
from scalekit import AGENT, TETHER, Cluster, cluster, wait_until

from services import drop_schema, new_schema, require_postgres_and_redis, schema_dsn
from tether.agent import Agent, DevIdentity, DPoPKey
from tether.rules.jws import b64url_decode, strict_json_loads

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

TOOL, MAIL = "https://tool.example", "https://mail.example"


def _error(response: httpx.Response) -> str:
    return str(response.json().get("error")) if response.headers.get("content-type", "").startswith("application/json") else ""


def _post_until_redis_answers(c: Cluster, form: dict[str, str], key: DPoPKey, proof: str) -> httpx.Response:
    """Send ``proof`` once Redis answers the STS again; a 503 spends nothing that matters here
    (the first post-restart request may meet a stale pooled connection), so it is resent."""

    def attempt() -> httpx.Response | None:
        response = c.post_token(0, form, key, proof=proof)
        return None if response.status_code == 503 else response

    result: httpx.Response = wait_until(attempt, timeout=30, interval=0.1, what="the STS to reach the restarted redis")
    return result


def _restart(redis: DefaultRedis, c: Cluster) -> None:
    redis.kill9()
    redis.start()
    wait_until(lambda: c.http.get(c.replicas[0].url + "/healthz").status_code == 200, timeout=30,
               what="healthz after the redis restart")  # fmt: skip


@pytest.mark.parametrize("snapshot", [False, True], ids=["nothing-saved", "snapshot-holds-the-marker"])
def test_DPOP_12_D_01_no_replay_across_a_redis_restart_and_honest_clients_carry_on(tmp_path: Path, snapshot: bool) -> None:
    require_postgres_and_redis()
    schema = new_schema()
    try:
        with default_redis(tmp_path / "redis") as redis, cluster(tmp_path / "d", replicas=1, dsn=schema_dsn(schema),
                                                                 redis_url=redis.url) as c:  # fmt: skip
            task = c.task(audiences=[TOOL, MAIL])
            key = DPoPKey()
            session = c.session(task["id"], key)
            seen: list[httpx.Response] = []
            http = c.http  # closed with the cluster, whatever the test's outcome
            http.event_hooks["response"] = [seen.append]
            agent = Agent(c.issuer, DevIdentity(c.domain, AGENT)).session(task["id"])
            agent.token_for(TOOL, http)  # the honest agent now holds a nonce from before the loss
            if snapshot:
                redis.snapshot()  # holds the replay-epoch marker, not the proof spent below

            form = c.hop_form(session)
            proof = key.proof("POST", c.issuer + "/token", nonce=c.nonces["sts"])
            accepted = c.post_token(0, form, key, proof=proof)
            assert accepted.status_code == 200, accepted.text
            # positive control on the same fixture: while Redis lives, the proof is spent
            again = c.post_token(0, form, key, proof=proof)
            assert (again.status_code, _error(again)) == (400, "invalid_dpop_proof")

            _restart(redis, c)

            replay = _post_until_redis_answers(c, form, key, proof)
            assert (replay.status_code, _error(replay)) == (400, "use_dpop_nonce"), replay.text
            assert "access_token" not in replay.json()
            replay_again = c.post_token(0, form, key, proof=proof)
            assert (replay_again.status_code, _error(replay_again)) == (400, "invalid_dpop_proof")

            # the honest agent: its stale nonce is challenged once, its retry is served
            seen.clear()
            token = agent.token_for(MAIL, http)
            claims = strict_json_loads(b64url_decode(token.split(".")[1]))
            assert claims["aud"] == MAIL
            assert [_error(r) for r in seen if r.status_code != 200] == ["use_dpop_nonce"]

            # a fresh exchange by the raw client, and the audit chain, as after any fault
            fresh = c.post_token(0, form, key)
            assert fresh.status_code == 200, fresh.text
            verify = subprocess.run([TETHER, "audit", "verify", "--config", str(c.config.path)],
                                    capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
            assert verify.returncode == 0, verify.stderr
            assert "intact" in verify.stdout
    finally:
        drop_schema(schema)


def _refusals(c: Cluster) -> list[dict[str, Any]]:
    """The ``token.refused`` audit records, oldest first (``tether audit export``)."""
    export = subprocess.run([TETHER, "audit", "export", "--config", str(c.config.path)],
                            capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    records = [json.loads(line) for line in export.stdout.splitlines() if line.strip()]
    return [r for r in records if r.get("kind") == "token.refused"]


def test_DPOP_12_a_pre_loss_proof_resent_with_another_body_is_not_pinned_on_its_holder(tmp_path: Path) -> None:
    """Review finding 4: after the replay cache is lost, an observer resends a captured exchange
    with a changed body (a scope outside the parent's). It is refused for the scope before
    issuance, and the refusal was attributed to the victim (the proof's spend found the mark
    gone, so "fresh"): the monitor could score or suspend it. The spend that decides attribution
    now applies the epoch rule: the proof predates the cache, so it proves nothing. Control on
    the same fixture: the holder's own new proof asking the same is pinned on it."""
    require_postgres_and_redis()
    schema = new_schema()
    try:
        with default_redis(tmp_path / "redis") as redis, cluster(tmp_path / "d", replicas=1, dsn=schema_dsn(schema),
                                                                 redis_url=redis.url) as c:  # fmt: skip
            task = c.task(audiences=[TOOL])
            key = DPoPKey()
            session = c.session(task["id"], key)
            form = c.hop_form(session)
            proof = key.proof("POST", c.issuer + "/token", nonce=c.nonces["sts"])
            assert c.post_token(0, form, key, proof=proof).status_code == 200

            _restart(redis, c)

            widened = {**form, "scope": "write"}  # the task grants only "read"
            resent = _post_until_redis_answers(c, widened, key, proof)
            assert (resent.status_code, _error(resent)) == (400, "invalid_scope"), resent.text
            record = _refusals(c)[-1]
            assert record["principal"] is None and record["task"] is None, record
            assert record["detail"]["claimed_principal"] == AGENT

            # control: the holder, once it holds a nonce of the new epoch, asks the same itself
            assert c.post_token(0, form, key).status_code == 200
            own = c.post_token(0, widened, key)
            assert (own.status_code, _error(own)) == (400, "invalid_scope"), own.text
            record = _refusals(c)[-1]
            assert record["principal"] == AGENT and record["task"] == task["id"], record
    finally:
        drop_schema(schema)
