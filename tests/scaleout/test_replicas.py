"""Issue 6: three STS replicas (separate processes) sharing the machine's PostgreSQL and Redis.

Each property the issue names is checked against real replicas: the max_tokens cap
under racing exchanges spread over every replica, a DPoP proof replayed to another
replica, a revocation made through one replica refused by the others and by a
resource server subscribed to a third, and one unbroken audit chain at the end.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from scalekit import JWT_BEARER, SVC, TETHER, Cluster, cluster

from tether.agent.identity import DevIdentity
from tether.agent.proof import DPoPKey
from tether.resource import ResourceSettings, Verifier
from tether.resource.revocations import RevocationFeed
from tether.rules.jws import b64url_decode

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    extra = f'\n[[resources]]\nuri = "https://tool.example"\nprincipals = ["{SVC}"]\n'
    with cluster(tmp_path_factory.mktemp("replicas"), replicas=3, extra=extra) as c:
        yield c


def test_racing_exchanges_across_replicas_never_exceed_max_tokens(three: Cluster) -> None:
    task = three.task(max_tokens=10)
    key = DPoPKey()
    session = three.session(task["id"], key)  # token 1 of 10
    three.post_token(0, three.hop_form(session), key)  # warm the nonce

    def exchange(i: int) -> httpx.Response:
        with httpx.Client(trust_env=False, timeout=15.0) as http:
            proof = key.proof("POST", three.issuer + "/token", nonce=three.nonces["sts"])
            return http.post(three.replicas[i % 3].url + "/token", data=three.hop_form(session), headers={"DPoP": proof})

    with ThreadPoolExecutor(max_workers=24) as pool:
        responses = list(pool.map(exchange, range(36)))
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    # 10 tokens in all: the session, the warm-up hop and 8 of the racing hops
    assert len(ok) == 8, [r.text for r in refused][:3]
    assert {r.json()["error"] for r in refused} == {"invalid_grant"}
    assert all(r.json()["error_description"] == "task token limit reached" for r in refused)
    key_admin, admin = three.admin(1)
    shown = three.api(1, "GET", f"/tasks/{task['id']}", admin, key_admin).json()
    assert shown["tokens_issued"] == 10


def test_D_01_proof_accepted_by_one_replica_is_a_replay_at_another(three: Cluster) -> None:
    task = three.task()
    key = DPoPKey()
    session = three.session(task["id"], key)
    three.post_token(0, three.hop_form(session), key)
    proof = key.proof("POST", three.issuer + "/token", nonce=three.nonces["sts"])
    first = three.post_token(0, three.hop_form(session), key, proof=proof)
    assert first.status_code == 200, first.text
    for other in (1, 2):
        replay = three.post_token(other, three.hop_form(session), key, proof=proof)
        assert replay.status_code == 400
        assert replay.json()["error"] == "invalid_dpop_proof"
        assert "already been used" in replay.json()["error_description"]
    # positive control: a fresh proof at the same replica works
    fresh = three.post_token(2, three.hop_form(session), key)
    assert fresh.status_code == 200, fresh.text


def _introspect(c: Cluster, replica: int, token: str) -> dict[str, object]:
    response = c.http.post(
        c.replicas[replica].url + "/introspect",
        data={"token": token, "client_assertion": c.svid(SVC), "client_assertion_type": JWT_BEARER},
    )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_revocation_through_one_replica_is_refused_by_the_others_and_resource_servers(three: Cluster) -> None:
    task = three.task()
    key = DPoPKey()
    session = three.session(task["id"], key)
    hop = three.post_token(0, three.hop_form(session), key).json()["access_token"]
    sibling = three.post_token(1, three.hop_form(session), key).json()["access_token"]
    assert _introspect(three, 2, hop)["active"] is True

    async def resource_server_view() -> tuple[bool, bool]:
        """A resource server subscribed to replica 2 sees a revocation made through replica 1."""
        settings = ResourceSettings(issuer=three.replicas[2].url, resource="https://tool.example", stale_after=5.0)
        # the tool's workload subscribes to replica 2; its assertions name the deployment's issuer
        http = httpx.AsyncClient(trust_env=False, timeout=5.0)
        identity = DevIdentity(three.domain, SVC)
        feed = RevocationFeed(three.replicas[2].url, http, identity=identity, audience=three.issuer, stale_after=5.0)
        verifier = Verifier(settings, http=http, feed=feed)
        feed.start()
        try:
            assert verifier.feed is not None
            await verifier.feed.wait_synced()
            hop_jti = _claims(hop)["jti"]
            before = hop_jti in verifier.feed.jtis
            response = await asyncio.to_thread(
                three.http.post, three.replicas[1].url + "/revoke",
                data={"token": hop, "client_assertion": three.svid(), "client_assertion_type": JWT_BEARER},
            )  # fmt: skip
            assert response.status_code == 200, response.text
            deadline = time.monotonic() + 5
            while hop_jti not in verifier.feed.jtis and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            return before, hop_jti in verifier.feed.jtis
        finally:
            await feed.aclose()
            await http.aclose()

    before, after = asyncio.run(resource_server_view())
    assert before is False and after is True
    for replica in (0, 2):
        assert _introspect(three, replica, hop)["active"] is False
    refused = three.post_token(2, {**three.hop_form(hop), "actor_token": three.svid(SVC),
                                   "actor_token_type": "urn:ietf:params:oauth:token-type:jwt"}, DPoPKey())  # fmt: skip
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    # positive control: the sibling token of the same session is untouched everywhere
    for replica in (0, 1, 2):
        assert _introspect(three, replica, sibling)["active"] is True


def test_task_completion_on_one_replica_refuses_exchanges_on_the_others(three: Cluster) -> None:
    task = three.task()
    key = DPoPKey()
    session = three.session(task["id"], key, replica=2)
    assert three.post_token(1, three.hop_form(session), key).status_code == 200
    key_admin, admin = three.admin(0)
    assert three.api(0, "POST", f"/tasks/{task['id']}/complete", admin, key_admin).status_code == 200
    for replica in (1, 2):
        response = three.post_token(replica, three.hop_form(session), key)
        assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_audit_chain_is_one_unbroken_chain_across_replicas(three: Cluster) -> None:
    for replica in range(3):
        three.task(replica)
    result = subprocess.run([TETHER, "audit", "verify", "--config", str(three.config.path)],
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "intact" in result.stdout


def test_losing_a_replica_leaves_the_others_serving(tmp_path: Path) -> None:
    with cluster(tmp_path, replicas=2) as two:
        task = two.task()
        key = DPoPKey()
        session = two.session(task["id"], key)
        two.replicas[0].kill()
        response = two.post_token(1, two.hop_form(session), key)
        assert response.status_code == 200, response.text


def _claims(token: str) -> dict[str, object]:
    value: dict[str, object] = json.loads(b64url_decode(token.split(".")[1]))
    return value
